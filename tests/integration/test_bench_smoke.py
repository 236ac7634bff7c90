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
