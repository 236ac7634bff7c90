"""Keeps the benchmark scripts working: each runs once on a tiny budget (its numbers are not checked)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tiny_runs import REPO, STARTUP_ABORT, TINY, environment


@pytest.mark.slow
def test_prm_sweep_runs_and_tabulates(tmp_path, warm_cache):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "bench/prm_sweep.py", "--grid", "screen", "--only", "ce-lr1e-4", "--steps", "1",
         "--eval-every", "1", "--parallel", "1", "--runs", str(tmp_path / "runs"), "--out", str(out),
         "--set", *TINY, f"warm_start.cache_dir={warm_cache}", "wandb.mode=disabled"],
        cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [r["variant"] for r in result] == ["ce-lr1e-4"]
    for samples in ("prm_eval", "prm_eval_sft"):  # the current policy's and the starting model's samples
        assert [e["step"] for e in result[0]["evals"][samples]] == [0, 1]
    assert "| ce-lr1e-4 | 0 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_best_of_n_bench_runs_on_a_tiny_budget(tmp_path):
    """bench/best_of_n.py end to end on tiny real models: a 'run' whose prm/ differs from the SFT model."""
    from prm_rl.data import arithmetic
    from prm_rl.evaluation.best_of_n import METHODS
    from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    shape = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    for where, seed in ((tmp_path / "sft", 0), (tmp_path / "run" / "prm", 1)):
        build_tiny_model(shape, tokenizer, seed=seed).save_pretrained(where)
        tokenizer.save_pretrained(where)
    out = tmp_path / "bon"
    proc = subprocess.run([sys.executable, "bench/best_of_n.py", "--runs", str(tmp_path / "run"), "--policy",
                           str(tmp_path / "sft"), "--ref", str(tmp_path / "sft"), "--num-prompts", "4", "--n", "4",
                           "--draws", "4", "--seeds", "0", "1", "--responses", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(out.with_suffix(".json").read_text())
    assert set(reports) == {f"{tmp_path / 'run'}@seed{s}" for s in (0, 1)}  # one sample of responses per seed
    report = reports[f"{tmp_path / 'run'}@seed0"]
    assert set(report["best_of_n"]) == set(METHODS)
    assert set(report["best_of_n"]["majority"]) == {"1", "2", "4"} and report["pass_at_k"]["4"] >= report["pass_at_1"]
    assert "| majority |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").stat().st_size > 0
    rows = [json.loads(line) for line in out.with_suffix(".responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 * 4 and all(r["steps"] == len(r["step_rewards"]) for r in rows)


def test_offline_prm_bench_runs_on_a_tiny_budget(tmp_path, warm_cache):
    """bench/offline_prm.py end to end: one train_prm run, its best-of-N, and the Monte-Carlo side by side."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/offline_prm.py", "--losses", "ce", "--seeds", "0", "--out", str(out),
                           "--num-prompts", "4", "--mc-prompts", "2", "--rollouts", "2", "--",
                           *TINY, f"warm_start.cache_dir={warm_cache}", "prm_train.num_prompts=8",
                           "prm_train.samples_per_prompt=2", "prm_train.prompts_per_update=4", "prm_train.epochs=1"],
                          cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "ce-s0" / "summary.json").read_text())["rows"] == 16
    assert (out / "best_of_n_ce.png").stat().st_size > 1000
    report = json.loads((out / "mc_values.json").read_text())
    assert report["monte_carlo_cost"]["completions"] == 2 * report["prefixes"]
    assert "| implicit PRM (ce, 1 seeds) |" in (out / "summary.md").read_text()


