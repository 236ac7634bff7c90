"""Row layouts of public datasets: how one row of a file becomes a prompt, a task and verifier fields.

Each mapping is a function ``row -> Mapped``; it raises :class:`RowError` naming the row's key at fault, and
the loader (:mod:`prm_rl.data.files`) adds the file and row. Mappings only pick values out of the row and
reshape them; whether the fields satisfy the verifier is checked once, by the loader, for every mapping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from prm_rl import json_text
from prm_rl.answers import last_boxed

MAPPINGS = ("prime", "gsm8k", "math", "code", "fields")


class RowError(ValueError):
    """One row is malformed: ``key`` is the row's key at fault (dotted for nested), ``problem`` says how."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"field '{key}': {problem}")
        self.key, self.problem = key, problem


@dataclass
class Mapped:
    """What a mapping read from one row.

    messages:   the prompt as chat messages ({"role", "content"}); a plain-text prompt is one user message.
    prompt_key: the row key the prompt came from (named when the chat template rejects it).
    task:       the verifier task the row asks for (None: the mapping has no opinion, data.task must say).
    fields:     verifier inputs, e.g. {"answer": "72"} or {"tests": [...]}.
    sources:    field name -> the row key it came from, so later errors can name the user's column.
    """

    messages: list[dict[str, str]]
    prompt_key: str
    task: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def mapped(row: dict, prompt_key: str, task: str | None, fields: dict[str, Any], sources: dict[str, str]) -> Mapped:
    """A Mapped whose prompt is ``row[prompt_key]``."""
    return Mapped(messages(get(row, prompt_key), prompt_key), prompt_key, task, fields, sources)


# ------------------------------------------------------------------------------------------- row access
def get(row: dict, key: str) -> Any:
    """``row[key]``, where a dotted key walks nested dicts; a missing or null value is an error."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            raise RowError(key, "missing")
        value = value[part]
    return value


def get_str(row: dict, key: str) -> str:
    value = get(row, key)
    if not isinstance(value, str):
        raise RowError(key, f"expected a string, got {type(value).__name__}")
    return value


def first_present(row: dict, keys: tuple[str, ...]) -> str:
    """The first of ``keys`` the row holds (non-null); datasets name the same column differently."""
    for key in keys:
        if row.get(key) is not None:
            return key
    raise RowError("/".join(keys), "missing (none of these keys is present)")


# --------------------------------------------------------------------------------------------- values
def messages(value: Any, key: str) -> list[dict[str, str]]:
    """A prompt as chat messages: a string is one user message; a list must hold {"role", "content"} strings,
    at least one of them from the user (the instruction suffix goes there). Empty text is an error."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    elif not isinstance(value, list):
        raise RowError(key, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}")
    out = []
    for i, msg in enumerate(value):
        if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and isinstance(msg.get("content"), str)):
            raise RowError(key, f"message {i} must be a {{role, content}} dict of strings")
        out.append({"role": msg["role"], "content": msg["content"]})
    if not any(m["role"] == "user" for m in out):
        raise RowError(key, "no message with role 'user'")
    if not "".join(m["content"] for m in out).strip():
        raise RowError(key, "empty prompt")
    return out


def tests(value: Any, key: str) -> Any:
    """Code tests as the code verifier takes them; a JSON string is decoded here so a bad one names ``key``.

    APPS-style call-based tests (``fn_name``: call a function instead of feeding stdin) are refused: the
    code verifier would run them as stdin/stdout tests and fail every response.
    """
    if isinstance(value, str):
        try:
            value = json_text.loads(value)
        except ValueError as e:
            raise RowError(key, f"a string but not JSON ({e})") from None
    if isinstance(value, dict) and value.get("fn_name"):
        raise RowError(key, "call-based tests (fn_name) are not supported by the code verifier; filter these rows out")
    return value


