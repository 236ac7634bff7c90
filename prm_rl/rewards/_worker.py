"""A verifier pool worker: a fresh interpreter (never a fork of the trainer) that runs one job at a time.

Started by :class:`prm_rl.rewards.pool.WorkerPool` as
``python -c "from prm_rl.rewards._worker import main; main()" RX_FD TX_FD``. Protocol (pickled tuples on
two pipes): ``("init", sys_path)`` once, then ``("job", id, target, call, kwargs, prompt, response,
fields, soft_timeout_s)``; the worker answers ``("start", id)`` once the verifier is imported and warmed
up (only then does the sample's clock start) and ``("done", id, score, reason, failure)``. ``("stop",)``
ends it. Each job runs in this process's main thread under ``ITIMER_REAL`` (sub-second, so math-verify's
own signal-based timeouts are switched off and this one covers the whole sample); a job that ignores it
is killed by the parent at the hard deadline.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from multiprocessing.connection import Connection

from prm_rl.rewards.base import as_score, exc_reason


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside a job; a BaseException so verifier code's ``except Exception`` misses it."""


def _on_alarm(_signum, _frame):
    raise _SoftTimeout()


def resolve(target: str):
    """Import ``pkg.mod.attr[.attr...]`` (Hydra ``_target_`` style) and return the object."""
    import importlib

    parts = target.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise ImportError(f"'{target}' is not a dotted path like 'package.module.function'")
    err: BaseException | None = None
    for cut in range(len(parts) - 1, 0, -1):
        mod_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not (mod_name == e.name or mod_name.startswith(e.name + ".")):
                raise  # the module exists but one of *its* imports is missing
            err = e
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ImportError(f"module '{mod_name}' has no attribute '{'.'.join(parts[cut:])}'")
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import '{target}': {err}")


def call_verifier(fn, call: str, kwargs: dict, prompt: str, response: str, fields: dict):
    if call == "kwargs":
        return fn(prompt=prompt, response=response, **fields, **kwargs)
    return fn(prompt, response, fields, **kwargs)


def _set_pdeathsig() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> None:
    rx = Connection(int(sys.argv[1]), writable=False)
    tx = Connection(int(sys.argv[2]), readable=False)
    os.dup2(2, 1)  # a verifier's print() must never reach the trainer's (or the CLI's) stdout
    _set_pdeathsig()
    signal.signal(signal.SIGALRM, _on_alarm)
    # Stopping is the trainer's business: it finishes its step (these workers included) before it exits, and
    # launchers that terminate a whole process tree must not kill them first. They die with it (PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    msg = rx.recv()
    if msg[0] == "init":
        sys.path[:] = msg[1]
    cache: dict[str, object] = {}
    warmed: set = set()
    while True:
        try:
            msg = rx.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, job_id, target, call, kwargs, prompt, response, fields, soft_timeout, real_valued = msg
        try:
            fn = cache.get(target)
            if fn is None:
                fn = cache[target] = resolve(target)
            warm = getattr(fn, "prm_rl_warmup", None)
            key = (target, repr(sorted(kwargs.items())))
            if warm is not None and key not in warmed:
                warm(**kwargs)
                warmed.add(key)
        except BaseException as e:  # noqa: B902 - reported, the worker lives on
            tx.send(("start", job_id))
            tx.send(("done", job_id, 0.0, None, exc_reason(e)))
            continue
        tx.send(("start", job_id))
        score, reason, failure = 0.0, None, None
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, max(soft_timeout, 0.001))
                value = call_verifier(fn, call, kwargs, prompt, response, fields)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            score, reason = as_score(value, real_valued)
        except _SoftTimeout:
            failure = "timeout"
        except BaseException as e:  # noqa: B902 - SystemExit/KeyboardInterrupt from a verifier too
            failure = exc_reason(e)
        tx.send(("done", job_id, score, reason, failure))


if __name__ == "__main__":
    main()