def test_learning_efficiency_bench_runs_on_a_tiny_budget(tmp_path, warm_cache):
    out = tmp_path / "eff"
    proc = subprocess.run([sys.executable, "bench/learning_efficiency.py", "--setting", "main", "--methods", "rloo",
                           "prime-softmin", "trl-grpo", "--seeds", "0", "--steps", "2", "--eval-every", "1",
                           "--parallel", "1",
                           "--runs", str(tmp_path / "runs"), "--out", str(out), "--set", *TINY,
                           f"warm_start.cache_dir={warm_cache}"],
                          cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [r["method"] for r in results] == ["rloo", "prime-softmin", "trl-grpo"]
    assert all([step for step, _ in r["curve"]] == [0, 1, 2] for r in results)
    assert results[2]["stage_seconds"]["generate"] > 0  # TRL's generation call, timed
    assert results[0]["tokens"][0] == 0 < results[0]["tokens"][1] < results[0]["tokens"][2]  # tokens drawn so far
    report = out.with_suffix(".md").read_text()
    assert "| prime-softmin | 0 |" in report and out.with_suffix(".png").exists()
    assert "| prime-softmin | " in report.split("Dense rewards")[1]  # what its dense rewards did, and its PRM
    assert results[1]["prm_eval"] and "| prime-softmin | 2 |" in report.split("fresh held-out samples")[1]
    # the finished runs are reused by the same command, and refused to another (--set changes every run)
    again = subprocess.run(proc.args, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(out.with_suffix(".json").read_text())["results"] == results
    other = [*proc.args, "rollout.temperature=0.9"]
    refused = subprocess.run(other, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "holds a finished run of another command" in refused.stderr


def test_competence_bench_runs_on_a_tiny_budget(tmp_path):
    """bench/competence.py on a tiny real model (random weights): its numbers are not checked, its rows are."""
    from prm_rl.data import arithmetic
    from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tokenizer,
                     seed=0).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "competence"
    proc = subprocess.run([sys.executable, "bench/competence.py", "--model", str(tmp_path / "m"), "--lengths", "1",
                           "3", "--prompts", "3", "--samples", "2", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["length"] for r in rows] == [1, 3] and all(0 <= r["right_steps_mean"] <= r["length"] for r in rows)
    assert "| 3 |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").stat().st_size > 0


def test_profile_bench_runs_on_a_tiny_budget(tmp_path, warm_cache):
    out = tmp_path / "profile"
    proc = subprocess.run([sys.executable, "bench/profile_step.py", "--out", str(out), "--warmup", "1", "--steps", "1",
                           *TINY, f"warm_start.cache_dir={warm_cache}"],
                          cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert {"generate", "prm", "policy"} <= set(report["stage_seconds"])  # the stages' profiler ranges
    assert report["kind_seconds"]["matmul"] > 0
    assert "| matmul |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").stat().st_size > 1000


def test_prm_sweep_with_no_matching_variant_is_one_line_before_any_run(tmp_path):
    proc = subprocess.run([sys.executable, "bench/prm_sweep.py", "--only", "no-such-variant", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "sweep")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("prm_sweep.py: error: --only no-such-variant: no variant")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep.json").exists()


def run_gpu_check(tmp_path, *flags: str) -> dict:
    """bench/gpu_check.sh with ``flags``, its model and logs under tmp_path; returns its JSON."""
    out = tmp_path / "gpu_check"
    proc = subprocess.run(["bench/gpu_check.sh", *flags, "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=REPO, env=environment(PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text())


def test_gpu_check_dry_run_plans_the_four_runs_with_their_estimates(tmp_path):
    """The GPU check's plan on a CPU: the Qwen2-0.5B shape's config (no weights), the four commands, the estimator's
    figure for each; nothing trains."""
    report = run_gpu_check(tmp_path, "--dry-run")
    assert report["mode"] == "dry-run" and report["parameters"] == 494_032_768  # Qwen2.5-0.5B's count
    assert list(report["runs"]) == ["hf-zero2", "vllm-zero2", "hf-zero3", "vllm-zero3"]
    for run in report["runs"].values():
        command = run["command"].split()
        assert command[:2] == ["python", "launch/train.py"] and "model.dtype=bfloat16" in command
        assert {f"deepspeed.zero_stage={run['zero_stage']}", f"rollout.engine={run['engine']}",
                "trainer.max_steps=3"} <= set(command)
        assert ("rollout.vllm.sleep_level=2" in command) == (run["engine"] == "vllm")
        assert run["estimate"]["device_gib"] > 0 and "train" not in run
    assert not (tmp_path / "work" / "model_qwen2.5-0.5b" / "model.safetensors").exists()  # config and tokenizer only
    assert "| vllm-zero3 | dry-run |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_gpu_check_tiny_runs_the_driver_end_to_end(tmp_path):
    """--tiny: one tiny run of one step on the CPU through the driver: its metrics read back, its run directory
    deleted, its log and metrics kept."""
    for _ in range(3):  # DeepSpeed's rare start-up abort on CPU: retried, as tiny_runs.run_retrying_startup_abort does
        run = run_gpu_check(tmp_path, "--tiny")["runs"]["hf-zero2"]
        result = run["train"]
        if result["status"] == "ok" or STARTUP_ABORT not in "\n".join(result.get("log_tail", [])):
            break
    assert result["status"] == "ok" and result["exit_code"] == 0 and result["steps_logged"] == 1
    assert result["tokens_per_second"][0] > 0 and result["step_seconds"][0] > 0 and result["mem_peak_gb"] > 0
    assert result["seconds_to_first_step"] > 0 and run["estimate"]["device_gib"] > 0
    assert not (tmp_path / "work" / "run" / "hf-zero2").exists()
    assert (tmp_path / "work" / "logs" / "hf-zero2.metrics.jsonl").exists()
    assert "| hf-zero2 | ok |" in (tmp_path / "gpu_check.md").read_text()