def gsm8k_answer(solution: str, key: str) -> str:
    """The number after the last ``####`` of a GSM8K solution, without thousands separators or spaces."""
    if "####" not in solution:
        raise RowError(key, "no '#### ANSWER' line")
    return "".join(solution.rsplit("####", 1)[1].split()).replace(",", "")


def boxed_answer(solution: str, key: str) -> str:
    """The content of the solution's last balanced ``\\boxed{...}`` (MATH's answer convention)."""
    answer = last_boxed(solution)
    if answer is None:
        raise RowError(key, "no \\boxed{...} answer")
    return answer


# ------------------------------------------------------------------------------------------- mappings
def prime(row: dict) -> Mapped:
    """PRIME's RL data (Eurus-2-RL-Data, the veRL layout): chat ``prompt``, ``ability`` picks math or code,
    ``reward_model.ground_truth`` is the answer (math) or a JSON string of stdin/stdout tests (code)."""
    truth_key = "reward_model.ground_truth"
    ability = get_str(row, "ability")
    truth = get(row, truth_key)
    if ability == "math":
        fields = {"answer": truth}
        sources = {"answer": truth_key}
    elif ability == "code":
        fields = {"tests": tests(truth, truth_key)}
        sources = {"tests": truth_key}
    else:
        raise RowError("ability", f"{ability!r}: expected 'math' or 'code'")
    return mapped(row, "prompt", ability, fields, sources)


def gsm8k(row: dict) -> Mapped:
    """GSM8K: ``question``; ``answer`` is a worked solution ending in ``#### 72``."""
    answer = gsm8k_answer(get_str(row, "answer"), "answer")
    return mapped(row, "question", "math", {"answer": answer}, {"answer": "answer"})


def hendrycks_math(row: dict) -> Mapped:
    """Hendrycks MATH: ``problem``; ``solution`` holds the answer in its last ``\\boxed{}``."""
    answer = boxed_answer(get_str(row, "solution"), "solution")
    return mapped(row, "problem", "math", {"answer": answer}, {"answer": "solution"})


def code(row: dict) -> Mapped:
    """Code datasets: the prompt under prompt/question/problem/text, the tests under tests, test_list (MBPP
    asserts) or input_output (APPS JSON of stdin/stdout pairs), whichever comes first."""
    prompt_key = first_present(row, ("prompt", "question", "problem", "text"))
    tests_key = first_present(row, ("tests", "test_list", "input_output"))
    fields = {"tests": tests(row[tests_key], tests_key)}
    return mapped(row, prompt_key, "code", fields, {"tests": tests_key})


def user_fields(spec: dict[str, str]) -> Callable[[dict], Mapped]:
    """``data.fields``: ``prompt`` and ``task`` name the row keys holding them; every other entry becomes a
    verifier field under its own name (``answer``, ``tests``, or anything a custom verifier reads)."""
    if "prompt" not in spec:
        raise ValueError("data.fields: mapping=fields needs at least data.fields.prompt=KEY")
    verifier_fields = {name: key for name, key in spec.items() if name not in ("prompt", "task")}

    def read(row: dict) -> Mapped:
        fields = {name: get(row, key) for name, key in verifier_fields.items()}
        if "tests" in fields:
            fields["tests"] = tests(fields["tests"], verifier_fields["tests"])
        task = get_str(row, spec["task"]) if "task" in spec else None
        if task is not None and not task.strip():
            raise RowError(spec["task"], "empty task name")
        return mapped(row, spec["prompt"], task, fields, dict(verifier_fields))

    return read


def mapper(mapping: str, fields: dict[str, str] | None = None) -> Callable[[dict], Mapped]:
    """The row reader for ``data.mapping`` (``fields`` is ``data.fields``, used by mapping=fields only)."""
    shipped = {"prime": prime, "gsm8k": gsm8k, "math": hendrycks_math, "code": code}
    if mapping == "fields":
        return user_fields(dict(fields or {}))
    if mapping not in shipped:
        raise ValueError(f"data.mapping={mapping!r}: must be one of {', '.join(MAPPINGS)}")
    return shipped[mapping]
