"""Rollouts that branch (prm_rl.rollout.branch, stages.branched_generate_stage): fork points and leaves on
hand-built rows, then the stage sampling from a real model (the built-in Llama, random weights), and forks started
from their roots' KV caches (prm_rl.rollout.prefix_cache) against forks sampled from their whole prefix."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prm_rl.config import BranchSection, ConfigError, to_config
from prm_rl.core.tree import prefix_values
from prm_rl.data import arithmetic
from prm_rl.data.arithmetic import ArithmeticConfig
from prm_rl.data.sample import Sample, encode_prompts
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model
from prm_rl.models.forward import response_logprobs
from prm_rl.rollout.branch import fork_positions, grow_leaves, uniform_priority
from prm_rl.rollout.generate import Rollout, generate, left_pad
from prm_rl.rollout.prefix_cache import RootCaches, can_fork_from_cache, sample_forks
from prm_rl.trainer import stages

PAD, EOS = 0, 9


def rollout(responses: list[list[int]], logp: bool = False) -> Rollout:
    """Rows with a 2-token prompt (row index, 7) and the given responses, right-padded with PAD."""
    width = max(len(r) for r in responses)
    ids = torch.full((len(responses), width), PAD)
    mask = torch.zeros((len(responses), width), dtype=torch.long)
    for i, r in enumerate(responses):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    prompt = torch.tensor([[i + 1, 7] for i in range(len(responses))])
    truncated = torch.tensor([EOS not in r for r in responses])
    sampler = (ids.float() / 100).neg() * mask if logp else None
    return Rollout(prompt, torch.ones_like(prompt), ids, mask, truncated, sampler)


def test_fork_positions_pick_the_highest_entropy_step_starts():
    # one row of 7 tokens; tokens 1 and 4 close steps, so steps start at 2 and 5 (0 is never a fork)
    mask = torch.ones(1, 7, dtype=torch.long)
    closes = torch.tensor([[0, 1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    entropy = torch.tensor([[5.0, 0.1, 0.2, 3.0, 0.1, 0.3, 0.0]])
    assert fork_positions(entropy, mask, closes, 1, "step").tolist() == [[5]]  # 0.3 at 5 beats 0.2 at 2
    assert fork_positions(entropy, mask, closes, 2, "step").tolist() == [[2, 5]]
    # more forks than step starts: the other positions follow, highest entropy first (3 at token 3)
    assert fork_positions(entropy, mask, closes, 3, "step").tolist() == [[2, 3, 5]]
    assert fork_positions(entropy, mask, closes, 1, "token").tolist() == [[3]]


def test_fork_positions_stay_inside_each_row_and_break_ties_early():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    closes = torch.zeros(2, 5, dtype=torch.bool)
    entropy = torch.tensor([[1.0, 2.0, 2.0, 9.0, 9.0], [4.0, 9.0, 9.0, 9.0, 9.0]])
    # row 0: no step starts, tokens 1 and 2 tie: the earlier; row 1 has one token: it forks at 0
    assert fork_positions(entropy, mask, closes, 1, "step").tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="at must be one of"):
        fork_positions(entropy, mask, closes, 1, "line")


def test_uniform_priority_picks_each_candidate_about_equally_and_depends_only_on_the_tokens():
    """by=uniform: among a row's step starts each is picked about as often (the control for entropy, which would
    always pick the same one here); the draws are a function of the roots' tokens, the same on every call."""
    rows, width = 3000, 9
    ids = torch.randint(3, 20, (rows, width), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(rows, width, dtype=torch.long)
    closes = torch.zeros(rows, width, dtype=torch.bool)
    closes[:, [1, 4, 6]] = True  # steps start at 2, 5 and 7
    priority = uniform_priority(ids)
    assert torch.equal(priority, uniform_priority(ids.clone())) and not torch.equal(priority, uniform_priority(ids + 1))
    picked = fork_positions(priority, mask, closes, 1, "step").squeeze(1)
    counts = torch.bincount(picked, minlength=width)
    assert counts[[2, 5, 7]].sum() == rows and counts.min() == 0
    assert all(abs(int(c) - rows / 3) < 4 * (rows * 2 / 9) ** 0.5 for c in counts[[2, 5, 7]])  # 4 sigma
    entropy = torch.zeros(rows, width).index_fill_(1, torch.tensor([5]), 1.0)
    assert (fork_positions(entropy, mask, closes, 1, "step") == 5).all()


def test_grow_leaves_splices_each_continuation_onto_its_roots_prefix():
    roots = rollout([[1, 2, 3, EOS], [4, 5, EOS]], logp=True)
    positions = torch.tensor([[1, 3], [2, 2]])  # root 1 forks twice at the same place
    continuations = rollout([[6, EOS], [7, 7, 7, 7, 7, 7], [8, EOS], [5, 5, EOS]], logp=True)
    leaves, sampled = grow_leaves(roots, positions, continuations, ways=2, max_new_tokens=5, eos_id=EOS, pad_id=PAD)
    assert leaves.response_ids.tolist() == [
        [1, 2, 3, EOS, PAD],
        [1, 6, EOS, PAD, PAD],
        [1, 2, 3, 7, 7],  # cut at max_new_tokens without an EOS: truncated
        [4, 5, EOS, PAD, PAD],
        [4, 5, 8, EOS, PAD],
        [4, 5, 5, 5, EOS],
    ]
    assert leaves.response_mask.sum(dim=1).tolist() == [4, 3, 5, 3, 4, 5]
    assert leaves.truncated.tolist() == [False, False, True, False, False, False]
    assert sampled.tolist() == [4, 2, 2, 3, 2, 3]  # a root's whole response, a fork's continuation only
    assert leaves.prompt_ids[:, 0].tolist() == [1, 1, 1, 2, 2, 2]  # each leaf keeps its root's prompt
    expected_logp = (leaves.response_ids.float() / 100).neg() * leaves.response_mask
    assert torch.equal(leaves.sampler_logp, expected_logp)  # the prefix's from the root, the rest its own


def test_branched_leaves_share_real_prefixes_in_the_tree_values():
    # two leaves of one root share 2 tokens: the tree's value of that prefix is their mean outcome
    roots = rollout([[1, 2, 3, EOS]])
    leaves, _ = grow_leaves(roots, torch.tensor([[2]]), rollout([[5, EOS]]), ways=2, max_new_tokens=4, eos_id=EOS,
                            pad_id=PAD)
    values = prefix_values(leaves.response_ids, leaves.response_mask, torch.tensor([1.0, 0.0]), group_size=2)
    assert values[:, :2].tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert values[:, 2].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("roots, points, ways", [(2, 1, 2), (1, 3, 2), (2, 1, 3)])
def test_branch_config_must_add_up_to_k(roots, points, ways):
    BranchSection(roots=roots, points=points, ways=ways).check(roots * (1 + points * (ways - 1)))
    with pytest.raises(ConfigError, match="must equal rollout.samples_per_prompt=7"):
        BranchSection(roots=roots, points=points, ways=ways).check(7)


@pytest.mark.parametrize("override, message", [
    ("rollout.branch.ways=1", "rollout.branch.ways=1: must be >= 2"),
    ("rollout.branch.points=0", "rollout.branch.points=0: must be > 0"),
    ("rollout.branch.roots=-1", "rollout.branch.roots=-1: must be >= 0"),
    ("rollout.branch.at=line", "rollout.branch.at='line': must be one of step, token"),
    ("rollout.branch.by=random", "rollout.branch.by='random': must be one of entropy, uniform"),
    ("rollout.branch.roots=3", "rollout.branch: roots x (1 + points x (ways - 1)) = 3 x (1 + 1 x 1) must equal"),
])
def test_bad_branch_options_are_one_line_config_errors(override, message):
    key, value = override.split("=")
    branch = {key.rsplit(".", 1)[1]: value if key.endswith(("at", "by")) else int(value)}
    with pytest.raises(ConfigError) as raised:
        to_config({"rollout": {"branch": branch}})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


@pytest.mark.parametrize("by", ["entropy", "uniform"])
def test_branched_stage_samples_k_leaves_per_prompt_from_a_real_model(by):
    torch.manual_seed(0)
    tok = build_char_tokenizer(list("0123456789+-*=?\n"))
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                             max_positions=64), tok, seed=0)
    prompts = [Sample(prompt="12+3=?\n", task="arithmetic", fields={}), Sample(prompt="4*5=?\n", task="arithmetic",
                                                                              fields={})]
    branch = BranchSection(roots=2, points=1, ways=3, by=by)  # K = 2 x (1 + 1 x 2) = 6
    step_ends = stages.step_end_table(tok, "\n")
    leaves, sampled = stages.branched_generate_stage(model, tok, prompts, branch, step_ends, max_new_tokens=12,
                                                     temperature=1.0, top_p=1.0, synced_gpus=False,
                                                     micro_batch_size=4)
    assert len(leaves) == 12 and sampled.numel() == 12
    lengths = leaves.response_mask.sum(dim=1)
    assert int(lengths.max()) <= 12
    for group in range(2):
        rows = leaves.response_ids[group * 6:(group + 1) * 6]
        assert (leaves.prompt_ids[group * 6:(group + 1) * 6] == leaves.prompt_ids[group * 6]).all()
        for root in (0, 3):  # each fork leaf repeats its root's first tokens, as many as its root did not draw
            for fork in (root + 1, root + 2):
                shared = int(lengths[group * 6 + fork] - sampled[group * 6 + fork])
                assert torch.equal(rows[fork, :shared], rows[root, :shared])
    # the budget: what was drawn, never more than the leaves hold
    assert (sampled >= 1).all() and (sampled <= lengths).all()


