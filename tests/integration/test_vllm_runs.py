"""Real runs of the trainer with ``rollout.engine=vllm`` (vLLM's CPU backend, one engine per rank): two ranks under
ZeRO-2 and ZeRO-3, and a SIGKILL-and-resume that must end where the uninterrupted run does."""
from __future__ import annotations

import pytest

from tiny_runs import assert_same_run, kill_all, launch, metrics, require_vllm, start, wait_for

require_vllm()

VLLM = ["rollout.engine=vllm", "wandb.mode=disabled"]
# Both engines run float32 here; measured: 3e-7 to 5e-7 per token on the tiny model (docs/benchmarks.md).
MAX_LOGPROB_DIFF = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage, correction", [(2, "none"), (3, "tis")])
def test_two_ranks_run_prime_steps_on_the_vllm_engine(tmp_path, warm_cache, zero_stage, correction):
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=3", f"deepspeed.zero_stage={zero_stage}",
                                        f"rollout.is_correction={correction}", *VLLM])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # every step synced the updated policy into vLLM: else the diff grows after step 1
        assert 0 < r["rollout/logprob_diff"] < MAX_LOGPROB_DIFF, (r["step"], r["rollout/logprob_diff"])
        assert r["rollout/is_outside_band_frac"] == 0.0
        assert r["time/weight_sync"] >= 0 and r["response/length_mean"] > 1
        assert r["policy/grad_norm"] > 0


@pytest.mark.slow
def test_sigkill_then_resume_on_the_vllm_engine_matches_the_uninterrupted_run(tmp_path, warm_cache):
    run = ["trainer.max_steps=4", "trainer.checkpoint_every=2", *VLLM]
    uninterrupted = tmp_path / "uninterrupted"
    proc = launch(warm_cache, uninterrupted, run, num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run_dir = tmp_path / "run"
    proc = start(warm_cache, run_dir, run, tmp_path / "first.log", num_ranks=1)
    wait_for(lambda: len(metrics(run_dir)) >= 3, proc)  # step 3 logged, step 2 checkpointed
    kill_all(proc)
    resumed = launch(warm_cache, run_dir, run, num_ranks=1)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_000002" in resumed.stdout
    assert_same_run(uninterrupted, run_dir)  # vLLM's draws are seeded per row from the run's position
