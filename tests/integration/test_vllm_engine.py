"""The vLLM rollout engine against the hf one, in this process on vLLM's CPU backend (no stub): the same greedy
tokens, the same log-probs of sampled tokens, and a real weight sync after optimiser updates."""
from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

from tiny_runs import require_vllm

require_vllm()

from prm_rl.data import arithmetic  # noqa: E402
from prm_rl.data.sample import encode_prompts  # noqa: E402
from prm_rl.engine.deepspeed_engine import full_named_parameters  # noqa: E402
from prm_rl.models.forward import response_logprobs  # noqa: E402
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model  # noqa: E402
from prm_rl.rollout.generate import Rollout, generate, left_pad, response_mask_from_ids  # noqa: E402
from prm_rl.rollout.vllm_engine import VllmConfig, VllmSampler, check_free_memory, planned_length  # noqa: E402

MAX_NEW = 24
# float32 on both sides; measured here: at most ~5e-6 over every sampled token (vLLM's kernels vs HF's).
# The model has head_dim 32: vLLM's CPU attention has no kernel for 16.
LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def environment_restored():
    """vLLM's CPU platform edits this process's environment when an engine starts (LD_PRELOAD of torch's libgomp and
    tcmalloc, LOCAL_WORLD_SIZE, ...): put it back for the tests that run after this module in the same process."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small tied-embedding Llama saved as a checkpoint, its tokenizer, prompts, and one vLLM engine on it.

    Its generation_config.json lists a second EOS id, as Qwen's does: a token the greedy responses hold mid-way,
    which vLLM must not stop on (the trainer ends a response on the tokenizer's EOS only)."""
    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                             max_positions=64), tokenizer, seed=3)
    problems = arithmetic.heldout_problems(arithmetic.ArithmeticConfig(min_steps=1, max_steps=3), 12, seed=0)
    prompts = encode_prompts(tokenizer, [arithmetic.prompt_text(p) for p in problems])
    mid_response = Counter(t for row in hf_greedy(model.eval(), tokenizer, prompts) for t in row[:-1]).most_common(1)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, mid_response[0][0]]
    path = tmp_path_factory.mktemp("vllm_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    sampler = VllmSampler(str(path), VllmConfig(), dtype="float32", seed=0)
    return model.eval(), tokenizer, prompts, sampler


def hf_greedy(model, tokenizer, prompts) -> list[list[int]]:
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    out = generate(model, ids, mask, max_new_tokens=MAX_NEW, eos_id=tokenizer.eos_token_id,
                   pad_id=tokenizer.pad_token_id, do_sample=False)
    return [row[m.bool()].tolist() for row, m in zip(out.response_ids, out.response_mask)]


def vllm_greedy(sampler, tokenizer, prompts) -> list[list[int]]:
    ids, _ = sampler.sample(prompts, max_new_tokens=MAX_NEW, eos_id=tokenizer.eos_token_id,
                            pad_id=tokenizer.pad_token_id, do_sample=False)
    mask, _ = response_mask_from_ids(ids, tokenizer.eos_token_id)
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


def update(model, tokenizer, prompts, seed: int) -> None:
    """One real AdamW step on the NLL of random tokens after each prompt: the weights (and greedy text) move."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(len(tokenizer) - 4, (len(prompts), 8), generator=g) + 4
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    batch = Rollout(ids, mask, targets, torch.ones_like(targets), torch.zeros(len(prompts), dtype=torch.bool))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    model.train()
    logp, _ = response_logprobs(model, batch)
    (-logp.mean()).backward()
    optimizer.step()
    model.eval()


def test_greedy_tokens_equal_the_hf_engine_row_for_row(setup):
    model, tokenizer, prompts, sampler = setup
    second_eos = model.generation_config.eos_token_id[1]
    expected = hf_greedy(model, tokenizer, prompts)
    assert any(second_eos in row[:-1] for row in expected)  # vLLM would stop early there if it read the config
    assert vllm_greedy(sampler, tokenizer, prompts) == expected


def test_sampled_tokens_log_probs_match_the_trainers_at_the_sampling_temperature(setup):
    model, tokenizer, prompts, sampler = setup
    for temperature in (1.0, 0.7):
        rows = prompts * 2
        ids, sampler_logp = sampler.sample(rows, max_new_tokens=MAX_NEW, eos_id=tokenizer.eos_token_id,
                                           pad_id=tokenizer.pad_token_id, do_sample=True, temperature=temperature,
                                           seed=temperature_seed(temperature))
        mask, truncated = response_mask_from_ids(ids, tokenizer.eos_token_id)
        prompt_ids, prompt_mask = left_pad(rows, tokenizer.pad_token_id)
        batch = Rollout(prompt_ids, prompt_mask, ids.masked_fill(mask == 0, tokenizer.pad_token_id), mask, truncated)
        with torch.no_grad():
            trainer_logp, _ = response_logprobs(model, batch, temperature)
        diff = ((trainer_logp - sampler_logp).abs() * mask).max().item()
        assert diff < LOGPROB_TOLERANCE, (temperature, diff)
        assert mask.sum() > len(rows)  # real responses, not one token each


def temperature_seed(temperature: float) -> int:
    return int(temperature * 100)


def test_seeded_draws_repeat_whatever_was_sampled_between(setup):
    _, tokenizer, prompts, sampler = setup
    draw = dict(max_new_tokens=MAX_NEW, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                do_sample=True, seed=11)
    first, _ = sampler.sample(prompts[:3], **draw)
    sampler.sample(prompts, max_new_tokens=MAX_NEW, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                   do_sample=True)
    again, _ = sampler.sample(prompts[:3], **draw)
    assert torch.equal(first, again)
    other, _ = sampler.sample(prompts[:3], **{**draw, "seed": 21})
    assert not torch.equal(first, other)
    state = torch.get_rng_state()
    sampler.sample(prompts[:3], **draw)
    assert torch.equal(torch.get_rng_state(), state)  # the trainer's own random stream is left as it was


def test_after_each_update_and_sync_vllm_samples_the_updated_policy(setup):
    model, tokenizer, prompts, sampler = setup
    before = hf_greedy(model, tokenizer, prompts)
    for seed in (0, 1):  # two successive updates: the second sync replaces the first's weights
        update(model, tokenizer, prompts, seed)
        updated = hf_greedy(model, tokenizer, prompts)
        assert updated != before, "the update did not change the greedy text: this test could not fail"
        sampler.load_weights(full_named_parameters(model))  # tied lm_head/embeddings come under both names
        assert vllm_greedy(sampler, tokenizer, prompts) == updated
        before = updated


def test_machine_dependent_defaults_and_the_planned_length(setup, tmp_path):
    assert VllmConfig().resolved(gpu=True) == VllmConfig(enforce_eager=False, sleep_level=2)
    assert VllmConfig().resolved(gpu=False) == VllmConfig(enforce_eager=True, sleep_level=0)
    assert VllmConfig(sleep_level=1, enforce_eager=True).resolved(gpu=True).sleep_level == 1  # a set value stays
    model, tokenizer, _, _ = setup
    model.save_pretrained(tmp_path)  # max_positions=64
    assert planned_length(VllmConfig(), str(tmp_path), longest_prompt=20, max_new_tokens=24) == 44
    assert planned_length(VllmConfig(), str(tmp_path), longest_prompt=512, max_new_tokens=24) == 64
    assert planned_length(VllmConfig(max_model_len=50), str(tmp_path), longest_prompt=512, max_new_tokens=24) == 50


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the free-memory check reads a GPU")
def test_a_share_larger_than_the_free_gpu_memory_is_refused_naming_the_option():
    from prm_rl.errors import ConfigError

    free, total = torch.cuda.mem_get_info()
    hold = torch.empty(int(total * 0.5), dtype=torch.uint8, device="cuda")  # noqa: F841 - leaves < 0.9 free
    with pytest.raises(ConfigError, match=r"^rollout\.vllm\.gpu_memory_utilization=0\.9: vLLM needs"):
        check_free_memory(VllmConfig(gpu_memory_utilization=0.9))


@pytest.mark.skipif(torch.cuda.is_available(), reason="sleep mode is a GPU feature")
def test_sleep_mode_without_a_gpu_is_refused_naming_the_option():
    from prm_rl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^rollout\.vllm\.sleep_level=1: sleep mode needs a GPU"):
        VllmSampler("/never/loaded", VllmConfig(sleep_level=1), dtype="float32", seed=0)
