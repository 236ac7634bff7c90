"""Every function that feeds a model works with the model on another device than the data, as on a GPU.

The trainer keeps rollouts, scores and advantages in host memory; on a GPU machine the models sit on ``cuda:N``,
which refuses a host tensor beside one of its own. torch's lazy TorchScript backend is such a second device on
this CPU: it computes with the CPU's kernels and, as CUDA does, refuses a CPU tensor in an op with a lazy one.
Each test runs a stage with the models on the lazy device and the data on the CPU, and compares what it computed
with the same stage run all on the CPU. A whole PRIME step (:func:`prm_rl.trainer.step.learn`) runs with a plain
torch AdamW standing in for DeepSpeed's optimiser (DeepSpeed places its models on the accelerator it detects,
the CPU here, so it cannot hold one on the lazy device); the DeepSpeed side is covered by the run tests.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch._lazy
import torch._lazy.ts_backend

from prm_rl.config import RewardSection, to_config
from prm_rl.data import arithmetic
from prm_rl.engine.deepspeed_engine import backward_and_step  # noqa: F401 - the function the stand-in serves
from prm_rl.evaluation import prm_quality
from prm_rl.evaluation.accuracy import heldout_accuracy
from prm_rl.evaluation.best_of_n import best_of_n_report
from prm_rl.evaluation.monte_carlo import rollout_successes, step_prefixes
from prm_rl.evaluation.prm_scoring import score_rows
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model
from prm_rl.rewards import build_scorer
from prm_rl.rollout.generate import generate, hf_generate
from prm_rl.trainer import stages
from prm_rl.trainer.step import LearnSections, learn

LAZY = torch.device("lazy")
TOK = build_char_tokenizer(arithmetic.CHARACTERS)
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=96)
PROMPTS = [arithmetic.to_sample(p) for p in arithmetic.heldout_problems(arithmetic.ArithmeticConfig(), 4, seed=3)]
K = 4
MAX_NEW_TOKENS = 16  # the lazy backend traces each decode step anew: short responses keep the tests fast
CLOSE = dict(atol=1e-5, rtol=1e-5)  # the lazy backend fuses ops: float32 sums in another order, ~1e-7 apart


def model(seed: int = 0) -> torch.nn.Module:
    return build_tiny_model(SHAPE, TOK, seed=seed).eval()


def on_lazy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` on the lazy device. Moving there makes a new parameter per attribute, which unties the
    embedding from the output head (unlike ``.to("cuda")``): they are tied again, as on the CPU."""
    moved = copy.deepcopy(module).to(LAZY)
    moved.tie_weights()
    return moved


def host(x: torch.Tensor) -> torch.Tensor:
    assert x.device.type == "cpu", f"a result left on {x.device}: callers keep results in host memory"
    return x


@pytest.fixture(scope="module", autouse=True)
def lazy_backend():
    """The lazy backend, started when this module's first test runs (not when pytest collects it: the suite's other
    in-process tests run without it)."""
    torch._lazy.ts_backend.init()


@pytest.fixture(scope="module")
def scorer():
    with build_scorer() as s:
        yield s


@pytest.fixture(scope="module")
def groups(scorer) -> prm_quality.HeldoutGroups:
    """K sampled responses to each prompt, in host memory, as the trainer holds a step's rollout."""
    settings = to_config({}).prm_eval
    settings.samples_per_prompt, settings.temperature = K, 1.0
    return prm_quality.sample_heldout(model(), TOK, PROMPTS, scorer, settings, reward=RewardSection(),
                                      max_new_tokens=MAX_NEW_TOKENS)


class TorchEngine:
    """What the trainer asks of a DeepSpeed engine (forward, ``backward_and_step``'s calls, ``grad_norm``'s), with a
    plain torch AdamW at ZeRO stage 0's semantics: clip and step at the accumulation boundary."""

    def __init__(self, module: torch.nn.Module, lr: float = 1e-3, grad_clip: float = 1.0):
        self.module, self.grad_clip, self.boundary = module, grad_clip, True
        self.device = next(module.parameters()).device
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=lr, foreach=False)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):
        self.module.train(mode)

    def set_gradient_accumulation_boundary(self, boundary: bool) -> None:
        self.boundary = boundary

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = False) -> None:
        loss.backward()

    def step(self) -> None:
        if self.boundary:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip, foreach=False)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "lazy":
                torch._lazy.mark_step()  # run the step's graph now rather than at the next read

    def zero_optimization_stage(self) -> int:
        return 0

    def was_step_applied(self) -> bool:
        return True

    def get_global_grad_norm(self):
        return None


def weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().cpu().reshape(-1) for p in module.parameters()])


# --- generation -------------------------------------------------------------------------------------

