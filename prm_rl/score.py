"""Score responses with an implicit PRM: ``python -m prm_rl.score --prm DIR --ref DIR IN.jsonl [--out OUT.jsonl]``.

Each non-blank input line is ``{"prompt": "...", "response": "...", ...}``: the prompt is the exact text the model
saw (chat template already applied, as the trainer renders it) and the response is scored as generated, ending
with the EOS token. Each output line is the input row plus

- ``score``: the response score, its step rewards aggregated by ``--aggregate`` (``min``, the Implicit PRM
  paper's; ``mean``; ``sum`` = q_K, the whole response's implicit reward);
- ``step_rewards``: q_k - q_{k-1} per step, a step closed by a token containing ``--delimiter``;
- ``token_rewards`` (with ``--tokens``): beta * log(pi_prm / pi_ref) of each response token, EOS last.

``--prm`` is a PRM checkpoint (a run's ``prm/`` or a checkpoint's), ``--ref`` its reference model (the SFT model
the run started from, ``prm.reference=sft``). A malformed row or a missing model is one line on stderr, exit 2.
The math is :func:`prm_rl.core.step_rewards` and :func:`prm_rl.core.response_score`, as in training.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import transformers

from prm_rl import core, json_text
from prm_rl.config import ModelSection, PrmSection, RewardSection
from prm_rl.data.sample import text_rollout
from prm_rl.errors import EXIT_USAGE, InputError, UsageError
from prm_rl.models.loading import check_model_source, load_causal_lm, load_tokenizer

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed (imported by the stages) prints a notice on stdout
    from prm_rl.trainer import stages


def read_rows(path: Path) -> list[dict]:
    try:
        objects = json_text.read_objects(path)
    except ValueError as e:
        raise InputError(str(e)) from None
    rows = []
    for lineno, row in objects:
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str):
                raise InputError(f"{path}:{lineno}: '{key}' must be a string")
        rows.append(row)
    return rows


def score_rows(rows: list[dict], prm, ref, tokenizer, *, beta: float, delimiter: str, aggregate: str,
               batch_size: int, tokens: bool) -> list[dict]:
    """The input rows with ``score``, ``step_rewards`` (and ``token_rewards``) added (module docstring)."""

    step_end_table = stages.step_end_table(tokenizer, delimiter)
    out = []
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        batch = text_rollout(tokenizer, [r["prompt"] for r in part], [r["response"] for r in part])
        response_mask = batch.response_mask
        log_ratio = core.implicit_log_ratio(stages.logprob_stage(prm, batch, batch_size),
                                            stages.logprob_stage(ref, batch, batch_size), response_mask)
        rewards, valid, _ = core.step_rewards(log_ratio, response_mask, stages.step_end_mask(step_end_table, batch),
                                              beta)
        scores = core.response_score(rewards, valid, aggregate)
        for i, row in enumerate(part):
            scored = {**row, "score": float(scores[i]), "step_rewards": rewards[i][valid[i]].tolist()}
            if tokens:
                scored["token_rewards"] = (beta * log_ratio[i][response_mask[i].bool()]).tolist()
            out.append(scored)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prm_rl.score", description=__doc__.split("\n\n")[0])
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
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.file)
        check_model_source(ModelSection(path=args.prm))
        check_model_source(ModelSection(path=args.ref, tokenizer_path=args.prm))
    except UsageError as err:
        print(err.one_line(), file=sys.stderr)
        return EXIT_USAGE
    transformers.utils.logging.disable_progress_bar()  # stdout is the output; keep stderr to errors
    tokenizer = load_tokenizer(args.prm)
    prm, ref = load_causal_lm(args.prm, "float32").eval(), load_causal_lm(args.ref, "float32").eval()
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
