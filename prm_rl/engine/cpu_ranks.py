"""One rank per core on a machine without a GPU: what ``trainer.cpu_ranks`` starts.

DeepSpeed's launcher starts one rank on a CPU box (it counts accelerators, and a CPU is one), and one rank
runs its forwards on one thread. The step's work splits evenly over ranks (each samples, scores and trains
on its share of the batch), so with ``N`` cores ``N`` ranks of one thread each finish a step sooner (on the
2-core box, measured in docs/benchmarks.md). When the entry point runs as a single process (plain
``python`` or a one-rank launcher) on such a machine, it becomes a small launcher: it starts the ranks as
child processes of the same command, waits for them and exits with their status.

Failures: a rank that exits early with an error leaves the others waiting in a collective, so they are
stopped (SIGTERM, then SIGKILL after a grace period) and the first failing rank's exit code is returned
(rank 0's when several fail at once). Ctrl-C reaches every rank from the terminal (one process group); SIGTERM sent to
this launcher is passed on to each rank, which stops gracefully as a single process would.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

SPAWNED = "PRM_RL_CPU_RANK_CHILD"  # set in each child: a rank never spawns ranks of its own
AUTO_MAX_RANKS = 8  # auto stops here: each rank holds its own copy of every model


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or ``taskset`` may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ranks_to_start(requested: int, cores: int, accepts: Callable[[int], bool]) -> int:
    """How many ranks to start: ``requested`` when > 0, else (auto) the most ranks up to
    ``min(cores, AUTO_MAX_RANKS)`` that the config ``accepts`` (e.g. rollout.prompts_per_step must divide by
    the rank count); 1 when none above 1 does."""
    if requested > 0:
        return requested
    return next((n for n in range(min(cores, AUTO_MAX_RANKS), 1, -1) if accepts(n)), 1)


def should_spawn(env: dict[str, str], gpu: bool) -> bool:
    """Only a single process on a machine without a GPU spawns: not a rank we started, not one of a
    multi-rank launch, never on a GPU machine (there the launcher's one rank per GPU is right)."""
    return not gpu and SPAWNED not in env and int(env.get("WORLD_SIZE", "1")) == 1


def _default_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # in the child, before exec: undo this process's SIG_IGN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(argv: list[str], ranks: int, grace_s: float = 30.0) -> int:
    """Run ``python argv...`` as ``ranks`` ranks on this machine; returns the exit code for the whole run.
    The rendezvous port is ``MASTER_PORT`` when set (as torchrun and the deepspeed launcher take it), else a free one."""
    port = os.environ.get("MASTER_PORT") or str(_free_port())
    children: list[subprocess.Popen] = []

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # SIGINT ignored here (from before the first rank starts, so that this process cannot stop without its
    # ranks): the terminal's Ctrl-C reaches each rank itself, which takes it as this process would have.
    takes_ctrl_c = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # not a background job
    before = signal.signal(signal.SIGTERM, forward), signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for rank in range(ranks):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
                       LOCAL_WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **{SPAWNED: "1"})
            env.setdefault("OMP_NUM_THREADS", "1")
            children.append(subprocess.Popen([sys.executable, *argv], env=env,
                                             preexec_fn=_default_ctrl_c if takes_ctrl_c else None))
        failed = _wait(children, grace_s)
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
    if not failed:
        return 0
    code = failed[0][1]
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def _wait(children: list[subprocess.Popen], grace_s: float) -> list[tuple[int, int]]:
    """Wait for every rank; returns (rank, exit code) of each that failed, in the order seen."""
    failed: list[tuple[int, int]] = []
    while any(child.poll() is None for child in children):
        for rank, child in enumerate(children):
            code = child.poll()
            if code not in (None, 0) and all(r != rank for r, _ in failed):
                failed.append((rank, code))
        if failed:  # the others would wait for the failed rank in their next collective: stop them
            _stop(children, grace_s)
            break
        time.sleep(0.2)
    for rank, child in enumerate(children):
        code = child.wait()
        if code != 0 and all(r != rank for r, _ in failed):
            failed.append((rank, code))
    return failed


def _stop(children: list[subprocess.Popen], grace_s: float) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.time() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            child.kill()
