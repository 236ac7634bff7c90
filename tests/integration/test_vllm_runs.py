"""Real runs of the trainer with ``rollout.engine=vllm`` (vLLM's CPU backend, one engine per rank): two ranks under
ZeRO-3 with the TIS correction, and two ranks under ZeRO-2 killed with SIGKILL and resumed, which must end where the
uninterrupted run does."""
from __future__ import annotations

import pytest

from tiny_runs import assert_same_run, kill_all, launch, metrics, require_vllm, start, wait_for

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
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=3", "deepspeed.zero_stage=3", "rollout.is_correction=tis",
                                        *VLLM])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_synced_every_step(metrics(run_dir), 3)


@pytest.mark.slow
def test_two_ranks_under_zero2_on_the_vllm_engine_resume_after_sigkill_as_if_uninterrupted(tmp_path, warm_cache):
    run = ["trainer.max_steps=4", "trainer.checkpoint_every=2", "deepspeed.zero_stage=2", *VLLM]
    uninterrupted = tmp_path / "uninterrupted"
    proc = launch(warm_cache, uninterrupted, run)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_synced_every_step(metrics(uninterrupted), 4)

    run_dir = tmp_path / "run"
    proc = start(warm_cache, run_dir, run, tmp_path / "first.log")
    wait_for(lambda: len(metrics(run_dir)) >= 3, proc)  # step 3 logged, step 2 checkpointed
    kill_all(proc)
    resumed = launch(warm_cache, run_dir, run)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_000002" in resumed.stdout
    assert_same_run(uninterrupted, run_dir)  # vLLM's draws are seeded per row from the run's position
