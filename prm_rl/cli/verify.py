"""Score a JSONL file of responses with the training verifiers: ``python -m prm_rl.cli.verify FILE.jsonl``.

Each non-blank line is one row::

    {"task": "math", "response": "... \\\\boxed{1/2}", "answer": "0.5"}
    {"task": "code", "response": "```python\\n...\\n```", "tests": ["assert f(1) == 2"]}
    {"task": "arithmetic", "prompt": "3+4=?", "response": "\\\\boxed{7}", "answer": 7}

``task`` and ``response`` are required strings, ``prompt`` an optional string; every other key is passed to
the verifier as a field. Output: one JSON line per row on stdout, ``{"row": LINE_NUMBER, "task": ...,
"score": ...}`` plus ``"reason"`` when the score is 0, then a summary line ``{"summary": true, "rows": N,
"mean_score": ..., "failures": {KIND: COUNT}, "seconds": ...}``. Scoring goes through exactly the
:class:`prm_rl.rewards.Scorer` the trainer uses. A malformed row (bad JSON, missing or mistyped
``task``/``response``/``prompt``, fields the built-in verifier cannot use, an unknown task) stops the run
before scoring with one line ``FILE:ROW: problem`` on stderr and exit code 2.

Options: ``--workers N`` (pool size), ``--timeout S`` (default per-sample limit), ``--verifiers SPEC``
(JSON text or a .json/.yaml file mapping task -> options, as in the trainer config), ``--sandbox-info``
(print what the code sandbox gets on this machine and exit), ``--sandbox-selftest`` (run hostile programs
in it and report what is contained here).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from prm_rl import json_text
from prm_rl.data.sample import Sample
from prm_rl.errors import EXIT_USAGE, InputError


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


def _load_verifiers(spec: str | None) -> dict | None:
    if spec is None:
        return None
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise InputError(f"{spec}: cannot read ({e.strerror})") from None
        if spec.endswith((".yaml", ".yml")):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise InputError(f"{spec}: invalid YAML ({' '.join(str(e).split())})") from None
        else:
            try:
                data = json_text.loads(text)
            except ValueError as e:
                raise InputError(f"{spec}: invalid JSON ({e})") from None
    else:
        try:
            data = json_text.loads(spec)
        except ValueError as e:
            raise InputError(f"--verifiers: neither a file nor valid JSON ({e})") from None
    if data is not None and not isinstance(data, dict):
        raise InputError(f"--verifiers: expected a mapping of task name -> options, got {type(data).__name__}")
    return data


def read_rows(path: str, scorer: Any) -> list[tuple[int, Sample, str]]:
    """Parse and validate every row; raises InputError naming ``path:row`` on the first problem."""
    rows = []
    for lineno, obj in json_text.read_rows(path, required=("task", "response"), optional=("prompt",)):
        where = f"{path}:{lineno}"
        if not obj["task"]:
            raise InputError(f"{where}: 'task' is empty")
        fields = {k: v for k, v in obj.items() if k not in ("task", "response", "prompt")}
        try:
            scorer.check_fields(obj["task"], fields)
        except ValueError as e:
            raise InputError(f"{where}: {' '.join(str(e).split())}") from None
        rows.append((lineno, Sample(prompt=obj.get("prompt", ""), task=obj["task"], fields=fields), obj["response"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prm-rl verify", description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", help="JSONL file of rows to score")
    parser.add_argument("--workers", type=_positive_int, default=2, help="verifier worker processes (default 2)")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, help="per-sample time limit in seconds (default 10)")
    parser.add_argument("--verifiers", default=None, help="task -> options, as JSON text or a .json/.yaml file")
    parser.add_argument("--sandbox-info", action="store_true", help="print the code sandbox's layers on this machine")
    parser.add_argument("--sandbox-selftest", action="store_true", help="attack the code sandbox and report what is contained")
    args = parser.parse_args(argv)

    from prm_rl.rewards import VerifierConfigError, build_scorer

    if args.sandbox_info:
        from prm_rl.rewards.sandbox import sandbox_info

        print(json.dumps(sandbox_info()))
        return 0
    if args.sandbox_selftest:
        from prm_rl.rewards.selftest import sandbox_selftest

        print(json.dumps(sandbox_selftest()))
        return 0
    if args.file is None:
        parser.error("the JSONL file is required")
    try:
        scorer = build_scorer(_load_verifiers(args.verifiers), num_workers=args.workers, timeout_s=args.timeout)
    except (InputError, VerifierConfigError) as e:
        print(e.one_line(), file=sys.stderr)
        return EXIT_USAGE
    with scorer:
        try:
            rows = read_rows(args.file, scorer)
        except InputError as e:
            print(e.one_line(), file=sys.stderr)
            return EXIT_USAGE
        result = scorer.score([s for _, s, _ in rows], [r for _, _, r in rows])
    for (lineno, sample, _), score, reason in zip(rows, result.scores, result.reasons):
        line: dict[str, Any] = {"row": lineno, "task": sample.task, "score": score}
        if score == 0:
            line["reason"] = reason or "score 0"
        print(json.dumps(line))
    summary = {
        "summary": True,
        "rows": len(rows),
        "mean_score": result.mean,
        "failures": result.failure_counts(),
        "seconds": round(result.seconds, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
