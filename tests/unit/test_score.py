"""Scoring responses with an implicit PRM: the aggregation on hand-derived values, and
``python -m prm_rl.cli.prm_score`` end to end on real tiny models, checked against a plain forward pass."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prm_rl import core
from prm_rl.cli import prm_score
from prm_rl.data import arithmetic
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

REPO = Path(__file__).resolve().parents[2]
TINY = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=64)


def test_response_score_on_hand_derived_values():
    rewards = torch.tensor([[0.2, -0.5, 0.1], [0.3, 9.0, 9.0], [7.0, 7.0, 7.0]])
    valid = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    torch.testing.assert_close(core.response_score(rewards, valid, "min"), torch.tensor([-0.5, 0.3, 0.0]))
    torch.testing.assert_close(core.response_score(rewards, valid, "mean"), torch.tensor([-0.2 / 3, 0.3, 0.0]))
    torch.testing.assert_close(core.response_score(rewards, valid, "sum"), torch.tensor([-0.2, 0.3, 0.0]))
    with pytest.raises(ValueError, match="how must be one of"):
        core.response_score(rewards, valid, "max")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("score")
    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    for name, seed in (("prm", 0), ("ref", 1)):
        build_tiny_model(TINY, tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "prm", root / "ref"


def run_score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prm_rl.cli.prm_score", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def plain_log_ratio(prm_dir: Path, ref_dir: Path, prompt: str, response: str) -> torch.Tensor:
    """A second implementation: one unpadded forward per model, log-softmax, gather the response tokens."""
    tok = AutoTokenizer.from_pretrained(prm_dir)
    prompt_ids = tok(prompt)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    out = []
    for d in (prm_dir, ref_dir):
        with torch.no_grad():
            logp = torch.log_softmax(AutoModelForCausalLM.from_pretrained(d)(ids).logits[0, :-1].float(), dim=-1)
        out.append(logp[len(prompt_ids) - 1:].gather(1, ids[0, len(prompt_ids):, None]).squeeze(1))
    return out[0] - out[1]


def test_the_cli_scores_steps_and_tokens_like_a_plain_forward_pass(tmp_path, models):
    prm, ref = models
    rows = [{"prompt": "3+4=?\n", "response": "3+4=7\n7*2=14\n\\boxed{14}", "id": "a"},
            {"prompt": "9-2=?\n", "response": "\\boxed{7}", "id": "b"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_score(str(path), "--prm", str(prm), "--ref", str(ref), "--beta", "0.5", "--tokens", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [s["id"] for s in scored] == ["a", "b"]
    assert [len(s["step_rewards"]) for s in scored] == [3, 1]  # two lines closed by "\n", then the boxed answer
    for row, s in zip(rows, scored):
        expected = 0.5 * plain_log_ratio(prm, ref, row["prompt"], row["response"])
        torch.testing.assert_close(torch.tensor(s["token_rewards"]), expected, rtol=1e-4, atol=1e-5)
        assert sum(s["step_rewards"]) == pytest.approx(sum(s["token_rewards"]), abs=1e-5)
        assert s["score"] == pytest.approx(min(s["step_rewards"]))
    # Padding changes nothing: the same rows scored as one batch (in this process: main is the command).
    out = tmp_path / "batched.jsonl"
    assert prm_score.main([str(path), "--prm", str(prm), "--ref", str(ref), "--beta", "0.5", "--aggregate", "sum",
                           "--out", str(out)]) == 0
    sums = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    assert sums == pytest.approx([sum(s["step_rewards"]) for s in scored], abs=1e-5)


def test_a_prm_equal_to_its_reference_scores_zero(tmp_path, models):
    prm, _ = models
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=?\n", "response": "\\boxed{2}"}) + "\n")
    out = tmp_path / "scored.jsonl"
    assert prm_score.main([str(path), "--prm", str(prm), "--ref", str(prm), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["score"] == 0.0


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "1+1=?"}', ":1: missing 'response'"),
    ('[1, 2]', ":1: a row must be a JSON object, got list"),
    ('{"prompt": ', ":1: invalid JSON"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, models, capsys, line, message):
    """In this process (main is the command; the next test runs it as one): a bad row stops it before any model
    loads."""
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n")
    assert prm_score.main([str(path), "--prm", str(models[0]), "--ref", str(models[1])]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"input error: {path}{message}"), lines


def test_a_missing_model_is_one_line_and_exit_2(tmp_path, models):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=?\n", "response": "\\boxed{2}"}) + "\n")
    missing = run_score(str(path), "--prm", str(tmp_path / "nope"), "--ref", str(models[1]))
    lines = [x for x in missing.stderr.strip().splitlines() if "real_accelerator" not in x]
    assert missing.returncode == 2
    assert lines == [f"model error: model.path={tmp_path / 'nope'}: no such directory"], lines
