"""Monte-Carlo step labels beside implicit PRMs on the same responses (:mod:`prm_rl.evaluation.monte_carlo`):
``python -m prm_rl.cli.mc_values --policy DIR [--prm-runs RUN ...] [--rollouts K] [--out F.json]``.

Prints the JSON report; a missing model directory or a ``--prm-runs`` directory that is no finished
``launch/train_prm.py`` run is one line and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from prm_rl.cli import add_placement_arguments, print_report
from prm_rl.config import PrmEvalSection, RolloutSection
from prm_rl.errors import UsageError, exit_on_usage_error
from prm_rl.models.loading import check_checkpoint

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed (imported by the stages) prints a notice on stdout
    from prm_rl.evaluation import monte_carlo


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="prm-rl mc-values", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the model whose responses are labelled and completed")
    parser.add_argument("--prm-runs", type=Path, nargs="*", default=[], help="launch/train_prm.py runs to compare")
    parser.add_argument("--num-prompts", type=int, default=64, help="held-out prompts")
    parser.add_argument("--n", type=int, default=8, help="responses sampled per prompt")
    parser.add_argument("--rollouts", type=int, default=8, help="K: completions per step prefix")
    parser.add_argument("--seed", type=int, default=PrmEvalSection.seed, help="sampling seed")
    parser.add_argument("--temperature", type=float, default=RolloutSection.temperature, help="sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=RolloutSection.max_new_tokens, help="response cap")
    parser.add_argument("--batch-size", type=int, default=1024, help="completions per generate call")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here (also printed)")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)

    with exit_on_usage_error():  # before anything loads: a bad path is one line, not a traceback
        check_checkpoint("--policy", args.policy, tokenizer=True)
        for run in args.prm_runs:
            if not (run / "summary.json").is_file():
                raise UsageError(f"--prm-runs {run}: no summary.json (not a finished launch/train_prm.py run)")
    report = monte_carlo.monte_carlo_report(args.policy, args.prm_runs, num_prompts=args.num_prompts, n=args.n,
                                            rollouts=args.rollouts, seed=args.seed, temperature=args.temperature,
                                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                            device=args.device, dtype=args.dtype)
    print_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
