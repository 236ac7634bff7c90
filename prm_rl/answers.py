"""Pulling the final answer out of a model response.

Two functions, both pure and fast (they run on every response of every training step):

* :func:`last_boxed` returns the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces
  balance, or ``None``.
* :func:`final_answer` returns the boxed content when there is one and otherwise falls back, in this
  order, to

  1. the last line that starts with ``####`` (GSM8K style: ``#### 72``);
  2. the last "answer is X" / "answer: X" phrase (``The final answer is $\\frac{1}{2}$.``): the text after
     it up to the end of its line, without a trailing full stop, ``$`` delimiters or ``**`` bold marks;
  3. the last number in the text (``-3``, ``2.5``, ``1,000``, ``3/4``), thousands separators removed.

  ``None`` when none of these finds anything.

Box rules: ``\\boxed{...}``, ``\\boxed {...}`` and ``\\fbox{...}`` count, and so does the brace-less
``\\boxed 5`` (the next whitespace-delimited token). Escaped braces ``\\{`` and ``\\}`` inside a box do not
count as structure, so ``\\boxed{\\{1,2\\}}`` gives ``\\{1,2\\}``. "Last" means the box that *starts* last,
so a nested ``\\boxed{\\boxed{5}}`` gives ``5``. A box whose braces never close (a truncated response) is
skipped and the previous complete box is used.
"""
from __future__ import annotations

import re

__all__ = ["last_boxed", "final_answer", "strip_math_delimiters"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH_RE = re.compile(r"^[ \t]*####[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_ANSWER_RE = re.compile(r"answer(?:[ \t]|\*)*(?:is\b|:)(?:[ \t]|\*|:)*([^\n]+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])-?\.\d+")


def _balanced_group(text: str, open_pos: int) -> str | None:
    """Content of the ``{...}`` group whose ``{`` sits at ``open_pos``; ``None`` if it never closes."""
    depth = 0
    i, n = open_pos, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # an escaped character (\{, \}, \\) is never structure
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, stripped; else ``None``."""
    if not isinstance(text, str):
        raise TypeError(f"last_boxed expects str, got {type(text).__name__}")
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for pos in reversed(starts):
        j = pos
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            content = _balanced_group(text, j)
            if content is not None:
                return content.strip()
        elif j > pos and j < len(text):  # "\boxed 5": one whitespace-delimited token
            m = re.match(r"[^\s$]+", text[j:])
            if m:
                return m.group(0)
    return None


def strip_math_delimiters(s: str) -> str:
    """Remove surrounding ``$``/``$$``, ``\\(...\\)``, ``\\[...\\]``, ``**`` and a trailing full stop."""
    s = s.strip()
    for _ in range(3):
        before = s
        if s.endswith("."):
            s = s[:-1].rstrip()
        s = s.strip("*").strip()
        for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a) : len(s) - len(b)].strip()
        if s == before:
            break
    return s


def final_answer(text: str) -> str | None:
    """The response's final answer as text (see the module docstring for the order of fallbacks)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _HASH_RE.findall(text)
    if hashes:
        ans = strip_math_delimiters(hashes[-1])
        if ans:
            return ans.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", ans) else ans
    phrases = _ANSWER_RE.findall(text)
    if phrases:
        ans = strip_math_delimiters(phrases[-1])
        if ans:
            return ans
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None