def test_the_decode_loop_and_hf_generate_sample_the_same_on_the_second_device(groups):
    ids, mask = groups.rollout.prompt_ids, groups.rollout.prompt_mask
    cpu, lazy = model(), on_lazy(model())
    for sample in (dict(do_sample=True, temperature=1.0), dict(do_sample=False)):
        runs = []
        for m in (cpu, lazy):
            torch.manual_seed(5)
            runs.append(generate(m, ids, mask, max_new_tokens=MAX_NEW_TOKENS, eos_id=TOK.eos_token_id, pad_id=TOK.pad_token_id,
                                 **sample))
        assert torch.equal(runs[0].response_ids, host(runs[1].response_ids))
        assert torch.equal(runs[0].response_mask, host(runs[1].response_mask))
    greedy = dict(max_new_tokens=MAX_NEW_TOKENS, eos_id=TOK.eos_token_id, pad_id=TOK.pad_token_id, do_sample=False,
                  temperature=1.0, top_p=1.0, synced_gpus=False)
    expected = hf_generate(cpu, ids, mask, **greedy)
    assert torch.equal(expected, hf_generate(lazy, ids.to(LAZY), mask.to(LAZY), **greedy).cpu())


def test_branched_rollouts_fork_and_sample_on_the_second_device():
    """The branched stage samples roots, reads their entropies and samples continuations: all on the model's device,
    the leaves back in host memory, the same as on the CPU (the lazy backend samples as the CPU does)."""
    branch = to_config({"rollout": {"samples_per_prompt": K, "branch": {"roots": 2}}}).rollout.branch
    step_ends = stages.step_end_table(TOK, "\n")
    runs = []
    for m in (model(), on_lazy(model())):
        torch.manual_seed(7)
        runs.append(stages.branched_generate_stage(m, TOK, PROMPTS[:2], branch, step_ends,
                                                   max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0,
                                                   synced_gpus=False, micro_batch_size=3))
    (cpu, cpu_drawn), (lazy, lazy_drawn) = runs
    assert torch.equal(cpu.response_ids, host(lazy.response_ids)) and torch.equal(cpu_drawn, host(lazy_drawn))
    assert torch.equal(cpu.response_mask, host(lazy.response_mask))


def test_held_out_accuracy_decodes_on_the_second_device(scorer):
    settings = dict(batch_size=3, max_new_tokens=MAX_NEW_TOKENS, synced_gpus=False, reward=RewardSection())
    expected = heldout_accuracy(model(), TOK, PROMPTS, scorer, **settings)
    assert heldout_accuracy(on_lazy(model()), TOK, PROMPTS, scorer, **settings) == expected


def test_held_out_prm_samples_and_metrics_on_the_second_device(groups, scorer):
    settings = to_config({}).prm_eval
    settings.samples_per_prompt = K
    lazy_groups = prm_quality.sample_heldout(on_lazy(model()), TOK, PROMPTS, scorer, settings,
                                              reward=RewardSection(), max_new_tokens=MAX_NEW_TOKENS)
    assert torch.equal(lazy_groups.rollout.response_ids, host(groups.rollout.response_ids))
    table = stages.step_end_table(TOK, "\n")
    expected, expected_ratio = prm_quality.evaluate_prm(model(1), model(), groups, beta=0.05, step_end_table=table,
                                                        micro_batch_size=5)
    metrics, log_ratio = prm_quality.evaluate_prm(on_lazy(model(1)), on_lazy(model()), groups, beta=0.05,
                                                  step_end_table=table, micro_batch_size=5)
    torch.testing.assert_close(host(log_ratio), expected_ratio, **CLOSE)
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key


# --- log-probs, the PRM's and the policy's updates ----------------------------------------------------

def test_log_probs_and_implicit_rewards_on_the_second_device(groups):
    batch = groups.rollout
    for temperature in (1.0, 0.7):
        expected = stages.logprob_stage(model(), batch, 5, temperature)
        torch.testing.assert_close(host(stages.logprob_stage(on_lazy(model()), batch, 5, temperature)), expected,
                                   **CLOSE)
    ref_logp = stages.logprob_stage(model(), batch, 5)
    expected = stages.implicit_log_ratio_stage(model(1), batch, ref_logp, 5)
    torch.testing.assert_close(host(stages.implicit_log_ratio_stage(on_lazy(model(1)), batch, ref_logp, 5)), expected,
                               **CLOSE)


def sections(*overrides: str) -> LearnSections:
    from omegaconf import OmegaConf

    base = {"rollout": {"samples_per_prompt": K, "temperature": 1.0}, "prm": {"micro_batch_size": 8},
            "policy": {"micro_batch_size": 8, "mini_batches": 2}}
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    return LearnSections.of(to_config(OmegaConf.to_container(merged)))


