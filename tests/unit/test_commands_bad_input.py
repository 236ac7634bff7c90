"""Every command's bad input is one line on stderr and exit 2, before any model loads."""
from __future__ import annotations

import pytest

from prm_rl.cli import best_of_n, estimate, eval_prm, mc_values, prm_score
from prm_rl.data import arithmetic
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model


def one_line_exit(capsys, run) -> str:
    try:
        code = run()
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command, argv, says", [
    (mc_values.main, ["--policy", "/nope"], "--policy=/nope: no such directory"),
    (best_of_n.main, ["--policy", "/nope", "--prm", "/nope", "--ref", "/nope"], "--policy=/nope: no such directory"),
    (estimate.main, ["+recipe=math_ppo", "rollout.nope=1"], "rollout.nope"),
    (eval_prm.main, ["/nope"], "/nope/config.yaml: not found"),
    (prm_score.main, ["/nope.jsonl", "--prm", "/nope", "--ref", "/nope"], "/nope.jsonl"),
])
def test_a_bad_argument_is_one_line_and_exit_2(capsys, command, argv, says):
    assert says in one_line_exit(capsys, lambda: command(argv))


def test_a_prm_run_without_a_summary_is_named(capsys, tmp_path):
    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    model = build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                             max_positions=32), tokenizer, seed=0)
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    capsys.readouterr()  # the save's progress bar
    argv = ["--policy", str(tmp_path / "policy"), "--prm-runs", str(tmp_path / "run")]
    assert one_line_exit(capsys, lambda: mc_values.main(argv)) == (
        f"error: --prm-runs {tmp_path / 'run'}: no summary.json (not a finished launch/train_prm.py run)")
