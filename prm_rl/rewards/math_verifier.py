"""The ``math`` verifier: the response's final answer against ``fields["answer"]``, decided by math-verify.

Equivalence is math-verify's (``parse`` then ``verify``, sympy underneath): ``1/2 == \\frac12 == 0.5``,
``\\dfrac``, ``\\left( \\right)``, ``2\\sqrt2 == \\sqrt8``, tuples, intervals, sets, ``x=5 == 5``, units in
``\\text{}``/``\\mathrm{}`` dropped, thousands separators. On top of it:

* a percentage may be written either way: when either side carries a ``%`` its value divided by 100 is
  tried as well, so gold ``50\\%`` accepts ``50\\%``, ``50`` and ``0.5``, and gold ``0.5`` accepts ``50\\%``;
* identical answer texts (ignoring spaces) match without parsing;
* ``fields["answer"]`` may be a list of accepted answers (any one matching is enough).

Time limits: math-verify 0.9 guards its own ``parse``/``verify`` with ``signal.alarm``, which only works in
the main thread and has one-second granularity, and it re-arms the alarm per expression. This module
therefore switches those timeouts off (``parsing_timeout=None`` / ``timeout_seconds=None``) and leaves the
limit to the caller: the Scorer runs it in a pool worker's main thread under one sub-second
``ITIMER_REAL`` for the whole sample, and kills the worker if a C-level computation (a huge integer power)
ignores that signal. Called directly, :func:`verify_math` has no time limit.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from prm_rl.rewards.base import Verdict
from prm_rl.answers import final_answer, last_boxed, strip_math_delimiters

__all__ = ["verify_math", "answers_match"]

MAX_ANSWER_CHARS = 1000  # longer "final answers" are not answers; never hand them to sympy

_mv = None


def _math_verify():
    global _mv
    if _mv is None:
        import math_verify  # imported lazily: ~0.3 s and only needed in pool workers

        # Its "timeout is disabled" warning is expected here: the Scorer provides the time limit.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        _mv = math_verify
    return _mv


_PERCENT_RE = re.compile(r"\\?%")


def _variants(text: str) -> list[str]:
    """The answer as written, plus its value / 100 when it carries a percent sign."""
    out = [text]
    if "%" in text:
        bare = _PERCENT_RE.sub("", text).strip()
        if bare:
            out.append(f"\\frac{{{bare}}}{{100}}")
    return out


def _parse(text: str):
    mv = _math_verify()
    return mv.parse(f"${text}$", parsing_timeout=None)


def _squash(text: str) -> str:
    return "".join(text.split())


def answers_match(gold: str, pred: str) -> bool:
    """math-verify equivalence of two answer texts (see module docstring for the extra rules)."""
    if _squash(gold) == _squash(pred) and _squash(gold):
        return True
    mv = _math_verify()
    gold_parsed = [_parse(g) for g in _variants(gold)]
    for p in _variants(pred):
        pp = _parse(p)
        if not pp:
            continue
        for gp in gold_parsed:
            if gp and mv.verify(gp, pp, timeout_seconds=None):
                return True
    return False


def _gold_texts(fields: dict[str, Any]) -> list[str]:
    if "answer" not in fields:
        raise ValueError("math: fields['answer'] is missing")
    raw = fields["answer"]
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    if not items:
        raise ValueError("math: fields['answer'] is an empty list")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ValueError(f"math: fields['answer'] must be a str or number (or a list of them), got {type(item).__name__}")
        text = str(item)
        boxed = last_boxed(text)
        text = strip_math_delimiters(boxed if boxed is not None else text)
        if not text:
            raise ValueError("math: fields['answer'] is empty")
        out.append(text)
    return out


def verify_math(prompt: str, response: str, fields: dict[str, Any], *, fallbacks: bool = True) -> float:
    """1.0 when the response's final answer equals ``fields["answer"]`` (math-verify), else 0.0.

    The final answer is :func:`prm_rl.rewards.extract.final_answer` of the response (the last box, then the
    documented fallbacks); with ``fallbacks=False`` only a ``\\boxed{}`` answer counts.
    """
    golds = _gold_texts(fields)
    pred = final_answer(response) if fallbacks else last_boxed(response)
    if pred is None:
        return Verdict(0.0, "no final answer found" if fallbacks else "no \\boxed{} answer")
    pred = strip_math_delimiters(pred)
    if not pred:
        return Verdict(0.0, "empty final answer")
    if len(pred) > MAX_ANSWER_CHARS:
        return Verdict(0.0, f"final answer longer than {MAX_ANSWER_CHARS} characters")
    for gold in golds:
        if answers_match(gold, pred):
            return Verdict(1.0)
    return Verdict(0.0, "wrong answer")


def _warmup(**_options: Any) -> None:
    """Import math-verify and sympy's parser before the first sample's clock starts (pool workers)."""
    _parse("\\frac{1}{2}")


verify_math.prm_rl_warmup = _warmup  # type: ignore[attr-defined]
