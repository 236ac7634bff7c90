"""The built-in toy task's verifier: exact integer match of the last ``\\boxed{}``.

Runs in the trainer's own thread (no pool, no timeout needed: one reverse scan of the response and one
small integer comparison), because it is on the hot path of every training step of the default job.
"""
from __future__ import annotations

import re
from typing import Any

from prm_rl.rewards.base import Verdict
from prm_rl.answers import last_boxed

__all__ = ["verify_arithmetic"]

_INT_RE = re.compile(r"[+-]?\d+")
_MAX_DIGITS = 4000  # below Python's int-from-str limit; longer boxed "numbers" are simply wrong


def _canonical_int(text: str) -> int | None:
    s = text.strip()
    if len(s) > _MAX_DIGITS + 1 or not _INT_RE.fullmatch(s):
        return None
    return int(s)


def _gold(fields: dict[str, Any]) -> int:
    if "answer" not in fields:
        raise ValueError("arithmetic: fields['answer'] is missing")
    gold = fields["answer"]
    if isinstance(gold, bool) or not isinstance(gold, (int, str)):
        raise ValueError(f"arithmetic: fields['answer'] must be an int or its string, got {type(gold).__name__}")
    if isinstance(gold, int):
        return gold
    value = _canonical_int(gold)
    if value is None:
        raise ValueError(f"arithmetic: fields['answer']={gold!r} is not an integer")
    return value


def verify_arithmetic(prompt: str, response: str, fields: dict[str, Any]) -> float:
    """1.0 when the last ``\\boxed{...}`` holds exactly the integer ``fields["answer"]``, else 0.0.

    The box content may carry surrounding spaces, a sign and leading zeros (``\\boxed{ 0197 }`` equals 197);
    anything else (``197.0``, ``1,97``, ``x=197``, no box at all) scores 0.
    """
    gold = _gold(fields)
    boxed = last_boxed(response)
    if boxed is None:
        return Verdict(0.0, "no \\boxed{} answer")
    value = _canonical_int(boxed)
    if value is None:
        return Verdict(0.0, "boxed answer is not an integer")
    return Verdict(1.0) if value == gold else Verdict(0.0, "wrong answer")
