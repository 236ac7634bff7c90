"""Checkpoints under faults, with real two-rank runs: SIGKILL and resume, a kill during a save, SIGTERM,
NaN losses, a full disk. A killed-and-resumed run must match the uninterrupted one step for step."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prm_rl.core import lr_multiplier
from tiny_runs import (REPO, assert_same_run, command, environment, kill_all, launch, metrics, start,
                       wait_for, wait_until_gone)

# Band filter with two fill rounds: the carry-over buffer holds groups across steps (and checkpoints). Rollouts
# branch (2 roots per prompt, each forked once): a resumed run must fork where the uninterrupted one did. Both
# learning rates follow a schedule: a resumed run must go on where it was. rollouts.jsonl must too.
RUN = ["trainer.max_steps=5", "trainer.checkpoint_every=2", "filter.low=0.2", "filter.high=0.8",
       "filter.fill_rounds=2", "rollout.branch.roots=2", "wandb.mode=offline", "policy.lr_schedule.decay=cosine",
       "policy.lr_schedule.warmup_steps=2", "prm.lr_schedule.decay=linear", "prm.lr_schedule.min_lr_ratio=0.5",
       "tracking.rollouts_jsonl_mb=1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, warm_cache) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = launch(warm_cache, run_dir, RUN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lrs = [(r["policy/lr"], r["prm/lr"]) for r in metrics(run_dir)]
    policy_lr, prm_lr = 1e-3, 1e-3  # tiny_runs.TINY's
    assert lrs == [(pytest.approx(policy_lr * lr_multiplier(k, 5, "cosine", 2)),
                    pytest.approx(prm_lr * lr_multiplier(k, 5, "linear", 0, 0.5))) for k in range(1, 6)]
    assert lrs[0][0] == 0 and lrs[2][0] == policy_lr and lrs[4][1] == pytest.approx(prm_lr * 0.6)
    return run_dir


def assert_same_rollouts(a: Path, b: Path) -> None:
    """rollouts.jsonl: the same rollouts in the same order, each step once; its numbers as close as the metrics."""
    rows_a, rows_b = ([json.loads(line) for line in (run / "rollouts.jsonl").open()] for run in (a, b))
    numbers = ("process_reward", "advantage", "advantage_min", "advantage_max")
    text = [[{k: v for k, v in r.items() if k not in numbers} for r in rows] for rows in (rows_a, rows_b)]
    assert text[0] == text[1]
    assert sorted({r["step"] for r in rows_a}) == [1, 2, 3, 4, 5] and {r["kept"] for r in rows_a} == {True, False}
    for ra, rb in zip(rows_a, rows_b):
        assert ra["kept"] == (ra["advantage"] is not None)  # a group the filter dropped has no advantage
        for k in numbers:
            assert ra[k] == rb[k] if ra[k] is None else ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_sigkill_during_a_save_then_resume_matches_uninterrupted_run(tmp_path, warm_cache, uninterrupted):
    """Every rank killed at once while the second checkpoint is being written: the half-written one is ignored,
    the run resumes from the first and ends as the uninterrupted run did."""
    run_dir = tmp_path / "run"
    proc = start(warm_cache, run_dir, RUN, tmp_path / "first.log")
    broken = run_dir / "checkpoints" / "step_000004.tmp"
    wait_for(broken.exists, proc)  # the second save has begun
    kill_all(proc)
    assert not (run_dir / "checkpoints" / "step_000004").exists(), "save finished before the kill: rerun"
    assert (run_dir / "checkpoints" / "step_000002").is_dir()

    resumed = launch(warm_cache, run_dir, RUN)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "ignoring incomplete checkpoint" in resumed.stdout and "step_000004.tmp" in resumed.stdout
    assert "resumed from" in resumed.stdout and "step_000002" in resumed.stdout
    assert "took over the lock of a run that is gone" in resumed.stdout  # the killed run could not release it
    assert not broken.exists()
    assert_same_run(uninterrupted, run_dir)
    assert_same_rollouts(uninterrupted, run_dir)  # steps 3-4 of the killed run were cut, then written again
    # The resumed process logged into the killed one's W&B run (offline: two run folders, one run id).
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1, runs
    # Only the newest trainer.keep_checkpoints=2 remain, and "latest" names the final one.
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert kept == ["step_000004", "step_000005"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000005"


@pytest.mark.slow
def test_sigterm_saves_and_exits_nonzero_with_resume_hint(tmp_path, warm_cache, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start(warm_cache, run_dir, RUN + ["trainer.checkpoint_every=0"], tmp_path / "first.log")
    wait_for(lambda: len(metrics(run_dir)) >= 1, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # every process of the job, as Ctrl-C or a scheduler (SLURM) does
    proc.wait(timeout=120)
    assert proc.returncode != 0  # the deepspeed runner itself dies at once; the ranks save, then exit
    wait_until_gone(proc.pid, timeout=120)
    out = (tmp_path / "first.log").read_text()
    assert "stopped by SIGTERM" in out and "Run the same command again to resume" in out, out[-3000:]
    stopped_at = len(metrics(run_dir))
    assert (run_dir / "checkpoints" / f"step_{stopped_at:06d}").is_dir()

    resumed = launch(warm_cache, run_dir, RUN + ["trainer.checkpoint_every=0"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "took over the lock" not in resumed.stdout  # a graceful stop released it
    assert_same_run(uninterrupted, run_dir)


@pytest.mark.slow
def test_nan_updates_are_skipped_then_the_run_stops_with_last_good_checkpoint(tmp_path, warm_cache):
    run_dir = tmp_path / "run"
    overrides = ["trainer.max_steps=6", "trainer.checkpoint_every=1", "trainer.max_bad_steps=2",
                 "wandb.mode=disabled"]
    env = environment(PRM_RL_INJECT_NAN_STEPS="2,4,5")
    proc = subprocess.run(command(warm_cache, run_dir, overrides), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    rows = {r["step"]: r for r in metrics(run_dir)}
    # Step 2: its policy updates were skipped and counted, then training went on.
    assert rows[2]["policy/skipped_updates"] == 2 and rows[2]["guard/bad_steps_in_a_row"] == 1
    assert rows[3]["policy/skipped_updates"] == 0 and rows[3]["guard/bad_steps_in_a_row"] == 0
    # Steps 4 and 5 in a row reach trainer.max_bad_steps=2: stop, non-zero, nothing saved after step 3.
    assert proc.returncode != 0 and sorted(rows) == [1, 2, 3, 4, 5]
    assert "2 steps in a row had NaN/inf" in out and "step_000003" in out, out[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_000001", "step_000003"]
    # No NaN reached the weights: the checkpoints around the skipped step hold finite values.
    for step in (1, 3):
        weights = load_file(run_dir / "checkpoints" / f"step_{step:06d}" / "policy" / "hf" / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())


def _can_mount_tmpfs(path: Path) -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {path}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_full_disk_fails_fast_and_keeps_the_previous_checkpoint(tmp_path, warm_cache):
    """A real small filesystem (tmpfs in a private mount namespace): room for one checkpoint, not two."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("unshare") is None or not _can_mount_tmpfs(mount):
        pytest.skip("needs unshare and tmpfs mounts in a user namespace")
    run_dir = mount / "run"
    overrides = ["trainer.max_steps=3", "trainer.checkpoint_every=1", "wandb.mode=disabled"]
    inner = " ".join(f"'{a}'" for a in command(warm_cache, run_dir, overrides))
    script = f"mount -t tmpfs -o size=60m tmpfs {mount} && {inner}; code=$?; ls {run_dir}/checkpoints; exit $code"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=environment(),
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "checkpoint at step 2 not written: only" in out and "MiB free" in out, out[-3000:]
    listing = proc.stdout.strip().splitlines()[-2:]  # `ls` of the checkpoints dir, inside the namespace
    assert "step_000001" in listing and not any(n.startswith("step_000002") for n in listing), listing


@pytest.mark.slow
def test_resume_applies_a_changed_learning_rate(tmp_path, warm_cache):
    """A resume with new learning rates trains at them (the optimiser state load used to restore the old ones)."""
    first = tmp_path / "first"
    one_rank = ["trainer.checkpoint_every=1", "wandb.mode=disabled"]
    proc = launch(warm_cache, first, ["trainer.max_steps=1", *one_rank], num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finals = {}
    for name, change in (("same", []), ("changed", ["policy.learning_rate=1e-2", "prm.learning_rate=1e-1"])):
        run_dir = tmp_path / name
        shutil.copytree(first, run_dir)
        proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", *one_rank, *change], num_ranks=1)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "resumed from" in proc.stdout
        finals[name] = load_file(run_dir / "policy" / "model.safetensors")
        if change:
            assert "policy optimiser after resume: learning_rate=0.01" in proc.stdout
            assert "prm optimiser after resume: learning_rate=0.1" in proc.stdout
    assert any(not torch.equal(finals["same"][k], finals["changed"][k]) for k in finals["same"]), \
        "the changed learning rate was not used"
