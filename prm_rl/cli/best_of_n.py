"""Best-of-N with an implicit PRM on the built-in task's held-out prompts (:mod:`prm_rl.evaluation.best_of_n`):
``python -m prm_rl.cli.best_of_n --policy DIR --prm DIR --ref DIR [--out F.json] [--plot F.png]``.

Prints the JSON report (pass@N and every selection method at N = 1, 2, 4, ... up to ``--n``, what each read-out's
top pick looks like); a missing model directory is one line and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from prm_rl.cli import add_placement_arguments, print_report
from prm_rl.config import PrmEvalSection, PrmSection, RolloutSection, TaskSection
from prm_rl.data.prompts import BUILTIN_TASKS
from prm_rl.errors import exit_on_usage_error
from prm_rl.models.loading import check_checkpoint

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed (imported by the stages) prints a notice on stdout
    from prm_rl.evaluation import best_of_n


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="prm-rl best-of-n", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the model whose responses are chosen from")
    parser.add_argument("--prm", required=True, help="the implicit PRM's checkpoint directory")
    parser.add_argument("--ref", required=True, help="its reference model (the SFT model of the run)")
    parser.add_argument("--task", choices=tuple(BUILTIN_TASKS), default=TaskSection.name, help="built-in task")
    parser.add_argument("--num-prompts", type=int, default=PrmEvalSection.num_prompts, help="held-out prompts")
    parser.add_argument("--n", type=int, default=16, help="responses sampled per prompt (the largest N)")
    parser.add_argument("--draws", type=int, default=64, help="random N-subsets per prompt and N")
    parser.add_argument("--seed", type=int, default=PrmEvalSection.seed, help="sampling and subset seed")
    parser.add_argument("--temperature", type=float, default=RolloutSection.temperature, help="sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=RolloutSection.max_new_tokens, help="response cap")
    parser.add_argument("--beta", type=float, default=PrmSection.beta, help="log-ratio scale (prm.beta)")
    parser.add_argument("--vote-by", choices=tuple(best_of_n.READOUTS), default="prm_min",
                        help="read-out whose sigmoid weighs a response in PRM-weighted voting")
    parser.add_argument("--responses", type=Path, default=None,
                        help="JSONL of every response: text, correctness, steps, tokens, step rewards, scores")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here (also printed)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of accuracy against N")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)

    with exit_on_usage_error():  # before anything loads: a bad path is one line, not a traceback
        check_checkpoint("--policy", args.policy, tokenizer=True)
        check_checkpoint("--prm", args.prm, tokenizer=False)
        check_checkpoint("--ref", args.ref, tokenizer=False)
    report = best_of_n.best_of_n_report(args.policy, args.prm, args.ref, task=args.task, num_prompts=args.num_prompts,
                                        n=args.n, draws=args.draws, seed=args.seed, temperature=args.temperature,
                                        max_new_tokens=args.max_new_tokens, beta=args.beta, vote_by=args.vote_by,
                                        device=args.device, dtype=args.dtype, keep_responses=args.responses is not None)
    if args.responses:
        best_of_n.write_responses(args.responses, report.pop("responses"))
    if args.plot:
        best_of_n.plot(report, args.plot)
    print_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
