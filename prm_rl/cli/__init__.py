"""The command-line tools, one module each, each a thin ``main`` over library code (``--help`` on any of them):

* ``main``: ``prm-rl COMMAND``, the installed console command that runs each of the others from any directory;
* ``train``: the trainers (``prm-rl train``/``train-prm``; in a checkout also ``deepspeed launch/train.py``,
  ``deepspeed launch/train_prm.py``: launch/ holds the two files DeepSpeed's launcher starts), around
  :mod:`~prm_rl.cli.startup`;
* ``estimate``: per-rank memory of a run, before anything loads;
* ``eval_prm``, ``best_of_n``, ``mc_values``: a PRM's held-out step metrics, its best-of-N selection, the
  Monte-Carlo step labels it competes with (:mod:`prm_rl.evaluation`);
* ``prm_score``: a PRM's scores of the responses in a JSONL file; ``verify``: the verifiers' scores of them.

A bad argument, path or input row is one line on stderr and exit 2 (:mod:`prm_rl.errors`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_placement_arguments(parser: argparse.ArgumentParser, dtype_of_run: bool = False) -> None:
    """``--device`` and ``--dtype`` of a command that loads models: the GPU in bfloat16 when there is one
    (``dtype_of_run``: the dtype defaults to the evaluated run's ``model.dtype`` instead)."""
    import torch  # here, not at the top: the trainers' command sets OMP_NUM_THREADS before torch first loads

    gpu = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if gpu else "cpu",
                        help="where the models compute (default: cuda when a GPU is there, else cpu)")
    if dtype_of_run:
        parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                            help="the models' weights and compute (default: the run's model.dtype)")
    else:
        parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16" if gpu else "float32",
                            help="the models' weights and compute (default: bfloat16 on a GPU, float32 on the CPU)")


def print_report(report: dict, out: Path | None) -> None:
    """A command's JSON report: printed, and written to ``out`` too when given."""
    text = json.dumps(report, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
