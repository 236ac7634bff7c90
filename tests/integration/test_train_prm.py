"""launch/train_prm.py for real: two DeepSpeed ranks sample, label and train an implicit PRM on the shrunk
task; a stopped run resumes to the same PRM; its rows train another PRM from a file; its PRM scores, ranks
best-of-N and starts a PRIME run."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.tiny_runs import REPO, command, environment, launch, run_retrying_startup_abort

PRM = ["prm_train.num_prompts=16", "prm_train.samples_per_prompt=4", "prm_train.prompts_per_update=4",
       "prm_train.epochs=2", "prm.learning_rate=1e-3", "trainer.checkpoint_every=0"]


def train_prm(warm, run_dir, overrides, num_ranks=2):
    cmd = command(warm, run_dir, [*PRM, *overrides], num_ranks, entry="launch/train_prm.py", recipe="prm_math")
    return run_retrying_startup_abort(cmd, environment())


def losses(run_dir):
    return [row["prm/loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "prm/loss" in row]


@pytest.fixture(scope="module")
def straight(warm_cache, tmp_path_factory):
    """Two epochs in one go: 16 prompts x 4 samples, 4 prompts per step -> 8 steps."""
    run = tmp_path_factory.mktemp("prm") / "straight"
    proc = train_prm(warm_cache, run, [])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run


def test_two_ranks_sample_label_train_and_report(straight):
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["rows"] == 64 and summary["prompts"] == 16
    assert summary["world_size"] == 2 and len(summary["loss_per_epoch"]) == 2
    assert 0 < summary["label_mean"] < 1
    assert summary["cost"]["data_flops"] > 0 and summary["cost"]["training_flops"] > summary["cost"]["data_flops"]
    start, final = summary["prm_eval_start"], summary["prm_eval_final"]
    assert start["prm_eval/ce"] == pytest.approx(math.log(2))  # the PRM starts as its reference: log-ratios 0
    assert final["prm_eval/ce"] != start["prm_eval/ce"]
    rows = [json.loads(line) for line in (straight / "prm_data" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and {r["label"] for r in rows} <= {0.0, 1.0}
    assert (straight / "prm" / "config.json").exists() and len(losses(straight)) == 8


def test_a_run_stopped_after_one_epoch_resumes_to_the_same_prm(straight, warm_cache, tmp_path):
    run = tmp_path / "resumed"
    first = train_prm(warm_cache, run, ["prm_train.epochs=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = train_prm(warm_cache, run, [])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "read back from" in second.stdout and "resumed from" in second.stdout
    assert losses(run) == pytest.approx(losses(straight), abs=1e-6)
    a, b = (load_file(str(r / "prm" / "model.safetensors")) for r in (straight, run))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_rows_from_a_file_train_a_prm_and_a_bad_row_is_one_line(straight, warm_cache, tmp_path):
    rows = (straight / "prm_data" / "rows.jsonl").read_text().splitlines()
    renamed = [json.dumps({"q": r["prompt"], "a": r["response"], "ok": bool(r["label"])})
               for r in map(json.loads, rows)]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(renamed) + "\n")
    fields = ["+prm_train.fields.prompt=q", "+prm_train.fields.response=a", "+prm_train.fields.label=ok",
              f"prm_train.data={data}", "prm.loss=dpo"]
    proc = train_prm(warm_cache, tmp_path / "from_file", fields, num_ranks=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "from_file" / "summary.json").read_text())
    assert summary["rows"] == 64 and summary["cost"]["data_flops"] == 0 and summary["loss"] == "dpo"

    data.write_text("\n".join([*renamed[:2], json.dumps({"q": "1+1=?\n", "a": "2", "ok": 3})]) + "\n")
    bad = train_prm(warm_cache, tmp_path / "bad", fields, num_ranks=1)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("data error")]
    assert bad.returncode == 2 and errors == [f"data error: {data}: row 3: field 'ok': expected a label in [0, 1] "
                                              "(or true/false), got 3 (prm_train.fields maps prompt, response, label)"]
    assert not (tmp_path / "bad" / "config.yaml").exists()


def test_the_prm_ranks_best_of_n_and_scores_rows(straight, warm_cache, tmp_path):
    from prm_rl.evaluation.best_of_n import METHODS

    sft = json.loads((straight / "summary.json").read_text())["reference"]
    out = tmp_path / "bon.json"
    proc = subprocess.run([sys.executable, "-m", "prm_rl.cli.best_of_n", "--policy", sft, "--prm", str(straight / "prm"),
                           "--ref", sft, "--num-prompts", "8", "--n", "4", "--draws", "4", "--out", str(out),
                           "--max-new-tokens", "40"], cwd=REPO, env=environment(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["best_of_n"]) == set(METHODS)
    assert set(report["pass_at_k"]) == {"1", "2", "4"} and report["step_auroc"] is not None

    rows = tmp_path / "rows.jsonl"
    first = (straight / "prm_data" / "rows.jsonl").read_text().splitlines()[:4]
    rows.write_text("".join(line + "\n" for line in first))
    scored = subprocess.run([sys.executable, "-m", "prm_rl.cli.prm_score", str(rows), "--prm", str(straight / "prm"),
                             "--ref", sft], cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    lines = [json.loads(line) for line in scored.stdout.splitlines()]
    assert len(lines) == 4 and all(len(r["step_rewards"]) >= 2 for r in lines)


def test_prime_starts_from_the_offline_prm(straight, warm_cache, tmp_path):
    proc = launch(warm_cache, tmp_path / "prime", [f"prm.init_path={straight / 'prm'}", "trainer.max_steps=1",
                                                   "trainer.eval_every=0"], num_ranks=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = json.loads((tmp_path / "prime" / "summary.json").read_text())["prm_eval_start"]
    assert abs(start["prm_eval/ce"] - math.log(2)) > 1e-4  # a fresh PRM reads every log-ratio as 0: CE = ln 2

