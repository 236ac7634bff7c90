"""``prm-rl COMMAND [ARGS ...]``: every command of prm_rl under one name, the console script the package installs
(pyproject.toml), so that an installed prm_rl runs from any directory:

    prm-rl train --config-dir my_recipes +recipe=my_task trainer.max_steps=20
    deepspeed --num_gpus 2 --module prm_rl.cli.main train +recipe=math_ppo     # under DeepSpeed's launcher
    prm-rl verify --help

``python -m prm_rl.cli.main COMMAND`` is the same. Each command is its module's own ``main`` (``prm-rl verify`` is
``python -m prm_rl.cli.verify``); ``train`` and ``train-prm`` are the trainers of ``launch/train.py`` and
``launch/train_prm.py``, Hydra overrides and all.
"""
from __future__ import annotations

import importlib
import sys

from prm_rl import CONSOLE_COMMAND as PROG
from prm_rl.cli.startup import strip_launcher_args
from prm_rl.errors import EXIT_USAGE

COMMANDS = {  # name: (module, what it does)
    "train": ("prm_rl.cli.train", "train a policy: PRIME, or RLOO/GRPO by algorithm.advantage (Hydra overrides)"),
    "train-prm": ("prm_rl.cli.train", "train an implicit PRM offline (docs/prm_training.md)"),
    "estimate": ("prm_rl.cli.estimate", "per-rank memory of a run, before anything loads"),
    "eval-prm": ("prm_rl.cli.eval_prm", "a finished run's PRM on held-out step metrics"),
    "best-of-n": ("prm_rl.cli.best_of_n", "best-of-N selection with a PRM, against majority voting"),
    "mc-values": ("prm_rl.cli.mc_values", "Monte-Carlo step labels, against finished PRM runs"),
    "prm-score": ("prm_rl.cli.prm_score", "a PRM's scores of the responses in a JSONL file"),
    "verify": ("prm_rl.cli.verify", "the verifiers' scores of the responses in a JSONL file"),
}
TRAINERS = {"train": "prime", "train-prm": "prm"}  # prm_rl.cli.train.main's trainer for each


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS ...]   ({PROG} COMMAND --help: its arguments)", "", "commands:"]
    return "\n".join([*lines, *(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())])


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv[0]`` (default: ``sys.argv[1:]``) on the rest; returns its exit status."""
    args = strip_launcher_args(sys.argv[1:] if argv is None else argv)  # deepspeed puts --local_rank first
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: {PROG} {name}: no such command (one of {', '.join(COMMANDS)})", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name][0])  # only now: the trainers set up threads before torch loads
    if name in TRAINERS:
        sys.argv = [f"{PROG} {name}", *rest]  # Hydra reads its overrides from sys.argv; the run records argv[0]
        module.main(TRAINERS[name], command=["-m", "prm_rl.cli.main", name])  # each CPU rank: this command again
        return 0
    code = module.main(rest)
    return code if isinstance(code, int) else 0  # the report commands return their report


if __name__ == "__main__":
    sys.exit(main())
