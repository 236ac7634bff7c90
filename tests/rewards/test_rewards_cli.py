"""python -m prm_rl.cli.verify on fixture files (real subprocesses for the end-to-end runs)."""
import json
import os
import subprocess
import sys

import pytest

from prm_rl.cli.verify import main

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, "fixtures")


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "prm_rl.cli.verify", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_scores_a_fixture_file():
    proc = run_cli(os.path.join(FIXTURES, "verify_ok.jsonl"), "--workers", "2", "--timeout", "5")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert [r["row"] for r in rows] == [1, 2, 3, 5, 6, 7, 8, 9]  # line numbers; the blank line 4 is skipped
    assert [r["score"] for r in rows] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    assert rows[1]["reason"] == "wrong answer" and rows[1]["task"] == "arithmetic"
    assert rows[4]["reason"] == "no final answer found"
    assert all(("reason" in r) == (r["score"] == 0) for r in rows)
    assert summary["summary"] is True and summary["rows"] == 8
    assert summary["mean_score"] == pytest.approx(5.5 / 8)
    assert summary["failures"] == {}


def test_cli_malformed_row_exits_2_with_one_line():
    path = os.path.join(FIXTURES, "verify_bad_json.jsonl")
    proc = run_cli(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"{path}:2: invalid JSON" in err[0]


@pytest.mark.parametrize(
    "row, message",
    [
        ('{"response": "x"}', ":1: missing 'task'"),
        ('{"task": "math", "answer": "1"}', ":1: missing 'response'"),
        ('{"task": "math", "response": 5, "answer": "1"}', ":1: 'response' must be a string, got int"),
        ('{"task": 3, "response": "x"}', ":1: 'task' must be a string"),
        ('{"task": "math", "response": "x", "prompt": ["a"], "answer": "1"}', ":1: 'prompt' must be a string"),
        ('["task", "math"]', ":1: a row must be a JSON object"),
        ('{"task": "math", "response": "x"}', ":1: math: fields['answer'] is missing"),
        ('{"task": "code", "response": "x", "tests": [1, 2]}', ":1: code: fields['tests'][0]"),
        ('{"task": "arithmetic", "response": "x", "answer": 1.5}', ":1: arithmetic: fields['answer'] must be an int"),
        ('{"task": "chess", "response": "x"}', ":1: unknown task(s) 'chess'"),
        # Deeper than Python's recursion limit: json raises RecursionError, which used to crash the CLI.
        ('{"task": "math", "response": "x", "answer": ' + "[" * 5000 + "]" * 5000 + "}",
         ":1: invalid JSON (nested too deeply to read)"),
        ('{"task": "code", "response": "x", "tests": "' + "[" * 5000 + "]" * 5000 + '"}',
         ":1: code: fields['tests'] is a string but not JSON (nested too deeply to read)"),
    ],
)
def test_cli_malformed_rows(tmp_path, capsys, row, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(row + "\n")
    assert main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert f"{path}{message}" in err


def test_cli_missing_file_and_bad_verifiers(tmp_path, capsys):
    assert main([str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: cannot read" in capsys.readouterr().err
    path = tmp_path / "rows.jsonl"
    path.write_text('{"task": "math", "response": "x", "answer": "1"}\n')
    assert main([str(path), "--verifiers", '{"code": {"bogus": 1}}']) == 2
    assert "verifiers.code.bogus: unknown option" in capsys.readouterr().err


def test_cli_custom_task_via_verifiers_file(tmp_path, capsys):
    spec = tmp_path / "verifiers.yaml"
    spec.write_text("echo:\n  _target_: rewards_custom_verifiers.keyword_match\n  in_process: true\n")
    path = tmp_path / "rows.jsonl"
    path.write_text('{"task": "echo", "response": "a cat", "answer": "cat"}\n')
    assert main([str(path), "--verifiers", str(spec)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0]) == {"row": 1, "task": "echo", "score": 1.0}


def test_cli_sandbox_info(capsys):
    assert main(["--sandbox-info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["layers"]) >= {"uid", "namespaces", "landlock", "seccomp"}
    assert info["python"]


def test_cli_sandbox_selftest(capsys):
    assert main(["--sandbox-selftest"]) == 0
    report = json.loads(capsys.readouterr().out)
    attacks = report["attacks"]
    assert set(attacks.values()) <= {"contained", "NOT contained"}
    # rlimits, the output cap and the process sweep hold on every Linux machine
    for name in ("memory_over_limit", "fork_bomb", "setsid_daemon", "huge_output"):
        assert attacks[name] == "contained", name
    layers = report["info"]["layers"]
    if layers["seccomp"] or layers["namespaces"]:
        assert attacks["tcp_connect_to_host"] == "contained"
    if layers["landlock"]:
        assert all(v == "contained" for v in attacks.values()), attacks


def test_cli_empty_file_exits_2_like_the_trainer(tmp_path, capsys):
    for text in ("", "\n\n"):  # nothing, or only blank lines
        path = tmp_path / "rows.jsonl"
        path.write_text(text)
        assert main([str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.strip() == f"input error: {path}: no rows"
