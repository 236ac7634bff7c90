"""Verifier registry and the Scorer the trainer (and ``python -m prm_rl.cli.verify``) calls.

``build_scorer(verifiers, num_workers, timeout_s)`` validates the whole configuration up front (unknown
option, wrong type, unimportable ``_target_``: :class:`VerifierConfigError`, a ValueError, naming
``verifiers.TASK.KEY``), then ``Scorer.score(samples, responses)`` dispatches on ``sample.task``:

* ``arithmetic`` (and custom verifiers with ``in_process: true``) run right here, in the caller's thread;
* a task whose verifier is ``reward_model`` (a configured Hugging Face sequence-classification checkpoint,
  :mod:`prm_rl.rewards.reward_model`) is scored in batches, here too; its scores are any real, not [0, 1];
* everything else goes to a lazily started pool of fresh worker interpreters (:mod:`prm_rl.rewards.pool`)
  with a per-sample time limit: a sub-second alarm inside the worker, and a SIGKILL of the worker at the
  hard deadline if the job ignores it.

A verifier that raises, returns something that is not a float in [0, 1] (any finite float for a custom one with
``real_valued: true``, e.g. partial credit with a negative format penalty), or runs out of time scores 0 for
that sample and is named in ``failures`` (as is a reward model's non-finite output); ``score`` only raises for
caller/config errors (an unknown task, ``len(samples) != len(responses)``) and a reward model that cannot load.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from prm_rl.data.files import is_hub_id
from prm_rl.rewards import code_verifier
from prm_rl.rewards._worker import call_verifier
from prm_rl.rewards.arithmetic import verify_arithmetic
from prm_rl.rewards.base import VerifierConfigError, as_score, exc_reason, one_line
from prm_rl.rewards.pool import Job, WorkerPool
from prm_rl.rewards.reward_model import RewardModel, RewardModelOptions

__all__ = ["build_scorer", "Scorer", "ScoreResult", "BUILTIN_TASKS", "REWARD_MODEL", "real_valued_tasks",
           "reward_models"]

BUILTIN_TASKS = ("arithmetic", "math", "code")
REWARD_MODEL = "reward_model"  # a verifier kind that exists only when configured: it needs its checkpoint's path

_MATH_TARGET = "prm_rl.rewards.math_verifier.verify_math"
_CODE_TARGET = "prm_rl.rewards.code_verifier.verify_code"
_HARD_GRACE_S = 2.0  # hard deadline = soft deadline + this


# -------------------------------------------------------------------------------------- option checking
def _plain(obj: Any) -> Any:
    """OmegaConf / other mappings and sequences -> dict / list (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [_plain(v) for v in obj]
    return obj


def _num(where: str, v: Any, *, integer: bool = False, allow_none: bool = False) -> Any:
    if v is None and allow_none:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v) or v <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise VerifierConfigError(f"{where}={v!r}: must be {kind}" + (" or null" if allow_none else ""))
    return v


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise VerifierConfigError(f"{where}={v!r}: must be true or false")
    return v


def _str(where: str, v: Any, allow_none: bool = False) -> Any:
    if v is None and allow_none:
        return None
    if not isinstance(v, str) or not v:
        raise VerifierConfigError(f"{where}={v!r}: must be a non-empty string")
    return v


def _check_code(where: str, opts: dict) -> dict:
    """Each :class:`code_verifier.CodeOptions` field, checked by its type (and its choices)."""
    by_type: dict[str, Callable[[str, Any], Any]] = {
        "float": _num,
        "float | None": lambda w, v: _num(w, v, allow_none=True),
        "int": lambda w, v: _num(w, v, integer=True),
        "str | None": lambda w, v: _str(w, v, allow_none=True),
    }
    special = {"partial": _partial, "require": _require}
    checks = {f.name: special.get(f.name) or by_type[f.type] for f in dataclasses.fields(code_verifier.CodeOptions)}
    return _check_known(where, opts, checks)


def _partial(where: str, v: Any) -> str:
    if v not in code_verifier.PARTIAL_MODES:
        raise VerifierConfigError(f"{where}={v!r}: must be one of {', '.join(code_verifier.PARTIAL_MODES)}")
    return v


def _require(where: str, v: Any) -> list[str]:
    known = code_verifier.SANDBOX_LAYERS
    if not isinstance(v, list) or any(x not in known for x in v):
        raise VerifierConfigError(f"{where}={v!r}: must be a list drawn from {', '.join(known)}")
    return v


def _check_math(where: str, opts: dict) -> dict:
    return _check_known(where, opts, {"timeout_s": _num, "fallbacks": _bool})


