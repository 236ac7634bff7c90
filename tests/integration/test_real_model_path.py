"""The path a user with a hub checkpoint and GSM8K takes (``model.path=Qwen/... data.train=gsm8k.jsonl``), without
a hub: a Qwen2-architecture model built from a config, a byte-level BPE tokenizer trained on the spot with a chat
template, GSM8K-format rows (question / worked answer ending ``#### N``) read by ``data.mapping=gsm8k`` and scored
by the math verifier, through launch/train.py on each rollout engine. Nothing here is the built-in char tokenizer."""
from __future__ import annotations

import json
import sys

import pytest

from prm_rl.data import arithmetic
from prm_rl.models.random_init import write_checkpoint
from tiny_runs import environment, metrics, require_vllm, run_retrying_startup_abort

ARITH = arithmetic.ArithmeticConfig(min_steps=1, max_steps=2)


def gsm8k_row(problem: arithmetic.Problem) -> dict:
    question = f"What is {problem.question.removesuffix('=?')}? Work left to right."
    steps = "\n".join(f"{a} {op} {b} = {c}" for a, op, b, c in problem.steps())
    return {"question": question, "answer": f"{steps}\n#### {problem.answer}"}


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory):
    """(checkpoint dir, train.jsonl, test.jsonl) as a user would have them."""
    root = tmp_path_factory.mktemp("real_model")
    heldout = [gsm8k_row(p) for p in arithmetic.heldout_problems(ARITH, 8, seed=1)]
    train = [gsm8k_row(p) for p in arithmetic.train_problems(ARITH, 64, seed=2, exclude=set())]
    for name, rows in (("train.jsonl", train), ("test.jsonl", heldout)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [r["question"] + "\n" + r["answer"] for r in train]
    checkpoint = write_checkpoint(root / "qwen2", texts, "test", seed=0)
    return checkpoint, root / "train.jsonl", root / "test.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_two_steps_on_a_qwen2_checkpoint_with_a_bpe_tokenizer_and_gsm8k_rows(tmp_path, hub_like, engine):
    if engine == "vllm":
        require_vllm()
    checkpoint, train, test = hub_like
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "launch/train.py", "+recipe=math_ppo", f"model.path={checkpoint}", f"data.train={train}",
           f"data.eval={test}", "data.mapping=gsm8k",
           "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=24",
           "rollout.eval_batch_size=8", "filter.enabled=false",  # a random model scores 0: keep every group
           "policy.micro_batch_size=8", "prm.micro_batch_size=8", "prm_eval.num_prompts=4",
           "prm_eval.samples_per_prompt=2", "prm_eval.table_rows=1", f"rollout.engine={engine}",
           "trainer.max_steps=2", "trainer.cpu_ranks=1", "trainer.progress_bar=false", "wandb.mode=disabled",
           f"trainer.output_dir={run_dir}"]
    proc = run_retrying_startup_abort(cmd, environment())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data: 64 training prompts from" in proc.stdout and "8 held-out prompts" in proc.stdout
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["response/length_mean"] > 1 and r["verify/failures"] == 0 for r in rows)
    if engine == "vllm":
        assert all(r["rollout/logprob_diff"] < 1e-4 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_size"] == 8