def test_forks_from_cached_roots_sample_what_a_fresh_prefix_samples():
    """A fork started from its root's kept KV cache draws the same tokens as one sampled from its whole prefix
    (same seed), without feeding the prefix again; the roots' decode records the entropies a forward computes."""
    # the suite's trained tiny SFT model: its next token depends on the whole context, so a wrong one shows
    start = next((Path(__file__).parents[1] / "fixtures" / "warm_start").iterdir())
    tok, model = AutoTokenizer.from_pretrained(start), AutoModelForCausalLM.from_pretrained(start).eval()
    assert can_fork_from_cache(model, synced_gpus=False) and not can_fork_from_cache(model, synced_gpus=True)
    prompts = encode_prompts(tok, [arithmetic.to_sample(p).prompt
                                   for p in arithmetic.heldout_problems(ArithmeticConfig(), 3, seed=1)])
    ids, mask = left_pad(prompts, tok.pad_token_id)
    sampling = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=1.0, top_p=1.0)
    caches = RootCaches(len(prompts), 48, temperature=1.0)
    torch.manual_seed(0)
    roots = generate(model, ids, mask, max_new_tokens=48, do_sample=True, record=caches, **sampling)
    lengths = roots.response_mask.sum(dim=1)
    _, entropy = response_logprobs(model, roots, 1.0, with_entropy=True)
    width = roots.response_ids.shape[1]
    valid = roots.response_mask.bool()
    torch.testing.assert_close(caches.entropy[:, :width][valid], entropy[valid], atol=1e-5, rtol=1e-5)

    roots_of, starts = [], []  # every root forks at 0 (a fresh sample), at 1, mid-way and at its last token
    for r, n in enumerate(lengths.tolist()):
        for t in sorted({0, min(1, n - 1), n // 2, n - 1}):
            roots_of.append(r), starts.append(t)
    prefills = []
    hook = model.register_forward_pre_hook(lambda _, args, kw: prefills.append(kw["input_ids"].shape[1] > 1),
                                           with_kwargs=True)
    torch.manual_seed(1)
    forks = sample_forks(model, caches, ids, mask, roots.response_ids, torch.tensor(roots_of), torch.tensor(starts),
                         max_new_tokens=24, **sampling)
    hook.remove()
    assert prefills and not any(prefills)  # one token per row per forward: no context was fed again
    contexts = [prompts[r] + roots.response_ids[r, :t].tolist() for r, t in zip(roots_of, starts)]
    torch.manual_seed(1)
    fresh = generate(model, *left_pad(contexts, tok.pad_token_id), max_new_tokens=24, do_sample=True, **sampling)
    assert torch.equal(forks.response_ids, fresh.response_ids)
    assert torch.equal(forks.response_mask, fresh.response_mask) and torch.equal(forks.truncated, fresh.truncated)
    assert torch.equal(forks.prompt_ids, ids[torch.tensor(roots_of)])
