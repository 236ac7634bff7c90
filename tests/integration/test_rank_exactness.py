"""One PRIME step's learning stages give the same numbers on 1 rank and on 2 ranks (issue: exact across ranks).

Real DeepSpeed engines, real ranks; the batch and initial weights are fixed so only the split differs.
Odd micro-batch sizes make the ranks hold different numbers of rows and run stand-in micro-batches.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tiny_runs import run_retrying_startup_abort

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "integration" / "exactness_probe.py"
COMMON = ["rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "policy.micro_batch_size=3",
          "prm.micro_batch_size=3",
          "policy.mini_batches=2", "prm.mini_batches=2", "policy.learning_rate=1e-3", "prm.learning_rate=1e-3"]
CASES = {
    "ce-after-seqmean-zero2": ["deepspeed.zero_stage=2", "policy.micro_batch_tokens=40", "prm.micro_batch_tokens=40"],
    "on-policy-zero2": ["deepspeed.zero_stage=2", "policy.mini_batches=1"],
    "dpo-before-tokenmean-kl-entropy-zero3": [
        "deepspeed.zero_stage=3", "prm.loss=dpo", "prm.update=before", "policy.loss_agg=token-mean",
        "policy.kl_coef=0.1", "policy.entropy_coef=0.01", "reward.granularity=step", "policy.ppo_epochs=2",
        "reward.credit=softmin", "algorithm.process_gamma=0.9", "algorithm.outcome_gamma=0.95"],
    # today's policy-loss variants: GSPO's sequence ratio, DAPO's clip-higher, Dr. GRPO's constant-length sums
    "gspo-clip-higher-sum-norm-zero2": ["deepspeed.zero_stage=2", "policy.ratio_level=sequence",
                                        "policy.clip_eps_high=0.28", "policy.loss_agg=seq-mean-token-sum-norm"],
    # outcome shaping beside PRIME's process rewards: DAPO's overlong penalty (responses of 7-12 tokens) and the
    # KL penalty in the reward (old-log-prob pass, reference), both read on the global batch
    "overlong-kl-reward-zero2": ["deepspeed.zero_stage=2", "rollout.max_new_tokens=12", "reward.overlong_buffer=6",
                                 "reward.kl_coef=0.05"],
    # the group's prefix tree in the advantages and as the PRM's per-prefix targets (groups split over ranks)
    "prefix-tree-targets-prime-tree-zero2": ["deepspeed.zero_stage=2", "algorithm.advantage=prime-tree",
                                             "prm.loss=prefix", "prm.targets=tree", "prm.beta=1.0", "prm.margin=0.1"],
    # LoRA: policy and PRM as adapters on one base that is also the reference (prm_rl.models.lora); a high PRM
    # alpha so that one update moves the log-ratios well past float noise (see the advantages' tolerance below)
    "lora-both-kl-zero2": ["deepspeed.zero_stage=2", "model.lora.r=4", "prm.lora.r=4", "prm.lora.alpha=128",
                           "policy.kl_coef=0.1"],
    "lora-both-checkpointing-zero0": ["deepspeed.zero_stage=0", "model.lora.r=4", "prm.lora.r=4",
                                      "prm.lora.alpha=128", "model.gradient_checkpointing=true",
                                      "model.lora.target_modules=[q_proj,v_proj]"],
    "lora-prm-zero3": ["deepspeed.zero_stage=3", "prm.lora.r=4", "prm.lora.alpha=128"],
}
LORA = sorted(c for c in CASES if c.startswith("lora-"))


# The memory-saving switches: each must train like the plain path (fp32, no checkpointing, ZeRO-2, no offload,
# micro-batches by row count alone).
SWITCHES = {
    "gradient-checkpointing": (["model.gradient_checkpointing=true"], 1e-5),
    "zero3-offload": (["deepspeed.zero_stage=3", "deepspeed.offload=true"], 1e-5),
    "bf16": (["model.dtype=bfloat16"], 3e-2),  # bf16 keeps ~3 significant digits
    "token-budget": (["policy.micro_batch_tokens=40", "prm.micro_batch_tokens=40"], 1e-5),  # other micro-batches
    # On a GPU: the reference read from host memory, the generation's cache handed back; on CPU the same path.
    "offload-reference": (["model.offload_reference=true", "rollout.release_cache=true"], 1e-6),
}
GRPO = ["--uniform-groups", "algorithm.advantage=grpo"]
ONE_RANK = {**CASES, "plain": [], **{f"switch-{n}": o for n, (o, _) in SWITCHES.items()},
            "every-row": [*GRPO, "policy.skip_zero_advantage=false"],
            "lora-frozen-prm": ["model.lora.r=4", "prm.lora.r=4", "prm.update=none"]}
TWO_RANKS = {**CASES, "skipping": [*GRPO, "policy.skip_zero_advantage=true"]}


def run_probe(out_dir: Path, ranks: int, cases: dict[str, list[str]]) -> None:
    """One launch on ``ranks`` ranks runs every case (a launch costs more than a case)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = out_dir / "cases.json"
    spec.write_text(json.dumps({name: [*COMMON, *overrides] for name, overrides in cases.items()}))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
           "--master_port", str(29600 + ranks + os.getpid() % 500), str(PROBE), str(spec), str(out_dir)]
    proc = run_retrying_startup_abort(cmd, dict(os.environ), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """``probe(ranks, case)``: what the step computed in that case (both launches run once per module)."""
    root = tmp_path_factory.mktemp("probe")
    for ranks, cases in ((1, ONE_RANK), (2, TWO_RANKS)):
        run_probe(root / str(ranks), ranks, cases)
    return lambda ranks, case: torch.load(root / str(ranks) / f"{case}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_match_one_rank(probe, case):
    one, two = probe(1, case), probe(2, case)
    on_policy = "policy.mini_batches=1" in CASES[case]
    assert (one["old_logp"] is None) == on_policy  # one epoch in one mini-batch: no separate old-log-prob pass
    for key in ("old_logp", "log_ratio", "advantages")[on_policy:]:
        # A LoRA PRM's log-ratios after one update are ~4x smaller than a full PRM's, and the advantages scale
        # them up: the same 2e-7 of float noise in the log-ratios comes out as up to 3e-6 (measured) there.
        atol = 1e-5 if key == "advantages" and case in LORA else 1e-6
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=atol, msg=key)
    if on_policy:  # the skipped pass changes nothing: a twin that takes it makes the same update (its ratio is
        # 1 +- 1e-7 of forward noise; Adam's first step turns that into ~1e-6 on weights whose gradient is ~0,
        # against steps of lr = 1e-3 on the others)
        torch.testing.assert_close(one["policy_with_old_pass"], one["policy"], rtol=1e-4, atol=1e-5)
    for key in ("policy", "prm"):  # weights move by up to lr = 1e-3; float noise of 1e-7 in a gradient near 0
        # (micro-batches of other rows, trimmed to other widths) becomes up to ~1e-5 after Adam's first step
        assert not torch.equal(one[key], one["initial"]), f"{key} weights did not change"
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # The step ran the prm.update path it was given: "before" rewards with the updated PRM, "after" with its
    # first forward, before the update.
    rescored_by_updated_prm = torch.allclose(one["log_ratio"], one["rescored"], rtol=1e-5, atol=1e-6)
    assert rescored_by_updated_prm == ("prm.update=before" in CASES[case])
    assert one["metrics"].keys() == two["metrics"].keys()
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_memory_switches_give_the_plain_paths_losses_and_update(probe):
    """One step of learn() on the fixed batch (1 rank): the same PRM and policy losses, log-ratios and
    advantages as the plain path within each switch's tolerance, and weights that moved the same way."""
    plain = probe(1, "plain")
    for name, (_, tol) in SWITCHES.items():
        got = probe(1, f"switch-{name}")
        for key in ("prm/loss", "policy/loss"):
            assert got["metrics"][key] == pytest.approx(plain["metrics"][key], rel=tol, abs=tol), (name, key)
        for key in ("log_ratio", "advantages"):
            torch.testing.assert_close(got[key].float(), plain[key].float(), rtol=tol, atol=tol * 10,
                                       msg=f"{name}: {key}")
        for key in ("policy", "prm"):
            moved, moved_plain = got[key].float() - got["initial"].float(), plain[key] - plain["initial"]
            cosine = torch.nn.functional.cosine_similarity(moved, moved_plain, dim=0)
            assert cosine > (0.999 if tol < 1e-3 else 0.9), (name, key, float(cosine))


@pytest.mark.slow
def test_rows_without_advantage_are_skipped_without_changing_the_update(probe):
    """GRPO on a batch with a group all right and one all wrong (advantage 0, not whitened): leaving their rows
    out of the forwards (2 ranks) updates the policy as running every row does (1 rank)."""
    every_row, skipping = probe(1, "every-row"), probe(2, "skipping")
    assert every_row["metrics"]["policy/zero_advantage_frac"] == 0.0
    assert skipping["metrics"]["policy/zero_advantage_frac"] == 0.5  # 2 of the 4 groups
    assert skipping["metrics"]["policy/loss"] == pytest.approx(every_row["metrics"]["policy/loss"], abs=1e-6)
    assert not torch.equal(skipping["policy"], skipping["initial"])
    torch.testing.assert_close(skipping["policy"], every_row["policy"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("case", LORA)
def test_lora_roles_share_one_frozen_base(probe, case, ranks):
    """With LoRA the reference is the base with the adapters off (its log-probs are a plain copy's, exactly), the
    base's weights are bitwise unchanged by the step, and each adapter is its own optimiser's alone."""
    lora = probe(ranks, case)["lora"]
    before, after = lora["before"], lora["after"]
    assert torch.equal(lora["ref_logp"], lora["base_logp"])
    assert before["base"].keys() == after["base"].keys() and len(before["base"]) > 0
    for name, weight in before["base"].items():
        assert torch.equal(after["base"][name], weight), f"base weight {name} changed"
    roles = [role for role, option in (("policy", "model.lora.r=4"), ("prm", "prm.lora.r=4")) if option in CASES[case]]
    assert roles and all(role in before for role in roles)
    for role in roles:
        assert lora["after"][f"{role}_optimiser_holds_own_adapter"], role
        assert any(not torch.equal(after[role][n], w) for n, w in before[role].items()), f"{role} adapter did not move"


@pytest.mark.slow
def test_a_frozen_lora_prm_is_untouched_by_the_policys_update(probe):
    """prm.update=none with both adapters: the policy's optimiser moves its adapter and nothing else."""
    lora = probe(1, "lora-frozen-prm")["lora"]
    before, after = lora["before"], lora["after"]
    assert all(torch.equal(after["prm"][n], w) for n, w in before["prm"].items())
    assert all(torch.equal(after["base"][n], w) for n, w in before["base"].items())
    assert any(not torch.equal(after["policy"][n], w) for n, w in before["policy"].items())
