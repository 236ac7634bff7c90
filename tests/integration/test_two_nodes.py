"""Two "nodes" of one rank each, tried on one machine: two ``torchrun --nnodes 2 --node_rank N --nproc_per_node 1``
launchers, as a multi-node job starts one per node (docs/multinode.md), on tiny_runs.py's tiny task.

One node cannot catch what this does: each rank has LOCAL_RANK 0 (code that takes it for the global rank writes
rank 0's files twice and reads rank 0's random state back on both), each launcher starts its ranks alone (so
whatever happens once per node instead of once per run shows: two run-directory locks, two warm starts, two
writers of metrics.jsonl), and the only link between the two is the rendezvous on MASTER_ADDR:MASTER_PORT. The
ranks compute exactly what the two ranks of one node do, so the 2-node run, killed after its first checkpoint and
resumed, must equal the 1-node x 2-rank run bit for bit.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from test_checkpoint_resume import _can_mount_tmpfs
from tiny_runs import REPO, STARTUP_ABORT, _port, all_rows, command, comparable, environment, launch

RUN = ["trainer.max_steps=3", "trainer.checkpoint_every=1", "wandb.mode=disabled"]
NODES = 2

# Set by a launcher around a caller's shell (a test run inside a job): a rank variable left in the environment
# would make the 1-node run a rank of someone else's job instead of the start of its own.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "GROUP_RANK",
                      "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE")


def own_environment(port_offset: int = 0) -> dict[str, str]:
    env = environment(port_offset)
    for key in [k for k in env if k in LAUNCHER_VARIABLES or k.startswith(("TORCHELASTIC_", "PRM_RL_"))]:
        del env[key]
    return env


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, warm_cache) -> Path:
    """The same run as 1 node x 2 ranks, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("one_node") / "run"
    proc = launch(warm_cache, run_dir, RUN, num_ranks=2, env=own_environment())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def node_command(warm: Path, run_dir: Path, node: int, port: int) -> list[str]:
    """Node ``node``'s launcher. ``trainer.cpu_ranks=1``: this node's one rank is the one torchrun starts."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--node_rank", str(node),
                "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    entry_and_overrides = command(warm, run_dir, RUN, num_ranks=1)[1:]  # without the python in front
    return [*launcher, *entry_and_overrides]


@contextmanager
def nodes_running(commands: list[list[str]], logs: Path):
    """Each node's launcher (``commands[node]``), started together; whatever is left of them is killed on the way
    out."""
    env = own_environment()
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=(logs / f"node{node}.log").open("w"),
                              stderr=subprocess.STDOUT) for node, cmd in enumerate(commands)]
    try:
        yield nodes
    finally:
        kill_nodes(nodes)


def node_commands(warm: Path, run_dir: Path, port_offset: int) -> list[list[str]]:
    return [node_command(warm, run_dir, node, _port(port_offset)) for node in range(NODES)]


def kill_nodes(nodes: list[subprocess.Popen]) -> None:
    """SIGKILL every process of both nodes at once, as a power cut would. torchrun starts each rank in a session
    of its own, so the launcher's process group alone would leave the ranks running: kill the process trees."""
    procs = []
    for node in nodes:
        try:
            launcher = psutil.Process(node.pid)
            procs += [launcher, *launcher.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    for node in nodes:
        node.wait()
    psutil.wait_procs(procs, timeout=60)


def wait_for_file(path: Path, nodes: list[subprocess.Popen], logs: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        for n, node in enumerate(nodes):
            assert node.poll() is None, f"node {n} exited early with {node.returncode}: " + node_log(logs, n)[-3000:]
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.005)


def node_log(logs: Path, node: int) -> str:
    return (logs / f"node{node}.log").read_text()


def run_nodes_to_the_end(warm: Path, run_dir: Path, logs: Path, port_offset: int) -> list[str]:
    """Both nodes to completion; returns each node's output. A start that DeepSpeed aborts before the first step
    (tiny_runs.STARTUP_ABORT, on either node) is started again, up to twice, as tiny_runs does."""
    for _ in range(3):
        with nodes_running(node_commands(warm, run_dir, port_offset), logs) as nodes:
            codes = [node.wait(timeout=900) for node in nodes]
        outs = [node_log(logs, n) for n in range(NODES)]
        aborted = any(STARTUP_ABORT in out for out in outs) and "[prm_rl] held-out" not in outs[0]
        if codes == [0] * NODES or not aborted:
            break
    for n, code in enumerate(codes):
        assert code == 0, f"node {n} exited with {code}: " + outs[n][-3000:]
    return outs


def assert_identical_runs(a: Path, b: Path) -> None:
    """Every metric of every step and every final weight equal, bit for bit (wall-clock and memory aside)."""
    rows_a, rows_b = comparable(all_rows(a)), comparable(all_rows(b))
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert ra == rb, ra["step"]
    for name in ("policy", "prm"):
        wa, wb = load_file(a / name / "model.safetensors"), load_file(b / name / "model.safetensors")
        assert wa.keys() == wb.keys()
        different = [key for key in wa if not torch.equal(wa[key], wb[key])]
        assert not different, (name, different)


@pytest.mark.slow
def test_two_nodes_killed_and_resumed_equal_one_node_of_two_ranks(tmp_path, warm_cache, one_node):
    run_dir = tmp_path / "run"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    checkpoint = run_dir / "checkpoints" / "step_000001"
    with nodes_running(node_commands(warm_cache, run_dir, port_offset=2), first) as nodes:
        wait_for_file(checkpoint, nodes, first)  # the rename that commits the first checkpoint
    assert not (run_dir / "checkpoints" / "step_000003").exists(), "the run finished before the kill: rerun"
    # Each rank wrote its own random state, named by its global rank.
    assert sorted(p.name for p in (checkpoint / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]

    outs = run_nodes_to_the_end(warm_cache, run_dir, second, port_offset=3)
    assert "resumed from" in outs[0] and "step_000001" in outs[0], outs[0][-3000:]
    assert "took over the lock of a run that is gone" in outs[0]  # one lock, taken by rank 0 of the whole run
    # The run's progress lines come from global rank 0 alone, not from each node's first rank.
    assert all("[prm_rl]" not in node_log(logs, 1) for logs in (first, second))
    assert_identical_runs(one_node, run_dir)
    summary = (run_dir / "summary.json").read_text()
    assert '"world_size": 2' in summary
    assert '"command": "torchrun --nnodes 2 --nproc_per_node 1 launch/train.py +recipe=math_ppo' in summary


@pytest.mark.slow
def test_a_node_that_does_not_share_the_run_directory_stops_the_run_at_start(tmp_path, warm_cache):
    """Node 1 runs in a mount namespace of its own with an empty file system over the run directory's parent, as
    a node whose trainer.output_dir is on its own disk: the start stops on both nodes, before it writes anything."""
    shared = tmp_path / "shared"
    shared.mkdir()
    if shutil.which("unshare") is None or not _can_mount_tmpfs(shared):
        pytest.skip("needs unshare and tmpfs mounts in a user namespace")
    run_dir = shared / "run"
    commands = node_commands(warm_cache, run_dir, port_offset=2)
    commands[1] = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {shared} && exec \"$@\"", "sh", *commands[1]]
    with nodes_running(commands, tmp_path) as nodes:
        codes = [node.wait(timeout=600) for node in nodes]
    out = node_log(tmp_path, 0)
    assert codes[0] != 0 and codes[1] != 0
    assert f"trainer.output_dir={run_dir}: rank(s) 1 do not see the run directory rank 0 made" in out, out[-3000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"] and not (run_dir / ".lock").read_text()
