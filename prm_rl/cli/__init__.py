"""The command-line tools, one module each, each a thin ``main`` over library code (``--help`` on any of them):

* ``train``, ``train_prm``: the trainers (``deepspeed launch/train.py``, ``deepspeed launch/train_prm.py``:
  launch/ holds the two files DeepSpeed's launcher starts), around :mod:`~prm_rl.cli.startup`;
* ``estimate``: per-rank memory of a run, before anything loads;
* ``eval_prm``, ``best_of_n``, ``mc_values``: a PRM's held-out step metrics, its best-of-N selection, the
  Monte-Carlo step labels it competes with (:mod:`prm_rl.evaluation`);
* ``prm_score``: a PRM's scores of the responses in a JSONL file; ``verify``: the verifiers' scores of them.

A bad argument, path or input row is one line on stderr and exit 2 (:mod:`prm_rl.errors`).
"""
from __future__ import annotations

import json
from pathlib import Path


def print_report(report: dict, out: Path | None) -> None:
    """A command's JSON report: printed, and written to ``out`` too when given."""
    text = json.dumps(report, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
