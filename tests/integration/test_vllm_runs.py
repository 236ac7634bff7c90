"""Real runs of the trainer with ``rollout.engine=vllm`` (vLLM's CPU backend, one engine per rank): two ranks under
ZeRO-3 with the TIS correction, on rollouts that branch. A vllm run killed with SIGKILL and resumed (it must end where the uninterrupted run
does) is tests/integration/test_lora_runs.py's, with the policy and the PRM as LoRA adapters: one run for both."""
from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from tiny_runs import launch, metrics, require_vllm

require_vllm()

VLLM = ["rollout.engine=vllm", "wandb.mode=disabled"]
# Both engines run float32 here; measured: 3e-7 to 5e-7 per token on the tiny model (docs/algorithm.md).
MAX_LOGPROB_DIFF = 1e-4


def assert_synced_every_step(rows: list[dict], steps: int) -> None:
    """Every step sampled with the policy of that step: were a sync missed, vLLM would sample from older weights
    and the trainer's log-probs would differ from its by far more than kernel rounding."""
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert 0 < r["rollout/logprob_diff"] < MAX_LOGPROB_DIFF, (r["step"], r["rollout/logprob_diff"])
        assert r["rollout/is_outside_band_frac"] == 0.0
        assert r["time/weight_sync"] >= 0 and r["response/length_mean"] > 1
        assert r["policy/grad_norm"] > 0


@pytest.mark.slow
def test_two_ranks_under_zero3_run_prime_steps_on_the_vllm_engine_with_tis(tmp_path, warm_cache):
    run_dir = tmp_path / "run"
    # Branching: each leaf's sampler log-probs are its root's up to the fork, then its continuation's; spliced
    # wrong, they would differ from the trainer's by far more than kernel rounding.
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=3", "deepspeed.zero_stage=3", "rollout.is_correction=tis",
                                        "trainer.checkpoint_hf=false", "rollout.branch.roots=2", *VLLM])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)
    assert_synced_every_step(rows, 3)
    # fewer tokens drawn than the leaves hold: forks share their root's prefix
    assert all(r["rollout/generated_tokens"] < r["response/length_mean"] * 8 * 4 for r in rows)
    # trainer.checkpoint_hf=false: the Hugging Face exports are written at the end only (gathered under ZeRO-3)
    final = run_dir / "checkpoints" / "step_000003"
    assert (final / "policy" / "ds").is_dir() and not (final / "policy" / "hf").exists()
    assert AutoModelForCausalLM.from_pretrained(run_dir / "policy").num_parameters() > 0
