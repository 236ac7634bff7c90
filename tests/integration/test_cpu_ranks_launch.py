"""``python launch/train.py`` on this CPU box starts one rank per core (trainer.cpu_ranks=0), and a rank that
dies takes the run down with its exit code instead of leaving the other waiting in a collective."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tiny_runs import REPO, TINY, environment, wait_for


def _command(warm_cache, run_dir, *overrides: str) -> list[str]:
    return [sys.executable, "launch/train.py", "+recipe=math_ppo", *TINY, "trainer.cpu_ranks=0",
            "wandb.mode=disabled", f"warm_start.cache_dir={warm_cache}", f"trainer.output_dir={run_dir}", *overrides]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_plain_launch_uses_both_cores(tmp_path, warm_cache):
    if len(os.sched_getaffinity(0)) < 2:
        import pytest

        pytest.skip("needs 2 cores")
    run_dir = tmp_path / "run"
    proc = subprocess.run(_command(warm_cache, run_dir, "trainer.max_steps=2"), cwd=REPO, env=environment(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("[prm_rl] no GPU: starting 2 ranks") == 1
    assert proc.stdout.count("[prm_rl] done:") == 1  # rank 0 speaks for the run
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2


def test_a_killed_rank_ends_the_run_with_its_signal(tmp_path, warm_cache):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_command(warm_cache, run_dir, "trainer.max_steps=200", "trainer.cpu_ranks=2"), cwd=REPO,
                            env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: (run_dir / "metrics.jsonl").exists(), proc, timeout=300)  # training has begun
        ranks = _children(proc.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGKILL)
        started = time.time()
        assert proc.wait(timeout=120) == 128 + signal.SIGKILL
        assert time.time() - started < 60
        assert not [p for p in ranks if os.path.exists(f"/proc/{p}") and
                    open(f"/proc/{p}/stat").read().split()[2] != "Z"], "a rank outlived the run"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
