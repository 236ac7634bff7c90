"""Outcome verifiers: the only ground truth of a PRIME run (see docs/verifiers.md).

Entry point for the trainer and the CLI::

    from prm_rl.rewards import build_scorer
    with build_scorer({"code": {"timeout_s": 5, "memory_mb": 512}}) as scorer:
        result = scorer.score(samples, responses)   # result.scores, result.failures, result.reasons

Built-in verifiers are plain functions ``(prompt, response, fields) -> float in [0, 1]``:
:func:`verify_arithmetic`, :func:`verify_math`, :func:`verify_code`. This package imports neither torch nor
math-verify at import time (math-verify loads in the pool workers on first use).
"""
from prm_rl.rewards.arithmetic import verify_arithmetic
from prm_rl.rewards.base import SandboxError, Verdict, VerifierConfigError
from prm_rl.answers import final_answer, last_boxed
from prm_rl.rewards.scorer import BUILTIN_TASKS, Scorer, ScoreResult, build_scorer


def verify_math(prompt, response, fields, **options):
    """The ``math`` verifier (lazy wrapper around :func:`prm_rl.rewards.math_verifier.verify_math`)."""
    from prm_rl.rewards.math_verifier import verify_math as _verify_math

    return _verify_math(prompt, response, fields, **options)


def verify_code(prompt, response, fields, **options):
    """The ``code`` verifier (wrapper around :func:`prm_rl.rewards.code_verifier.verify_code`)."""
    from prm_rl.rewards.code_verifier import verify_code as _verify_code

    return _verify_code(prompt, response, fields, **options)


__all__ = [
    "BUILTIN_TASKS",
    "SandboxError",
    "ScoreResult",
    "Scorer",
    "Verdict",
    "VerifierConfigError",
    "build_scorer",
    "final_answer",
    "last_boxed",
    "verify_arithmetic",
    "verify_code",
    "verify_math",
]
