"""Evaluate an implicit PRM on held-out samples of a policy (:mod:`prm_rl.evaluation.saved_run`):
``python -m prm_rl.cli.eval_prm RUN_DIR``.

Reads the run's ``config.yaml`` for the task, tokenizer, reference and ``prm_eval.*`` settings; takes the
policy and PRM from the run's final export (``RUN_DIR/policy``, ``RUN_DIR/prm``), from a checkpoint
(``--checkpoint RUN_DIR/checkpoints/step_000040``), or from any Hugging Face directories (``--policy``,
``--prm``). Prints the metrics as JSON (keys: docs/prm_eval.md) and, with ``--out``, writes them there;
``--heatmaps FILE.png`` also draws a few held-out responses coloured by their token rewards (and
``FILE.html``, ``FILE.jsonl`` beside it). One process, no DeepSpeed. Exit 2 with one line on a bad argument.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prm_rl.cli import add_placement_arguments, print_report
from prm_rl.errors import exit_on_usage_error
from prm_rl.evaluation import saved_run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="prm-rl eval-prm", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (its config.yaml is used)")
    parser.add_argument("--checkpoint", help="a checkpoint directory of the run (default: the final export)")
    parser.add_argument("--policy", help="Hugging Face directory of the policy that samples the responses")
    parser.add_argument("--prm", help="Hugging Face directory of the PRM to evaluate")
    parser.add_argument("--num-prompts", type=int, help="override prm_eval.num_prompts")
    parser.add_argument("--samples", type=int, help="override prm_eval.samples_per_prompt")
    parser.add_argument("--seed", type=int, help="override prm_eval.seed")
    parser.add_argument("--out", type=Path, help="write the metrics JSON here")
    parser.add_argument("--heatmaps", type=Path,
                        help="draw prm_eval.table_rows responses into FILE.png (and FILE.html, FILE.jsonl)")
    add_placement_arguments(parser, dtype_of_run=True)
    args = parser.parse_args(argv)

    overrides = {key: value for key, value in (("num_prompts", args.num_prompts),
                                                ("samples_per_prompt", args.samples), ("seed", args.seed))
                 if value is not None}
    with exit_on_usage_error():  # a run directory, config, model path or held-out set that will not do: one line
        cfg = saved_run.run_config(args.run_dir, overrides)
        policy_dir, prm_dir = saved_run.model_dirs(args.run_dir, args.checkpoint, args.policy, args.prm)
        result = saved_run.evaluate_saved_prm(cfg, policy_dir, prm_dir, args.heatmaps, device=args.device,
                                              dtype=args.dtype)
    print_report(result, args.out)
    return result


if __name__ == "__main__":
    main()
