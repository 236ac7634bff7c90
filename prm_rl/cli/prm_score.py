"""Score responses with an implicit PRM (:mod:`prm_rl.evaluation.prm_scoring`):
``python -m prm_rl.cli.prm_score --prm DIR --ref DIR IN.jsonl [--out OUT.jsonl]``.

Each non-blank input line is ``{"prompt": "...", "response": "...", ...}``; each output line is the row plus its
``score``, ``step_rewards`` (and ``token_rewards`` with ``--tokens``). ``--prm`` is a PRM checkpoint (a run's
``prm/`` or a checkpoint's), ``--ref`` its reference model (the SFT model the run started from,
``prm.reference=sft``). A malformed row or a missing model is one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import transformers

from prm_rl import core, json_text
from prm_rl.cli import add_placement_arguments
from prm_rl.config import ModelSection, PrmSection, RewardSection
from prm_rl.errors import EXIT_USAGE, UsageError
from prm_rl.models.loading import check_model_source, load_causal_lm, load_tokenizer

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed (imported by the stages) prints a notice on stdout
    from prm_rl.evaluation.prm_scoring import score_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prm-rl prm-score", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="JSONL rows with 'prompt' and 'response'")
    parser.add_argument("--prm", required=True, help="the implicit PRM's checkpoint directory")
    parser.add_argument("--ref", required=True, help="its reference model's checkpoint directory")
    parser.add_argument("--beta", type=float, default=PrmSection.beta, help="log-ratio scale (prm.beta)")
    parser.add_argument("--delimiter", default=RewardSection.step_delimiter,
                        help="text that closes a step (reward.step_delimiter)")
    parser.add_argument("--aggregate", choices=core.SCORE_AGGREGATIONS, default="min", help="step rewards -> score")
    parser.add_argument("--batch-size", type=int, default=16, help="responses per forward pass")
    parser.add_argument("--tokens", action="store_true", help="also write each token's reward")
    parser.add_argument("--out", type=Path, default=None, help="output JSONL (default: stdout)")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    try:
        rows = [row for _, row in json_text.read_rows(args.file, required=("prompt", "response"))]
        check_model_source(ModelSection(path=args.prm))
        check_model_source(ModelSection(path=args.ref, tokenizer_path=args.prm))
    except UsageError as err:
        print(err.one_line(), file=sys.stderr)
        return EXIT_USAGE
    transformers.utils.logging.disable_progress_bar()  # stdout is the output; keep stderr to errors
    tokenizer = load_tokenizer(args.prm)
    prm, ref = (load_causal_lm(path, args.dtype, device=args.device).eval() for path in (args.prm, args.ref))
    scored = score_rows(rows, prm, ref, tokenizer, beta=args.beta, delimiter=args.delimiter,
                        aggregate=args.aggregate, batch_size=args.batch_size, tokens=args.tokens)
    text = "".join(json.dumps(row) + "\n" for row in scored)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
