"""One live run per run directory: ``RUN/.lock`` names its owner while the run lives.

Rank 0 takes an exclusive ``flock`` on the file and writes its owner (pid, host, start time, command). The
kernel drops the ``flock`` when the process dies, however it dies; the owner text stays until a clean exit
empties it. So a second start finds either
- the ``flock`` held: a live run owns the directory, the start is refused naming it;
- the ``flock`` free but an owner written: that run was killed. On this host, when its pid is gone (or now
  belongs to a younger process) the lock is taken over and reported; a holder on another host cannot be
  checked from here, so the start is refused and the message says which file to delete if that run is dead.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from prm_rl.errors import UsageError

LOCK_FILE = ".lock"


class RunDirInUse(UsageError):
    """Another run owns the run directory (or may: a holder on another host)."""

    label = "run directory in use"


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: str  # UTC, for people
    process_start: str | None  # the kernel's start time of ``pid``, to tell a reused pid from the owner
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"

    def is_alive_here(self) -> bool:
        """Is the owning process still running on this host (and not a new process that reuses its pid)?"""
        if self.pid <= 0:  # unreadable owner text (-1); kill(0 or -1, 0) would probe whole process groups
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            pass
        return self.process_start is None or _process_start(self.pid) in (None, self.process_start)


def _process_start(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the name may hold spaces and ")": split after its last ")"


def _read_owner(fd: int) -> Owner | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        owner = Owner(**json.loads(text))
        if isinstance(owner.pid, int) and isinstance(owner.host, str):
            return owner
    except (ValueError, TypeError):
        pass
    # Written by something else: a stale owner this host cannot name.
    return Owner(pid=-1, host=socket.gethostname(), started="unknown", process_start=None, command=text[:80])


class RunLock:
    """Held by rank 0 for the life of the process; :meth:`release` (also run at exit) empties the owner."""

    def __init__(self, fd: int, path: Path, owner: str):
        self.fd, self.path, self.owner = fd, path, owner  # owner: the text written, this run's alone

    def release(self) -> None:
        if self.fd < 0:
            return
        os.ftruncate(self.fd, 0)  # a clean exit leaves no owner: the next start is not a takeover
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


def acquire(run_dir: Path, log: Callable[[str], None]) -> RunLock:
    """Own ``run_dir`` or raise :class:`RunDirInUse` (one line naming the holder). ``OSError`` if unwritable."""
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_owner(fd)
            who = holder.describe() if holder else "a process that has not written its name yet"
            raise RunDirInUse(f"{run_dir}: another run is using this directory ({who}); wait for it to end, "
                              "stop it, or set trainer.output_dir to another directory") from None
        previous = _read_owner(fd)
        if previous is not None:
            if previous.host != socket.gethostname():
                raise RunDirInUse(f"{run_dir}: owned by a run on another host ({previous.describe()}) that this "
                                  f"host cannot check; if that run is dead, delete {path} and start again")
            if previous.pid != os.getpid() and previous.is_alive_here():
                raise RunDirInUse(f"{run_dir}: {previous.describe()} is still running but holds no lock on "
                                  f"{path} (a filesystem without flock?); stop it, or delete the file if it is "
                                  "not a run")
            log(f"run directory: took over the lock of a run that is gone ({previous.describe()})")
        owner = _write_owner(fd)
    except BaseException:
        os.close(fd)
        raise
    lock = RunLock(fd, path, owner)
    atexit.register(lock.release)
    return lock


def _write_owner(fd: int) -> str:
    me = Owner(pid=os.getpid(), host=socket.gethostname(),
               started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               process_start=_process_start(os.getpid()), command=" ".join(sys.argv))
    text = json.dumps(asdict(me)) + "\n"
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
    os.fsync(fd)
    return text


def owner_text(run_dir: Path) -> str | None:
    """What ``run_dir``'s lock file holds, as this process sees it (None: no such file here)."""
    try:
        return (run_dir / LOCK_FILE).read_text()
    except OSError:
        return None
