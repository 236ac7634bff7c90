"""JSON text from users' files, read so that every failure is a ``ValueError`` the caller can name a row in."""
from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    """``json.loads``, except that nesting deeper than Python's recursion limit (which ``json`` reports as a
    ``RecursionError``, a crash) is a ``ValueError`` like any other malformed text."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def problem(err: ValueError) -> str:
    """What is wrong, for a message that already names the file and row."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at column {err.colno}"
    return str(err)
