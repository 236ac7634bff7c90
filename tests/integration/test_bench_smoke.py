"""Keeps the benchmark scripts working: each runs once on a tiny budget (its numbers are not checked)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tiny_runs import REPO, TINY, environment


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
    from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    shape = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    for where, seed in ((tmp_path / "sft", 0), (tmp_path / "run" / "prm", 1)):
        build_tiny_model(shape, tokenizer, seed=seed).save_pretrained(where)
        tokenizer.save_pretrained(where)
    out = tmp_path / "bon"
    proc = subprocess.run([sys.executable, "bench/best_of_n.py", "--runs", str(tmp_path / "run"), "--policy",
                           str(tmp_path / "sft"), "--ref", str(tmp_path / "sft"), "--num-prompts", "4", "--n", "4",
                           "--draws", "4", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())[str(tmp_path / "run")]
    assert set(report["best_of_n"]) == {"prm_min", "prm_sum", "weighted_vote", "majority", "random"}
    assert set(report["best_of_n"]["majority"]) == {"1", "2", "4"} and report["pass_at_k"]["4"] >= report["pass_at_1"]
    assert "| majority |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").stat().st_size > 0


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
    report = out.with_suffix(".md").read_text()
    assert "| prime-softmin | 0 |" in report and out.with_suffix(".png").exists()
    assert "| prime-softmin | " in report.split("Dense rewards")[1]  # what its dense rewards did, and its PRM
    assert results[1]["prm_eval"] and "| prime-softmin | 2 |" in report.split("fresh held-out samples")[1]


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
