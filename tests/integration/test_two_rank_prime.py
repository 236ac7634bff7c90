"""A real two-rank ``deepspeed`` run of a few PRIME steps on a tiny model.

Warm start, rollouts, verification, PRM and policy updates all run for real; the task is shrunk to
one- and two-step chains so that a ~80-second SFT (the default model size) answers ~10% of them, which is what gives the
filter something to keep and the updates a non-zero signal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[2]

TINY = [
    "model.tiny.max_positions=64", "task.min_steps=1", "task.max_steps=2", "task.eval_size=32",
    "task.train_size=200", "warm_start.num_examples=1500", "warm_start.max_steps=250",
    "warm_start.batch_size=64", "warm_start.learning_rate=2e-3",
    "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=24",
    "filter.low=0.0", "filter.high=1.0",
    "policy.learning_rate=1e-3", "policy.weight_decay=0.0", "policy.micro_batch_size=4",
    "prm.learning_rate=1e-3", "prm.mini_batches=2", "policy.mini_batches=2",
    "trainer.progress_bar=false", "wandb.mode=offline",
]


def launch(tmp_path: Path, run_dir: Path, overrides: list[str], num_ranks: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_ranks),
           "--master_port", str(29500 + os.getpid() % 1000), "launch/train.py", "+recipe=math_ppo", *TINY,
           f"warm_start.cache_dir={tmp_path / 'warm'}", f"trainer.output_dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_rank_prime_run_updates_and_saves(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(tmp_path, run_dir, ["trainer.max_steps=3"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    updated = [r for r in rows if "policy/loss" in r]
    assert updated, "no step kept any group: the warm start is too weak for this test"
    assert all("prm/loss" in r and "time/generate" in r for r in updated)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["world_size"] == 2
    assert 0.0 <= summary["eval_accuracy_start"] <= 1.0 and 0.0 <= summary["eval_accuracy_final"] <= 1.0
    assert (run_dir / "config.yaml").exists()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline run missing"

    warm = next((tmp_path / "warm").iterdir())
    start = AutoModelForCausalLM.from_pretrained(warm)
    for name in ("policy", "prm"):
        trained = AutoModelForCausalLM.from_pretrained(run_dir / name)
        tokenizer = AutoTokenizer.from_pretrained(run_dir / name)
        changed = [n for (n, a), (_, b) in zip(start.named_parameters(), trained.named_parameters())
                   if not torch.equal(a, b)]
        assert changed, f"{name} parameters did not change"
        ids = tokenizer("3+4=?\n", return_tensors="pt")["input_ids"]
        out = trained.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] > ids.shape[1]