def _check_arithmetic(where: str, opts: dict) -> dict:
    return _check_known(where, opts, {})


def _check_known(where: str, opts: dict, checks: dict) -> dict:
    out = {}
    for key, value in opts.items():
        if key not in checks:
            known = ", ".join(sorted(checks)) or "none"
            raise VerifierConfigError(f"{where}.{key}: unknown option (known: {known})")
        out[key] = checks[key](f"{where}.{key}", value)
    return out


_BUILTIN_CHECKS = {"arithmetic": _check_arithmetic, "math": _check_math, "code": _check_code}


def _check_reward_model(where: str, opts: dict) -> RewardModelOptions:
    if "path" not in opts:
        raise VerifierConfigError(f"{where}.path: required (the reward model's checkpoint directory)")
    given = _str(f"{where}.path", opts["path"])
    path = os.path.expanduser(given)
    if not os.path.isdir(path) and not is_hub_id(given):
        raise VerifierConfigError(f"{where}.path={opts['path']!r}: no such directory (a Hugging Face "
                                  "sequence-classification checkpoint)")
    checked = _check_known(where, opts, {
        "path": _str, "batch_size": lambda w, v: _num(w, v, integer=True),
        "max_length": lambda w, v: _num(w, v, integer=True, allow_none=True), "chat_template": _bool})
    return RewardModelOptions(**{**checked, "path": path})


def _reward_model_tasks(verifiers: Mapping | None) -> list[str]:
    if not isinstance(verifiers, Mapping):
        return []
    return [str(task) for task, opts in verifiers.items()
            if isinstance(opts, Mapping) and "_target_" not in opts and opts.get("verifier", task) == REWARD_MODEL]


def real_valued_tasks(verifiers: Mapping | None) -> list[str]:
    """The task names of ``verifiers`` (as :func:`build_scorer` takes them) whose scores are any real, not [0, 1]:
    a reward model's, and a custom verifier's with ``real_valued: true``. Reads the mapping only;
    :func:`build_scorer` validates it."""
    custom = [str(task) for task, opts in (verifiers or {}).items()
              if isinstance(opts, Mapping) and "_target_" in opts and opts.get("real_valued") is True]
    return [*_reward_model_tasks(verifiers), *custom]


def reward_models(verifiers: Mapping | None, root: str = "verifier.tasks") -> dict[str, RewardModelOptions]:
    """The reward-model tasks of ``verifiers`` with their checked options (a bad one: :class:`VerifierConfigError`
    naming the field); nothing loads."""
    plain = _plain(verifiers) if isinstance(verifiers, Mapping) else {}
    return {task: _check_reward_model(f"{root}.{task}", {k: v for k, v in plain[task].items() if k != "verifier"})
            for task in _reward_model_tasks(verifiers)}


# ------------------------------------------------------------------------------------------------ specs
@dataclass
class _TaskSpec:
    name: str
    inline: Callable[..., Any] | None  # run in the caller's thread (no time limit)
    target: str  # dotted path (pool jobs)
    call: str  # "fields" or "kwargs"
    kwargs: dict[str, Any]
    timeout_s: float
    deadline: Callable[[dict], float] | None = None  # fields -> soft timeout (code: depends on the tests)
    base: str | None = None  # the built-in verifier behind this task, None for custom ones
    batched: RewardModel | None = None  # scores all of the task's samples at once (a reward model)
    real_valued: bool = False  # a custom verifier's score may be any finite float (its option real_valued)


def _builtin_spec(name: str, task: str, opts: dict, default_timeout: float) -> _TaskSpec:
    if name == "arithmetic":
        target = "prm_rl.rewards.arithmetic.verify_arithmetic"
        return _TaskSpec(task, verify_arithmetic, target, "fields", {}, default_timeout, base=name)
    if name == "math":
        kw = {k: v for k, v in opts.items() if k != "timeout_s"}
        return _TaskSpec(task, None, _MATH_TARGET, "fields", kw, float(opts.get("timeout_s", default_timeout)), base=name)
    kw = dict(opts)
    kw.setdefault("timeout_s", default_timeout)
    run_s = float(kw["timeout_s"])
    defaults = code_verifier.CodeOptions()
    partial, first_n = kw.get("partial", defaults.partial), kw.get("first_n", defaults.first_n)
    budget = kw.get("sample_timeout_s")

    def deadline(fields: dict) -> float:
        runs = code_verifier.max_runs(fields, partial, first_n)
        total = runs * (run_s + 1.0)
        if budget is not None:
            total = min(total, budget + run_s + 1.0)
        return total + 5.0

    return _TaskSpec(task, None, _CODE_TARGET, "fields", kw, run_s, deadline, base=name)


