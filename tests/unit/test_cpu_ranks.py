"""How many ranks ``trainer.cpu_ranks`` starts, and when a launch starts any."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prm_rl.cli.train import gpu_machine
from prm_rl.engine.cpu_ranks import AUTO_MAX_RANKS, SPAWNED, ranks_to_start, run_ranks, should_spawn


def test_auto_takes_the_most_ranks_the_config_accepts_up_to_the_cores():
    divides_32 = lambda n: 32 % n == 0  # noqa: E731 - rollout.prompts_per_step=32 over n ranks
    assert ranks_to_start(0, cores=2, accepts=divides_32) == 2
    assert ranks_to_start(0, cores=6, accepts=divides_32) == 4
    assert ranks_to_start(0, cores=64, accepts=divides_32) == AUTO_MAX_RANKS
    assert ranks_to_start(0, cores=1, accepts=divides_32) == 1
    assert ranks_to_start(0, cores=3, accepts=lambda n: n == 1) == 1


def test_an_explicit_count_is_taken_as_given():
    assert ranks_to_start(1, cores=16, accepts=lambda n: True) == 1
    assert ranks_to_start(3, cores=2, accepts=lambda n: False) == 3  # the ranks then report the config error


def test_only_a_single_cpu_process_spawns():
    assert should_spawn({}, gpu=False)
    assert should_spawn({"WORLD_SIZE": "1", "RANK": "0"}, gpu=False)  # deepspeed's one rank on a CPU box
    assert not should_spawn({"WORLD_SIZE": "2"}, gpu=False)
    assert not should_spawn({SPAWNED: "1"}, gpu=False)
    assert not should_spawn({}, gpu=True)


def test_run_ranks_sees_each_rank_and_returns_the_failing_ranks_code(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text("import os, sys\n"
                      "open(os.path.join(sys.argv[1], os.environ['RANK']), 'w').write(os.environ['WORLD_SIZE'])\n"
                      "sys.exit(int(sys.argv[2]) if os.environ['RANK'] == '1' else 0)\n")
    assert run_ranks([str(script), str(tmp_path), "0"], 3) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "rank.py") == ["0", "1", "2"]
    assert (tmp_path / "2").read_text() == "3"
    assert run_ranks([str(script), str(tmp_path), "7"], 2) == 7


def test_a_failed_rank_stops_the_others_instead_of_leaving_them_waiting(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '0':\n"
                      "    time.sleep(600)\n"  # as if waiting in a collective for rank 1
                      "sys.exit(5)\n")
    assert run_ranks([str(script)], 2, grace_s=5) == 5


def test_one_thread_per_rank_is_set_only_where_no_gpu_is_visible():
    """OMP_NUM_THREADS=1 suits CPU ranks sharing cores, and starves DeepSpeed's CPU Adam beside a GPU."""
    assert gpu_machine({}, ["/dev/nvidia0"])
    assert gpu_machine({"CUDA_VISIBLE_DEVICES": "0,1"}, ["/dev/nvidia0", "/dev/nvidia1"])
    assert not gpu_machine({}, [])
    assert not gpu_machine({"CUDA_VISIBLE_DEVICES": ""}, ["/dev/nvidia0"])
    assert not gpu_machine({"CUDA_VISIBLE_DEVICES": "-1"}, ["/dev/nvidia0"])


def test_the_one_thread_is_set_before_torch_loads():
    """OpenMP reads OMP_NUM_THREADS once, when torch loads: the command's package (prm_rl.cli, shared with the tools)
    must not load torch before prm_rl.cli.train sets it."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores: with one, torch takes one thread anyway")
    # LD_PRELOAD out too: a vLLM CPU engine started earlier in this process (the vllm tests, same worker) sets it to
    # torch's libgomp, and a preloaded OpenMP reads its thread count before Python runs a line
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LD_PRELOAD")}
    env |= {"CUDA_VISIBLE_DEVICES": ""}
    probe = "import prm_rl.cli.train, torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1"]
