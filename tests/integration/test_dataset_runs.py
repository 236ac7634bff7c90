"""The trainer on prompts from files: a real run on a JSONL training file and a Parquet held-out file, and a
malformed row stopping the launch before any model loads."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from prm_rl.data import arithmetic
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model
from tiny_runs import REPO, launch, metrics

ARITH = arithmetic.ArithmeticConfig(min_steps=1, max_steps=2)


def write_rows(path, problems) -> None:
    rows = [{"question": p.question, "final": str(p.answer)} for p in problems]
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_training_on_prompts_from_files(tmp_path, warm_cache):
    heldout = arithmetic.heldout_problems(ARITH, 16, seed=5)
    train = arithmetic.train_problems(ARITH, 64, seed=6, exclude={p.question for p in heldout})
    write_rows(tmp_path / "train.jsonl", train)
    write_rows(tmp_path / "heldout.parquet", heldout)
    fields = ["data.mapping=fields", "+data.fields.prompt=question", "+data.fields.answer=final",
              "data.task=arithmetic", f"data.train={tmp_path / 'train.jsonl'}",
              f"data.eval={tmp_path / 'heldout.parquet'}"]
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", *fields], num_ranks=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data: 64 training prompts from" in proc.stdout and "16 held-out prompts" in proc.stdout
    assert [r["step"] for r in metrics(run_dir)] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_size"] == 16 and 0.0 <= summary["eval_accuracy_final"] <= 1.0


def test_a_malformed_row_stops_the_launch_before_models_load(tmp_path):
    model_dir = tmp_path / "sft"
    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                     tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "1+2=?", "final": "3"}\n{"question": "   ", "final": "4"}\n')
    (tmp_path / "run").mkdir()
    mine = tmp_path / "run" / "config.yaml"  # e.g. a finished run's, or the user's own
    mine.write_text("mine: 1\n")
    proc = subprocess.run(
        [sys.executable, "launch/train.py", "+recipe=math_ppo", f"model.path={model_dir}", f"data.train={bad}",
         "data.mapping=fields", "+data.fields.prompt=question", "+data.fields.answer=final", "data.task=math",
         f"trainer.output_dir={tmp_path / 'run'}", "wandb.mode=disabled"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"data error: {bad}: row 2: field 'question'"), last
    assert "evaluating the starting policy" not in proc.stdout
    assert mine.read_text() == "mine: 1\n", "a rejected start overwrote the directory's config.yaml"