def prime_step(device: torch.device, groups, s: LearnSections):
    """One learning half of a PRIME step with policy, PRM and reference on ``device``, data in host memory."""
    place = (lambda m: m) if device.type == "cpu" else on_lazy
    policy, prm = TorchEngine(place(model())), TorchEngine(place(model(1)))
    models = stages.Models(policy, prm, place(model()), TOK, synced_generation=False)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])[:K].repeat(len(groups.rollout) // K)  # mixed
    result = learn(models, groups.rollout, scores, s, stages.step_end_table(TOK, "\n"),
                   torch.Generator().manual_seed(0))
    return result, weights(policy.module), weights(prm.module)


@pytest.mark.parametrize("overrides", [
    (),  # the paper's PRIME: CE PRM updated after scoring, RLOO on process + outcome rewards
    ("prm.update=before", "prm.loss=prefix", "policy.kl_coef=0.01", "policy.entropy_coef=0.001",
     "policy.ppo_epochs=2", "policy.mini_batches=1"),
], ids=["paper", "prefix-loss-kl-entropy-epochs"])
def test_a_whole_prime_step_on_the_second_device_equals_the_cpu_step(groups, overrides):
    s = sections(*overrides)
    expected, policy_cpu, prm_cpu = prime_step(torch.device("cpu"), groups, s)
    result, policy_lazy, prm_lazy = prime_step(LAZY, groups, s)
    for name in ("old_logp", "log_ratio", "process_rewards", "advantages"):
        if getattr(expected, name) is None:
            assert getattr(result, name) is None, name
            continue
        torch.testing.assert_close(host(getattr(result, name)), getattr(expected, name), **CLOSE, msg=name)
    assert result.metrics.keys() == expected.metrics.keys()
    for key, value in expected.metrics.items():
        if not key.startswith("time/") and not key.startswith("mem/"):
            assert result.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    # Adam's first steps move each weight by about the learning rate whatever the gradient's size: a gradient
    # ~1e-7 apart can move a weight whose gradient is near 0 differently, so weights agree to a share of lr.
    torch.testing.assert_close(policy_lazy, policy_cpu, atol=1e-4, rtol=0)
    torch.testing.assert_close(prm_lazy, prm_cpu, atol=1e-4, rtol=0)
    assert (policy_lazy - weights(model())).abs().max() > 1e-4  # the step did move the weights


# --- the offline commands' model-feeding functions ----------------------------------------------------

def test_prm_scoring_on_the_second_device(groups):
    responses = groups.responses[:6]
    rows = [{"prompt": groups.samples[i].prompt, "response": r + TOK.eos_token} for i, r in enumerate(responses)]
    settings = dict(beta=0.05, delimiter="\n", aggregate="min", batch_size=4, tokens=True)
    expected = score_rows(rows, model(1), model(), TOK, **settings)
    scored = score_rows(rows, on_lazy(model(1)), on_lazy(model()), TOK, **settings)
    for a, b in zip(scored, expected):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["token_rewards"] == pytest.approx(b["token_rewards"], abs=1e-5)
    json.dumps(scored)  # plain numbers, nothing left on a device


def test_monte_carlo_completions_on_the_second_device(groups, scorer):
    valid, prefixes = step_prefixes(groups, TOK, stages.step_end_table(TOK, "\n"))
    prefixes = prefixes[:6]
    runs = []
    for m in (model(), on_lazy(model())):
        torch.manual_seed(11)
        runs.append(rollout_successes(m, TOK, scorer, groups, prefixes, 2, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS,
                                      batch_size=5))
    assert torch.equal(host(runs[1][0]), runs[0][0])
    assert runs[1][1] == runs[0][1]


def test_best_of_n_on_the_second_device(tmp_path):
    """The command's report (``python -m prm_rl.cli.best_of_n --device``) from models loaded onto the device."""
    dirs = {}
    for name, seed in (("policy", 0), ("prm", 1), ("ref", 0)):
        dirs[name] = str(tmp_path / name)
        model(seed).save_pretrained(dirs[name])
        TOK.save_pretrained(dirs[name])
    settings = dict(task="arithmetic", num_prompts=2, n=4, draws=4, seed=0, temperature=1.0,
                    max_new_tokens=MAX_NEW_TOKENS, beta=0.05)
    with torch.enable_grad():  # the command turns gradients off for its process; give them back to the suite
        expected = best_of_n_report(dirs["policy"], dirs["prm"], dirs["ref"], **settings)
        report = best_of_n_report(dirs["policy"], dirs["prm"], dirs["ref"], device="lazy", **settings)
    assert report["best_of_n"] == expected["best_of_n"]
    for key, value in expected["prm_metrics"].items():
        assert report["prm_metrics"][key] == pytest.approx(value, abs=1e-5, nan_ok=True), key


def test_a_reward_model_scores_on_the_second_device(tmp_path):
    """A learned reward model (prm_rl.rewards.reward_model) scores with its weights on the lazy device, the texts
    tokenized in host memory, as it does on the CPU."""
    from transformers import LlamaForSequenceClassification

    from prm_rl.models.tiny import tiny_config
    from prm_rl.rewards.reward_model import RewardModel, RewardModelOptions

    config = tiny_config(SHAPE, TOK)
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    TOK.save_pretrained(tmp_path)
    options = RewardModelOptions(str(tmp_path), batch_size=2)
    prompts, responses = ["1+2=", "12*3=", "7-9="], ["3", "36\n", "-2"]
    expected = RewardModel(options, device=torch.device("cpu")).score(prompts, responses)
    assert RewardModel(options, device=LAZY).score(prompts, responses) == pytest.approx(expected, abs=1e-5)
