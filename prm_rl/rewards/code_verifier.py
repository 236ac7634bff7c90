"""The ``code`` verifier: run the response's last ```python block against ``fields["tests"]`` in the sandbox.

Test formats (``fields["tests"]``; a JSON string holding one of them is accepted too):

* a list of assert statements (strings): the program runs once as module ``solution`` (so an
  ``if __name__ == "__main__":`` block does not run) and then each statement in its namespace; one test
  passes when its statement raises nothing. A test that crashes or hangs the process fails, and the tests
  after it are re-run in a fresh process;
* a list of ``{"input": STDIN, "output": EXPECTED_STDOUT}`` (or the APPS-style
  ``{"inputs": [...], "outputs": [...]}``): one sandboxed run per test; a test passes when the run exits 0
  and its stdout matches (see :func:`outputs_match`).

Score (PRIME, "fraction of unit tests passed, over the first 10 tests when all do not pass"), with
``partial="first_n"`` (default) and ``first_n=10``: 1.0 when every test passes; otherwise the fraction of
the first ``min(n, 10)`` tests that pass, each judged on its own. Read literally, as the reference does,
so a program that passes the first 10 tests and fails a later one scores 1.0 (the reason says so).
``partial="all"``: the fraction over all tests. ``partial="none"``: 1.0 or 0.0.

Limits: ``timeout_s`` is the wall-clock limit of one program run (the assert form is one run, plus one per
crash/hang among the tests that count; the stdin form is one run per test); ``sample_timeout_s`` optionally
caps the whole sample (tests not run in time fail). See :mod:`prm_rl.rewards.sandbox` for the confinement.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from prm_rl import json_text
from prm_rl.rewards.base import Verdict, one_line
from prm_rl.rewards.sandbox import Limits, RunResult, Sandbox

__all__ = ["verify_code", "extract_code", "parse_tests", "outputs_match", "max_runs"]

_BLOCK_RE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
PARTIAL_MODES = ("first_n", "all", "none")
SANDBOX_LAYERS = ("uid", "namespaces", "landlock", "seccomp")


@dataclass(frozen=True)
class CodeOptions:
    """The code verifier's options, ``verifier.tasks.<task>.*`` for a task it scores (docs/verifiers.md).

    The one home of their defaults: the sandbox limits default to :class:`~prm_rl.rewards.sandbox.Limits`'s.
    """

    timeout_s: float = Limits.timeout_s  # wall-clock limit of one program run (the scorer passes verifier.timeout_s)
    cpu_s: float | None = Limits.cpu_s  # CPU-seconds limit of one run; null = timeout_s rounded up
    memory_mb: int = Limits.memory_mb  # address-space limit of every process of a run
    max_output_bytes: int = Limits.max_output_bytes  # stdout + stderr of a run; more kills it
    max_procs: int = Limits.max_procs  # processes a run may hold
    max_file_mb: int = Limits.max_file_mb  # largest file a run may write
    python: str | None = None  # interpreter for the programs; null = the first suitable one found
    require: tuple[str, ...] = ()  # sandbox layers that must be active, else scoring refuses to run
    partial: str = "first_n"  # first_n: credit for the fraction of the first first_n tests passed | all | none
    first_n: int = 10  # tests that count for partial credit (partial=first_n)
    sample_timeout_s: float | None = None  # time budget of all runs of one sample; null = no budget
    tmp_root: str | None = None  # where runs' private directories are made; null = the system temp dir

    def __post_init__(self) -> None:
        if self.partial not in PARTIAL_MODES:
            raise ValueError(f"code: partial={self.partial!r}, expected one of {PARTIAL_MODES}")

    def limits(self) -> Limits:
        return Limits(timeout_s=float(self.timeout_s), cpu_s=self.cpu_s, memory_mb=int(self.memory_mb),
                      max_output_bytes=int(self.max_output_bytes), max_procs=int(self.max_procs),
                      max_file_mb=int(self.max_file_mb))


def extract_code(response: str) -> str | None:
    """The last closed fenced block tagged ``python`` / ``python3`` / ``py``; ``None`` if there is none."""
    blocks = _BLOCK_RE.findall(response)
    return blocks[-1] if blocks else None


def parse_tests(fields: dict[str, Any]) -> tuple[str, list]:
    """("asserts", [statement, ...]) or ("stdio", [(stdin, expected), ...]); ValueError naming the problem."""
    if "tests" not in fields:
        raise ValueError("code: fields['tests'] is missing")
    tests = fields["tests"]
    if isinstance(tests, str):
        try:
            tests = json_text.loads(tests)
        except ValueError as e:
            raise ValueError(f"code: fields['tests'] is a string but not JSON ({one_line(e, 80)})") from None
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        ins, outs = tests["inputs"], tests["outputs"]
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
            raise ValueError("code: fields['tests'] inputs/outputs must be lists of equal length")
        tests = [{"input": i, "output": o} for i, o in zip(ins, outs)]
    if not isinstance(tests, list) or not tests:
        raise ValueError("code: fields['tests'] must be a non-empty list")
    if all(isinstance(t, str) for t in tests):
        return "asserts", list(tests)
    pairs = []
    for i, t in enumerate(tests):
        if not isinstance(t, dict) or "input" not in t or "output" not in t:
            raise ValueError(
                f"code: fields['tests'][{i}] must be an assert string or a dict with 'input' and 'output' "
                "(and all tests of one sample in the same form)"
            )
        inp, out = t["input"], t["output"]
        if isinstance(inp, list):
            inp = "\n".join(map(str, inp)) + "\n"
        if isinstance(out, list):
            out = "\n".join(map(str, out))
        if not isinstance(inp, str) or not isinstance(out, (str, int, float)):
            raise ValueError(f"code: fields['tests'][{i}] input/output must be strings")
        pairs.append((inp, str(out)))
    return "stdio", pairs


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.replace("\r\n", "\n").strip("\n").split("\n")]


def _close(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isfinite(x) and math.isfinite(y) and abs(x - y) <= 1e-6 * max(1.0, abs(y))


def outputs_match(got: str, expected: str) -> bool:
    """stdout equals the expected output, in the first sense that holds:

    1. line by line, ignoring trailing whitespace on each line and blank lines at either end;
    2. whitespace-separated tokens equal;
    3. the same number of tokens, numeric ones equal within 1e-6 (relative, absolute near 0).
    """
    if _lines(got) == _lines(expected):
        return True
    g, e = got.split(), expected.split()
    if g == e:
        return True
    return len(g) == len(e) and bool(g) and all(_close(a, b) for a, b in zip(g, e))


def max_runs(fields: dict[str, Any], partial: str = "first_n", first_n: int = 10) -> int:
    """Most sandbox runs one sample can take (for the Scorer's hard deadline); 1 if the tests are malformed."""
    try:
        kind, tests = parse_tests(fields)
    except ValueError:
        return 1
    if kind == "stdio":
        return len(tests)
    counted = len(tests) if partial == "all" else min(len(tests), first_n) if partial == "first_n" else 0
    return 1 + counted


def _why(res: RunResult) -> str:
    if res.timed_out:
        return "timeout"
    if res.output_exceeded:
        return "output limit exceeded"
    err = res.stderr.decode("utf-8", errors="replace").strip().splitlines()
    last = one_line(err[-1], 120) if err else ""
    if res.returncode and res.returncode < 0:
        return f"killed by signal {-res.returncode}" + (f" ({last})" if last else "")
    return f"exit {res.returncode}" + (f": {last}" if last else "")


def _score(passed: list[bool | None], n: int, partial: str, first_n: int) -> tuple[float, str | None]:
    """passed[i] is None for a test that was never judged (counts as failed)."""
    ok = [p is True for p in passed] + [False] * (n - len(passed))
    if all(ok):
        return 1.0, None
    first_fail = ok.index(False) + 1
    if partial == "none":
        return 0.0, f"failed test {first_fail} of {n}"
    m = n if partial == "all" else min(n, first_n)
    k = sum(ok[:m])
    if k == m:
        return 1.0, f"failed test {first_fail} of {n}, beyond the first {m}: full credit as in the reference"
    scope = f"first {m} tests" if m < n else f"{n} tests"
    return k / m, f"passed {k}/{m} ({scope}); first failure: test {first_fail}"


def verify_code(prompt: str, response: str, fields: dict[str, Any], **options: Any) -> float:
    """Score in [0, 1] of the response's last ```python block on ``fields["tests"]`` (module docstring);
    ``options`` are :class:`CodeOptions` fields."""
    opts = CodeOptions(**{k: tuple(v) if k == "require" else v for k, v in options.items()})
    partial, first_n, sample_timeout_s = opts.partial, opts.first_n, opts.sample_timeout_s
    kind, tests = parse_tests(fields)
    source = extract_code(response)
    if source is None:
        return Verdict(0.0, "no ```python block")
    sandbox = Sandbox(opts.limits(), python=opts.python, require=opts.require, tmp_root=opts.tmp_root)
    t0 = time.monotonic()

    def out_of_time() -> bool:
        return sample_timeout_s is not None and time.monotonic() - t0 >= sample_timeout_s

    n = len(tests)
    m = n if partial == "all" else min(n, first_n) if partial == "first_n" else 0
    passed: list[bool | None] = [None] * n
    why: dict[int, str] = {}

    if kind == "stdio":
        for i, (stdin, expected) in enumerate(tests):
            if i >= m and any(p is False for p in passed):
                break  # not all pass, and the tests that count are judged
            if out_of_time():
                why.setdefault(i, "sample time budget exhausted")
                break
            res = sandbox.run(source, mode="stdio", stdin=stdin.encode())
            good = res.ok and outputs_match(res.stdout.decode("utf-8", errors="replace"), expected)
            passed[i] = good
            if not good:
                why[i] = "wrong output" if res.ok else _why(res)
    else:
        start, runs = 0, 0
        while start < n:
            if out_of_time():
                why.setdefault(start, "sample time budget exhausted")
                break
            res = sandbox.run(source, mode="asserts", tests=tests, start=start)
            runs += 1
            loaded = False
            for line in res.results:
                parts = line.split()
                if parts == ["L"]:
                    loaded = True
                elif len(parts) == 2 and parts[0].isdigit() and parts[1] in ("P", "F"):
                    i = int(parts[0])
                    if start <= i < n and passed[i] is None:
                        passed[i] = parts[1] == "P"
                        if parts[1] == "F":
                            why[i] = "assertion failed or raised"
            if not loaded:
                reason = _why(res) if not res.ok else "program did not load"
                return Verdict(0.0, f"program failed: {reason}" if runs == 1 else f"program failed on re-run: {reason}")
            missing = [i for i in range(start, n) if passed[i] is None]
            if not missing:
                break
            culprit = missing[0]  # the test running when the process died or hung
            passed[culprit] = False
            why[culprit] = _why(res) if not res.ok else "the process exited during this test"
            if partial == "none" or culprit + 1 >= m:
                break
            start = culprit + 1

    score, reason = _score(passed, n, partial, first_n)
    if reason is not None:
        first = next((i for i in range(n) if passed[i] is not True), None)
        if first is not None and first in why:
            reason += f" ({why[first]})"
    return Verdict(score, reason)


def _warmup(**options: Any) -> None:
    """Pick the sandbox interpreter (one probe run) before the first sample's clock starts (pool workers)."""
    Sandbox(python=options.get("python"), tmp_root=options.get("tmp_root")).setup()


verify_code.prm_rl_warmup = _warmup  # type: ignore[attr-defined]
