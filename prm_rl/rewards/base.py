"""Small shared pieces: the Verdict score type and helpers for one-line error text."""
from __future__ import annotations

import math
import numbers
from typing import Any

from prm_rl.errors import UsageError

__all__ = ["Verdict", "VerifierConfigError", "SandboxError", "one_line", "as_score"]


class Verdict(float):
    """A score in [0, 1] that also says why (``reason``), e.g. ``Verdict(0.0, "no \\\\boxed{} answer")``.

    It *is* a float, so a verifier returning a Verdict still satisfies "returns a float"; the Scorer keeps
    the reason for the CLI and for logs. Plain floats/bools/ints are accepted from verifiers as well.
    """

    reason: str | None

    def __new__(cls, score: float, reason: str | None = None) -> "Verdict":
        obj = super().__new__(cls, score)
        obj.reason = reason
        return obj

    def __reduce__(self):
        return (Verdict, (float(self), self.reason))

    def __repr__(self) -> str:
        return f"Verdict({float(self)!r}, {self.reason!r})"


class VerifierConfigError(UsageError):
    """Bad verifier configuration (unknown task, bad option, unimportable ``_target_``)."""

    label = "config error"


class SandboxError(RuntimeError):
    """The code sandbox itself could not run (not the program under test failing)."""


def one_line(text: Any, limit: int = 300) -> str:
    """Collapse whitespace to single spaces and cut to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def exc_reason(exc: BaseException) -> str:
    """``"ValueError: message"`` on one line."""
    msg = one_line(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def as_score(value: Any, real_valued: bool = False) -> tuple[float, str | None]:
    """Check a verifier's return value; returns (score, reason) or raises ValueError naming the problem.
    ``real_valued``: any finite float (a task with ``real_valued: true``), else a float in [0, 1]."""
    reason = getattr(value, "reason", None) if isinstance(value, Verdict) else None
    expected = "a finite float" if real_valued else "a float in [0, 1]"
    if isinstance(value, bool):
        return (1.0 if value else 0.0), reason
    if not isinstance(value, numbers.Real):
        raise ValueError(f"verifier returned {type(value).__name__}, expected {expected}")
    score = float(value)
    if not math.isfinite(score) or (not real_valued and (score < 0.0 or score > 1.0)):
        raise ValueError(f"verifier returned {score!r}, expected {expected}")
    return score, reason
