"""Per-rank memory of a PRIME run, from its config, before anything loads (:mod:`prm_rl.trainer.memory`):

    python -m prm_rl.cli.estimate +recipe=math_ppo [key=value ...] [--world-size N] [--gpu-gib 80] [--json]
    prm-rl estimate --config-dir my_recipes +recipe=my_task [...]     # installed: your recipes, any directory

The config is composed as the trainers compose it (prm_rl/recipes/, and ``--config-dir DIR``'s recipes). Prints a
table in GiB per model and rank (or ``--json`` bytes); exit 1 with one line when ``--gpu-gib`` is given and the run
does not fit it, exit 2 with one line on a bad config. With ``rollout.engine=vllm`` ``--gpu-gib`` is required: vLLM
takes a share of it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from prm_rl.cli.startup import compose
from prm_rl.errors import EXIT_USAGE, ConfigError, UsageError
from prm_rl.trainer.memory import GIB, as_dict, estimate, fit_message, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prm-rl estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="+recipe=NAME and key=value overrides, as launch/train.py takes")
    parser.add_argument("--world-size", type=int, default=1, help="ranks (GPUs) the run is launched on")
    parser.add_argument("--config-dir", type=Path, help="your recipe folder (DIR/recipe/NAME.yaml), as for the trainers")
    parser.add_argument("--gpu-gib", type=float, help="device memory of one GPU in GiB: exit 1 if the peak exceeds it")
    parser.add_argument("--json", action="store_true", help="print the numbers (bytes) as JSON")
    args = parser.parse_args(argv)
    if args.world_size < 1:
        parser.error("--world-size must be >= 1")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # "no recipe given" notes go to stderr, keeping --json clean
            cfg = compose(args.overrides, args.world_size, config_dir=args.config_dir)
        gpu_bytes = None if args.gpu_gib is None else int(args.gpu_gib * GIB)
        if cfg.rollout.engine == "vllm" and gpu_bytes is None:
            raise ConfigError("rollout.engine=vllm: vLLM takes rollout.vllm.gpu_memory_utilization of a GPU's "
                              "memory: give --gpu-gib")
        est = estimate(cfg, args.world_size, gpu_bytes=gpu_bytes)
    except UsageError as err:
        print(err.one_line(), file=sys.stderr)
        return EXIT_USAGE
    warning = fit_message(est, gpu_bytes) if gpu_bytes is not None else None
    if args.json:
        print(json.dumps({**as_dict(est), "gpu_gib": args.gpu_gib, "fits": warning is None}, indent=1))
    else:
        print(table(est))
    if warning:
        print(warning, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
