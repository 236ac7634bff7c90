"""What stops a run early, and how: signals, non-finite updates, failed saves.

Every early stop raises :class:`RunStopped`; ``launch/train.py`` prints its one-line message and exits with
its code, after the trainer has saved what it could (see docs/checkpoints.md).
"""
from __future__ import annotations

import os
import signal

from prm_rl.engine import dist
from prm_rl.errors import UsageError

# Exit codes of an early stop (a finished run exits 0; a config or data error exits 2).
EXIT_SIGNAL = 3
EXIT_NONFINITE = 4
EXIT_CHECKPOINT = 5


class RunStopped(Exception):
    """The run stopped before ``trainer.max_steps``; ``str(self)`` says why and what to do next."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """Turn the first SIGTERM/SIGINT into a request to stop after the current step (checked by the trainer).

    A repeated SIGTERM changes nothing (launchers forward the one the job got: the deepspeed launcher sends
    rank 0 its own after the scheduler's), while a second SIGINT, an impatient Ctrl-C, kills at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        elif signum == signal.SIGINT:
            self.__exit__()
            os.kill(os.getpid(), signum)


class NonFiniteGuard:
    """Counts steps whose optimiser updates were skipped because a loss or gradient was NaN/inf.

    DeepSpeed skips such an update (see ``backward_and_step``); this decides when to give up: after
    ``max_bad_steps`` such steps in a row.
    """

    def __init__(self, max_bad_steps: int, consecutive: int = 0, total: int = 0):
        self.max_bad_steps, self.consecutive, self.total = max_bad_steps, consecutive, total

    def update(self, skipped_updates: float) -> dict[str, float]:
        if skipped_updates > 0:
            self.consecutive += 1
            self.total += 1
        else:
            self.consecutive = 0
        return {"guard/skipped_updates": skipped_updates, "guard/bad_steps_in_a_row": float(self.consecutive),
                "guard/bad_steps_total": float(self.total)}

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.max_bad_steps


def injected_nan_steps() -> set[int]:
    """Steps whose advantages are poisoned with NaN, from ``PRM_RL_INJECT_NAN_STEPS=3,4`` (fault testing only)."""
    raw = os.environ.get("PRM_RL_INJECT_NAN_STEPS", "")
    return {int(s) for s in raw.split(",") if s.strip()}


def on_rank0(decide):
    """Run ``decide`` on rank 0 and hand its result (or its RunStopped or UsageError) to every rank."""
    result = None
    if dist.is_main():
        try:
            result = ("ok", decide())
        except RunStopped as err:
            result = ("stop", (str(err), err.exit_code))
        except UsageError as err:
            result = ("usage", err)
    kind, value = dist.broadcast_object(result)
    if kind == "stop":
        raise RunStopped(*value)
    if kind == "usage":
        raise value
    return value
