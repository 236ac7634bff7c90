"""A small pool of verifier worker processes with per-job deadlines.

Why not ``multiprocessing.Pool`` / ``ProcessPoolExecutor``: neither can kill one stuck job and carry on
(killing a worker breaks the executor), and the trainer must not ``fork`` (torch threads, a live gloo
process group). Workers here are fresh interpreters started with ``subprocess`` (fork+exec, no
``preexec_fn``, so safe from a threaded parent), in their own session (Ctrl-C in the terminal does not
reach them), with ``PR_SET_PDEATHSIG`` so they die with the trainer. They are created lazily on the first
job and reused; a worker that blows its hard deadline is SIGKILLed (with its process group) and replaced.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from prm_rl.rewards.base import exc_reason

__all__ = ["Job", "WorkerPool"]

_WORKER_CMD = "from prm_rl.rewards._worker import main; main()"


@dataclass
class Job:
    target: str  # dotted path of the verifier function
    call: str  # "fields": fn(prompt, response, fields, **kwargs); "kwargs": fn(prompt=, response=, **fields, **kwargs)
    kwargs: dict[str, Any]
    prompt: str
    response: str
    fields: dict[str, Any]
    soft_timeout_s: float  # the worker's own alarm for the whole call
    hard_timeout_s: float  # after this the parent kills the worker
    real_valued: bool = False  # the score may be any finite float, not only [0, 1] (base.as_score)


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        p_rx, c_tx = os.pipe()  # worker -> parent
        c_rx, p_tx = os.pipe()  # parent -> worker
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(_sys_path())
        env.setdefault("OMP_NUM_THREADS", "1")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CMD, str(c_rx), str(c_tx)],
                stdin=subprocess.DEVNULL,
                pass_fds=(c_rx, c_tx),
                start_new_session=True,
                env=env,
            )
        finally:
            os.close(c_rx)
            os.close(c_tx)
        self.rx = Connection(p_rx, writable=False)
        self.tx = Connection(p_tx, readable=False)
        self.tx.send(("init", _sys_path()))
        self.job: int | None = None
        self.sent_at = 0.0
        self.started_at: float | None = None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self.rx.close()
        self.tx.close()

    def stop(self, grace_s: float = 1.0) -> None:
        try:
            self.tx.send(("stop",))
            self.proc.wait(timeout=grace_s)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def exit_text(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "worker died"
        return f"worker died (signal {-code})" if code < 0 else f"worker died (exit code {code})"


def _sys_path() -> list[str]:
    out = []
    for p in sys.path:
        p = os.path.abspath(p or os.getcwd())
        if p not in out:
            out.append(p)
    return out


class WorkerPool:
    """``run(jobs)`` -> one ``(score, reason, failure)`` per job, in order. Not thread-safe (the Scorer locks)."""

    def __init__(self, size: int, startup_timeout_s: float = 120.0) -> None:
        self.size = size
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker | None] = [None] * size
        self.restarts = 0

    def _worker(self, i: int) -> _Worker:
        w = self._workers[i]
        if w is None:
            w = self._workers[i] = _Worker(i)
        return w

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[w.index] = None
        self.restarts += 1

    def run(self, jobs: list[Job]) -> list[tuple[float, str | None, str | None]]:
        out: list[tuple[float, str | None, str | None] | None] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        busy: dict[int, _Worker] = {}  # worker index -> worker with a job
        send_failures: dict[int, int] = {}
        try:
            while queue or busy:
                for i in range(self.size):
                    if not queue:
                        break
                    if i in busy:
                        continue
                    j = queue.popleft()
                    job = jobs[j]
                    try:
                        w = self._worker(i)
                    except OSError as e:
                        out[j] = (0.0, None, f"worker failed to start: {exc_reason(e)}")
                        continue
                    try:
                        w.tx.send(("job", j, job.target, job.call, job.kwargs, job.prompt, job.response, job.fields,
                                   job.soft_timeout_s, job.real_valued))
                    except (pickle.PicklingError, TypeError, AttributeError) as e:
                        out[j] = (0.0, None, f"cannot send sample to worker: {exc_reason(e)}")
                        continue
                    except OSError as e:  # the worker is gone: retry once on a fresh one
                        self._replace(w)
                        send_failures[j] = send_failures.get(j, 0) + 1
                        if send_failures[j] >= 2:
                            out[j] = (0.0, None, f"cannot reach a worker: {exc_reason(e)}")
                        else:
                            queue.appendleft(j)
                        continue
                    w.job, w.sent_at, w.started_at = j, time.monotonic(), None
                    busy[i] = w
                if not busy:
                    continue
                now = time.monotonic()
                deadlines = {
                    i: (w.started_at + jobs[w.job].hard_timeout_s) if w.started_at is not None else (w.sent_at + self.startup_timeout_s)
                    for i, w in busy.items()
                }
                timeout = max(0.0, min(deadlines.values()) - now)
                ready = wait([w.rx for w in busy.values()], timeout)
                by_conn = {id(w.rx): i for i, w in busy.items()}
                for conn in ready:
                    i = by_conn[id(conn)]
                    w = busy[i]
                    try:
                        while w.rx.poll():
                            msg = w.rx.recv()
                            if msg[0] == "start" and msg[1] == w.job:
                                w.started_at = time.monotonic()
                            elif msg[0] == "done" and msg[1] == w.job:
                                out[w.job] = (msg[2], msg[3], msg[4])
                                w.job = None
                                del busy[i]
                                break
                    except (EOFError, OSError):
                        try:
                            w.proc.wait(timeout=2)
                        except subprocess.TimeoutExpired:
                            pass
                        out[w.job] = (0.0, None, w.exit_text())
                        del busy[i]
                        self._replace(w)
                now = time.monotonic()
                for i, w in list(busy.items()):
                    if w.started_at is not None and now >= w.started_at + jobs[w.job].hard_timeout_s:
                        out[w.job] = (0.0, None, "timeout")
                    elif w.started_at is None and now >= w.sent_at + self.startup_timeout_s:
                        out[w.job] = (0.0, None, f"worker did not start within {self.startup_timeout_s:g} s")
                    else:
                        continue
                    del busy[i]
                    self._replace(w)
        except BaseException:
            for w in busy.values():  # interrupted: those workers hold stale jobs
                self._replace(w)
            raise
        return [o if o is not None else (0.0, None, "not run") for o in out]

    def close(self) -> None:
        for i, w in enumerate(self._workers):
            if w is not None:
                w.stop()
                self._workers[i] = None