def _resolve_in_parent(where: str, target: str) -> Callable[..., Any]:
    from prm_rl.rewards._worker import resolve

    try:
        fn = resolve(target)
    except Exception as e:  # noqa: BLE001 - any import-time error is a config error here
        raise VerifierConfigError(f"{where}='{target}': cannot import ({exc_reason(e)})") from None
    if not callable(fn):
        raise VerifierConfigError(f"{where}='{target}': not callable")
    return fn


def _custom_spec(task: str, opts: dict, default_timeout: float, where: str) -> _TaskSpec:
    target = _str(f"{where}._target_", opts.pop("_target_"))
    timeout_s = float(_num(f"{where}.timeout_s", opts.pop("timeout_s", default_timeout)))
    in_process = _bool(f"{where}.in_process", opts.pop("in_process", False))
    real_valued = _bool(f"{where}.real_valued", opts.pop("real_valued", False))
    call = opts.pop("call", "kwargs")
    if call not in ("kwargs", "fields"):
        raise VerifierConfigError(f"{where}.call={call!r}: must be 'kwargs' or 'fields'")
    fn = _resolve_in_parent(f"{where}._target_", target)
    return _TaskSpec(task, fn if in_process else None, target, call, dict(opts), timeout_s, real_valued=real_valued)


def _specs(verifiers: Mapping | None, timeout_s: float, root: str) -> dict[str, _TaskSpec]:
    specs = {name: _builtin_spec(name, name, {}, timeout_s) for name in BUILTIN_TASKS}
    if verifiers is None:
        return specs
    if not isinstance(verifiers, Mapping):
        raise VerifierConfigError(f"{root}: expected a mapping of task name -> options, got {type(verifiers).__name__}")
    for task, opts in _plain(verifiers).items():
        where = f"{root}.{task}"
        if not task:
            raise VerifierConfigError(f"{root}: empty task name")
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise VerifierConfigError(f"{where}: expected a mapping of options, got {type(opts).__name__}")
        opts = dict(opts)
        if "_target_" in opts:
            if "verifier" in opts:
                raise VerifierConfigError(f"{where}: give either '_target_' or 'verifier', not both")
            specs[task] = _custom_spec(task, opts, timeout_s, where)
            continue
        base = opts.pop("verifier", task)
        if base == REWARD_MODEL:
            model = RewardModel(_check_reward_model(where, opts))
            specs[task] = _TaskSpec(task, None, "", "fields", {}, timeout_s, base=base, batched=model)
            continue
        if base not in BUILTIN_TASKS:
            if base == task:
                raise VerifierConfigError(
                    f"{where}: not a built-in task ({', '.join(BUILTIN_TASKS)}); give '_target_: pkg.module.function' "
                    f"or 'verifier: <built-in name or {REWARD_MODEL}>'"
                )
            raise VerifierConfigError(f"{where}.verifier={base!r}: must be one of "
                                      f"{', '.join((*BUILTIN_TASKS, REWARD_MODEL))}")
        specs[task] = _builtin_spec(base, task, _BUILTIN_CHECKS[base](where, opts), timeout_s)
    return specs


# ------------------------------------------------------------------------------------------------ scorer
@dataclass
class ScoreResult:
    scores: list[float]  # each in [0, 1]; any real for a reward model's task
    failures: list[str | None]  # None when the verifier ran fine, else a short reason ("timeout", "ValueError: ...")
    reasons: list[str | None] = field(default_factory=list)  # why a score is below 1, when the verifier said
    seconds: float = 0.0

    def failure_counts(self) -> dict[str, int]:
        """Failures grouped by kind: the text before the first ':' ("timeout", "ValueError", ...)."""
        return dict(Counter(f.split(":", 1)[0] for f in self.failures if f is not None))

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


