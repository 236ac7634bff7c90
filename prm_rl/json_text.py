"""JSON text from users' files, read so that every failure is a ``ValueError`` the caller can name a row in
(:func:`read_rows`, the reader of every command's JSONL input, raises the commands' :class:`InputError`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prm_rl.errors import InputError


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


def read_objects(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSONL file. A ValueError names the problem in one line:
    ``PATH: cannot read ...``, ``PATH: not UTF-8 text ...``, ``PATH:LINE: invalid JSON (...)``, ``PATH:LINE: a row
    must be a JSON object, got list``, ``PATH: no rows``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    objects = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: a row must be a JSON object, got {type(obj).__name__}")
        objects.append((lineno, obj))
    if not objects:  # an empty file is a mistake, not a file of nothing
        raise ValueError(f"{path}: no rows")
    return objects


def read_rows(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, row) of a command's JSONL input (:func:`read_objects`): each row has every ``required`` key as
    a string, and each ``optional`` key, where present, as a string. The first problem is an :class:`InputError`
    naming the file and row: ``PATH:LINE: missing 'KEY'``, ``PATH:LINE: 'KEY' must be a string, got int``."""
    try:
        objects = read_objects(path)
    except ValueError as e:
        raise InputError(str(e)) from None
    for lineno, row in objects:
        for key in (*required, *optional):
            if key not in row:
                if key in optional:
                    continue
                raise InputError(f"{path}:{lineno}: missing '{key}'")
            if not isinstance(row[key], str):
                raise InputError(f"{path}:{lineno}: '{key}' must be a string, got {type(row[key]).__name__}")
    return objects
