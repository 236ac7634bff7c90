"""Keeps bench/memory.py working: one ZeRO stage, one rank, one step of a very small model (numbers not checked)."""
from __future__ import annotations

import json
import subprocess
import sys

from tiny_runs import REPO, environment


def test_memory_bench_runs_on_a_tiny_budget(tmp_path):
    out = tmp_path / "memory"
    proc = subprocess.run([sys.executable, "bench/memory.py", "--out", str(out), "--work", str(tmp_path / "work"),
                           "--stages", "0", "--ranks", "1", "--steps", "1", "--hidden", "32", "--layers", "1",
                           "--heads", "2", "--intermediate", "64"],
                          cwd=REPO, env=environment(), capture_output=True, text=True, timeout=85)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    [result] = report["results"]
    assert (result["stage"], result["ranks"]) == (0, 1)
    for run in ("model", "baseline"):
        assert result[run]["measured"]["peak_rss"] > 0 and result[run]["estimate"]["total"]["device"] > 0
    assert "| 0 | 1 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000