class Scorer:
    """Scores responses with the configured verifiers. Use as a context manager or call :meth:`close`."""

    def __init__(self, specs: dict[str, _TaskSpec], num_workers: int) -> None:
        self._specs = specs
        self.num_workers = num_workers
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, Scorer._close_pool, [None])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))

    @staticmethod
    def _close_pool(holder: list) -> None:
        if holder[0] is not None:
            holder[0].close()
            holder[0] = None

    def _get_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self.num_workers)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, Scorer._close_pool, [self._pool])
        return self._pool

    def check_tasks(self, tasks) -> None:
        unknown = sorted({t for t in tasks if t not in self._specs}, key=str)
        if unknown:
            raise ValueError(
                f"unknown task(s) {', '.join(map(repr, unknown))}; known: {', '.join(self.tasks)} "
                "(add a custom one under verifiers with '_target_: pkg.module.function')"
            )

    def check_fields(self, task: str, fields: dict) -> None:
        """Raise ValueError when ``fields`` cannot serve the built-in verifier behind ``task`` (custom: no check)."""
        self.check_tasks([task])
        base = self._specs[task].base
        if base == "arithmetic":
            from prm_rl.rewards.arithmetic import _gold

            _gold(fields)
        elif base == "math":
            from prm_rl.rewards.math_verifier import _gold_texts

            _gold_texts(fields)
        elif base == "code":
            code_verifier.parse_tests(fields)
        # a reward model reads the prompt and the response alone: any fields serve it

    def score(self, samples: Sequence, responses: Sequence[str]) -> ScoreResult:
        """One score per (sample, response), dispatched on ``sample.task``. See the module docstring."""
        if len(samples) != len(responses):
            raise ValueError(f"score: {len(samples)} samples but {len(responses)} responses")
        self.check_tasks(getattr(s, "task", None) for s in samples)
        t0 = time.monotonic()
        n = len(samples)
        scores, failures, reasons = [0.0] * n, [None] * n, [None] * n
        jobs, where = [], []
        batched: dict[str, list[tuple[int, str, str]]] = {}  # task -> (row, prompt, response): one call each
        with self._lock:
            for i, (sample, response) in enumerate(zip(samples, responses)):
                spec = self._specs[sample.task]
                if not isinstance(response, str):
                    failures[i] = f"TypeError: response must be a str, got {type(response).__name__}"
                    continue
                fields = sample.fields
                if not isinstance(fields, dict):
                    failures[i] = f"TypeError: sample.fields must be a dict, got {type(fields).__name__}"
                    continue
                prompt = sample.prompt if isinstance(sample.prompt, str) else str(sample.prompt)
                if spec.batched is not None:
                    batched.setdefault(sample.task, []).append((i, prompt, response))
                    continue
                if spec.inline is not None:
                    try:
                        value = call_verifier(spec.inline, spec.call, spec.kwargs, prompt, response, fields)
                        scores[i], reasons[i] = as_score(value, spec.real_valued)
                    except (Exception, SystemExit) as e:  # noqa: BLE001 - a verifier's fault is that sample's failure
                        failures[i] = exc_reason(e)
                    continue
                soft = spec.deadline(fields) if spec.deadline is not None else spec.timeout_s
                jobs.append(Job(spec.target, spec.call, spec.kwargs, prompt, response, fields, soft,
                                soft + _HARD_GRACE_S, spec.real_valued))
                where.append(i)
            if jobs:
                for i, (s, reason, failure) in zip(where, self._get_pool().run(jobs)):
                    scores[i], reasons[i], failures[i] = s, reason, failure
            for task, rows in batched.items():
                values = self._specs[task].batched.score([p for _, p, _ in rows], [r for _, _, r in rows])
                for (i, _, _), value in zip(rows, values):
                    scores[i] = value
                    if math.isnan(value):
                        failures[i] = "ValueError: the reward model's output is not finite"
        for i, f in enumerate(failures):
            if f is not None:
                scores[i] = 0.0
                reasons[i] = one_line(f)
                failures[i] = one_line(f)
        return ScoreResult(scores, failures, reasons, time.monotonic() - t0)

    def close(self) -> None:
        """Stop the worker processes (a later ``score`` starts new ones)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            self._finalizer.detach()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build_scorer(verifiers: Mapping[str, Mapping] | None = None, num_workers: int = 2, timeout_s: float = 10.0,
                 root: str = "verifiers") -> Scorer:
    """Validate the verifier configuration and return a :class:`Scorer` (its worker pool starts lazily).

    ``verifiers`` maps task name -> options; the built-ins (arithmetic, math, code) are always available and
    can be tuned under their own name; a new name needs ``_target_`` (custom function) or ``verifier``
    (a built-in under another task name). ``timeout_s`` is the default per-sample time limit (per program
    run for ``code``). ``root`` is what errors call the mapping, e.g. ``verifier.tasks`` in the training config.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise VerifierConfigError(f"num_workers={num_workers!r}: must be an integer >= 1")
    _num("timeout_s", timeout_s)
    return Scorer(_specs(verifiers, float(timeout_s), root), num_workers)
