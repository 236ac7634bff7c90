"""Running untrusted Python in a confined child process (parent side).

One :meth:`Sandbox.run` = one program execution: a fresh private directory (removed afterwards), a child
started with :mod:`prm_rl.rewards._sandbox_boot` that confines itself before running the program, wall
clock / output limits enforced here, and a thorough kill at the end. Standard library only.

What holds where (each run reports the layers it actually got; see docs/verifiers.md and
:func:`sandbox_info`):

============================  ===============================  ======================================
guarantee                      as root                          as a normal user
============================  ===============================  ======================================
no network                     net namespace + seccomp          user+net namespace if the kernel allows
                                                                unprivileged user namespaces; seccomp
                                                                (socket() -> EACCES) always on Linux
no access to trainer files     exclusive unprivileged uid       Landlock only (same uid otherwise)
                               + Landlock (kernel >= 5.13)
fork bombs contained           exclusive uid: RLIMIT_NPROC,     RLIMIT_NPROC (per user namespace when
                               pid namespace, uid sweep         there is one, else shared with the
                                                                user's other processes), pid namespace
memory / CPU / file size       RLIMIT_AS / RLIMIT_CPU / RLIMIT_FSIZE (both)
wall time, output size         enforced by the parent (both)
============================  ===============================  ======================================
"""
from __future__ import annotations

import json
import os
import random
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from prm_rl.rewards.base import SandboxError, one_line

__all__ = ["Limits", "RunResult", "Sandbox", "sandbox_info"]

_BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_boot.py")
_SYSTEM_RO = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc"]
_PROBE_SOURCE = (
    "import bisect, collections, decimal, fractions, functools, heapq, itertools, json, math, random, re, "
    "string, sys\nprint('ok', sys.version_info[0], sys.version_info[1])\n"
)
_UID_WINDOWS = [(1_000_000, 2_000_000), (200_000, 1_000_000), (60_000, 65_000)]


@dataclass(frozen=True)
class Limits:
    """Per-run limits. Times in seconds, sizes in bytes unless named otherwise."""

    timeout_s: float = 10.0  # wall clock, enforced by the parent
    cpu_s: float | None = None  # RLIMIT_CPU (default: timeout_s rounded up)
    memory_mb: int = 1024  # RLIMIT_AS of every process in the sandbox
    max_output_bytes: int = 1 << 20  # stdout + stderr together; exceeding kills the run
    max_procs: int = 32  # RLIMIT_NPROC (processes of the sandbox uid / user namespace)
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    max_open_files: int = 256  # RLIMIT_NOFILE


@dataclass
class RunResult:
    returncode: int | None  # exit status (128 + N when a signal N ended it under a pid namespace)
    timed_out: bool
    output_exceeded: bool
    stdout: bytes
    stderr: bytes
    results: list[str]  # lines of the result pipe that carried the run's nonce, without it
    layers: dict[str, Any]  # what confinement the child actually got (its status line)
    wall_s: float
    exit_detail: str | None = None  # "exit N" / "signal N" from the pid-namespace supervisor

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    try:
        with open(path) as f:
            rows = [line.split() for line in f if line.strip()]
        return [(int(inside), int(inside) + int(count)) for inside, _outside, count in rows]
    except OSError:
        return [(0, 1 << 32)]


def _pick_uid() -> int:
    """A random uid (also used as gid) nobody on this machine uses, inside the mapped id ranges."""
    uids, gids = _mapped_ranges("/proc/self/uid_map"), _mapped_ranges("/proc/self/gid_map")
    in_use = {st[0] for st in map(_proc_status, _all_pids()) if st}
    for lo, hi in _UID_WINDOWS:
        for _ in range(20):
            u = random.randrange(lo, hi)
            if u not in in_use and any(a <= u < b for a, b in uids) and any(a <= u < b for a, b in gids):
                return u
    raise SandboxError("no free uid inside this user namespace's mapped range for the sandbox")


def _proc_status(pid: str) -> tuple[int, str, int] | None:
    """(real uid, state letter, thread count) of a process from /proc/PID/status, None if it is gone.

    Read from ``status`` rather than the owner of /proc/PID: after a setuid the kernel marks a process
    non-dumpable and its /proc entries then belong to root.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    uid, state, threads = -1, "?", 1
    for line in text.split(b"\n"):
        if line.startswith(b"Uid:"):
            uid = int(line.split()[1])
        elif line.startswith(b"State:"):
            state = line.split()[1].decode()
        elif line.startswith(b"Threads:"):
            threads = int(line.split()[1])
    return uid, state, threads


def _all_pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit()]


def _user_task_count(uid: int) -> int:
    n = 0
    for pid in _all_pids():
        st = _proc_status(pid)
        if st and st[0] == uid:
            n += st[2]
    return n


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    out = []
    for pid in _all_pids():
        st = _proc_status(pid)
        if st and st[0] == uid and st[1] not in ("Z", "X"):
            out.append(int(pid))
    return out


def _pids_with_marker(marker: bytes) -> list[int]:
    me, uid, out = os.getpid(), os.getuid(), []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != me:
            try:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def _kill_all(find, rounds: int = 200) -> None:
    """SIGKILL whatever ``find()`` returns until it returns nothing (a fork bomb may race us)."""
    for i in range(rounds):
        pids = find()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002 if i < 20 else 0.02)


def _rmtree(path: str) -> None:
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


def _interpreter_prefixes(python: str) -> list[str] | None:
    """Installation prefixes of ``python`` (asked unconfined, as the current user)."""
    code = "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]))"
    try:
        out = subprocess.run([python, "-I", "-c", code], capture_output=True, timeout=30, check=True).stdout
        dirs = {os.path.realpath(p) for p in json.loads(out.decode())}
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    dirs.add(os.path.dirname(os.path.realpath(python)))
    return sorted(d for d in dirs if d not in ("/", "") and os.path.isdir(d))


class Sandbox:
    """Runs Python source under the limits; thread-compatible (no shared state between runs but a cache).

    ``python``: interpreter for the programs (default: the first of the trainer's interpreter,
    ``python3`` on PATH, ``/usr/bin/python3`` that works under the sandbox uid and confinement).
    ``namespaces`` / ``landlock`` / ``drop_uid``: use those layers when available (default all on).
    ``require``: layer names ("uid", "namespaces", "landlock", "seccomp") whose absence makes every run
    raise :class:`SandboxError` instead of running with less isolation.
    """

    _probe_cache: dict[tuple, tuple[str, list[str], dict]] = {}

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        python: str | None = None,
        namespaces: bool = True,
        landlock: bool = True,
        drop_uid: bool = True,
        require: tuple[str, ...] | list[str] = (),
        tmp_root: str | None = None,
    ) -> None:
        self.limits = limits
        self.python = python
        self.namespaces = namespaces
        self.landlock = landlock
        self.drop_uid = drop_uid
        self.require = tuple(require)
        self.tmp_root = tmp_root
        bad = [r for r in self.require if r not in ("uid", "namespaces", "landlock", "seccomp")]
        if bad:
            raise ValueError(f"require: unknown sandbox layer(s) {bad}; known: uid, namespaces, landlock, seccomp")

    # ------------------------------------------------------------------------------------------- setup
    def _key(self) -> tuple:
        return (self.python, self.namespaces, self.landlock, self.drop_uid, self.tmp_root)

    def _candidates(self) -> list[str]:
        if self.python:
            return [self.python]
        seen, out = set(), []
        for c in (sys.executable, getattr(sys, "_base_executable", None), shutil.which("python3"), "/usr/bin/python3"):
            if c and os.path.exists(c) and os.path.realpath(c) not in seen:
                seen.add(os.path.realpath(c))
                out.append(c)
        return out

    def setup(self) -> tuple[str, list[str], dict]:
        """Choose the interpreter by running a probe program under full confinement (cached per process)."""
        key = self._key()
        if key in Sandbox._probe_cache:
            return Sandbox._probe_cache[key]
        errors = []
        for python in self._candidates():
            prefixes = _interpreter_prefixes(python)
            if prefixes is None:
                errors.append(f"{python}: does not run")
                continue
            ro = list(dict.fromkeys([p for p in _SYSTEM_RO if os.path.exists(p)] + prefixes))
            res = self._run(python, ro, _PROBE_SOURCE, "stdio", b"", None, 0, Limits(timeout_s=30.0, memory_mb=1024))
            if res.ok and res.stdout.startswith(b"ok "):
                Sandbox._probe_cache[key] = (python, ro, res.layers)
                return Sandbox._probe_cache[key]
            why = "timeout" if res.timed_out else one_line(res.stderr.decode(errors="replace")[-300:]) or f"exit {res.returncode}"
            errors.append(f"{python}: {why}")
        raise SandboxError("no Python interpreter works inside the sandbox: " + "; ".join(errors))

    def info(self) -> dict[str, Any]:
        python, ro, layers = self.setup()
        return {"python": python, "euid": os.geteuid(), "readable_paths": ro, "layers": layers}

    # --------------------------------------------------------------------------------------------- run
    def run(
        self,
        source: str,
        *,
        mode: str = "stdio",
        stdin: bytes = b"",
        tests: list[str] | None = None,
        start: int = 0,
    ) -> RunResult:
        """Run ``source`` once. ``mode``: "stdio" (program reads ``stdin``) or "asserts" (then ``tests``)."""
        python, ro, probe_layers = self.setup()
        self._check_required(probe_layers)  # before running anything with less isolation than required
        res = self._run(python, ro, source, mode, stdin, tests, start, self.limits)
        if not res.layers:  # the status line precedes the program: no line means the confinement failed
            tail = one_line(res.stderr.decode(errors="replace")[-300:]) or ("timeout" if res.timed_out else f"exit {res.returncode}")
            raise SandboxError(f"sandbox setup failed before the program ran: {tail}")
        self._check_required(res.layers)
        return res

    def _check_required(self, layers: dict[str, Any]) -> None:
        missing = [r for r in self.require if not layers.get(r)]
        if missing:
            raise SandboxError(f"required sandbox layer(s) unavailable here: {', '.join(missing)}")

    def _run(self, python, ro, source, mode, stdin, tests, start, limits: Limits) -> RunResult:
        is_root = os.geteuid() == 0
        uid = _pick_uid() if (is_root and self.drop_uid) else None
        nonce = secrets.token_hex(16)
        marker = f"PRM_RL_SANDBOX={secrets.token_hex(12)}"
        tmp = tempfile.mkdtemp(prefix="prm_rl_sbx_", dir=self.tmp_root)
        proc = None
        r_fd = w_fd = -1
        t0 = time.monotonic()
        try:
            os.chmod(tmp, 0o711)
            work = os.path.join(tmp, "work")
            os.mkdir(work, 0o700)
            if uid is not None:
                os.chown(work, uid, uid)
            cpu = limits.cpu_s if limits.cpu_s is not None else limits.timeout_s
            r_fd, w_fd = os.pipe()
            cfg = {
                "mode": mode,
                "source": source,
                "tests": tests or [],
                "start": start,
                "nonce": nonce,
                "uid": uid,
                "work": work,
                "result_fd": w_fd,
                "namespaces": self.namespaces,
                "landlock": self.landlock,
                "ro_paths": ro,
                "limits": {
                    "memory_bytes": int(limits.memory_mb) << 20,
                    "cpu_s": max(1, int(-(-cpu // 1))),
                    "file_bytes": int(limits.max_file_mb) << 20,
                    "nofile": int(limits.max_open_files),
                    "nproc": int(limits.max_procs),
                    "nproc_shared": (0 if is_root else _user_task_count(os.getuid())) + int(limits.max_procs),
                },
            }
            cfg_path = os.path.join(tmp, "cfg.json")
            fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(cfg, f)
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": work,
                "TMPDIR": work,
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8",
                marker.split("=")[0]: marker.split("=")[1],
            }
            proc = subprocess.Popen(
                [python, "-I", "-B", _BOOT, cfg_path],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work,
                env=env,
                start_new_session=True,
                pass_fds=(w_fd,),
                close_fds=True,
            )
            os.close(w_fd)
            w_fd = -1
            out = self._communicate(proc, r_fd, stdin, limits, t0)
            r_fd = -1  # closed by _communicate
            returncode = self._kill(proc, uid, marker.encode())
            proc = None
            if out["timed_out"] or out["exceeded"]:
                returncode = None
            return self._result(out, returncode, nonce, t0)
        except SandboxError:
            raise
        except OSError as e:
            raise SandboxError(f"sandbox start failed: {one_line(e)}") from e
        finally:
            for fd in (r_fd, w_fd):
                if fd >= 0:
                    os.close(fd)
            if proc is not None:  # interrupted (exception, soft timeout of the caller)
                self._kill(proc, uid, marker.encode())
            _rmtree(tmp)

    @staticmethod
    def _exited(pid: int) -> bool:
        """Has our child ``pid`` ended? (without reaping it, so its pid and pgid stay reserved)"""
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    @classmethod
    def _kill(cls, proc: subprocess.Popen, uid: int | None, marker: bytes) -> int:
        """End the run's whole process tree; returns the launcher's exit status."""
        if not cls._exited(proc.pid):
            # A pid-namespace supervisor SIGKILLs its child (and with it the namespace) on SIGTERM and then
            # exits; without a supervisor this just signals the program, which the SIGKILLs below finish.
            try:
                proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
            end = time.monotonic() + 0.5
            while time.monotonic() < end and not cls._exited(proc.pid):
                time.sleep(0.005)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher is not reaped yet: its pgid is still ours
        except OSError:
            pass
        try:
            proc.kill()
        except OSError:
            pass
        returncode = proc.wait()
        if uid is not None:
            _kill_all(lambda: _pids_of_uid(uid))
        else:
            _kill_all(lambda: _pids_with_marker(marker), rounds=50)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return returncode

    @classmethod
    def _communicate(cls, proc: subprocess.Popen, r_fd: int, stdin: bytes, limits: Limits, t0: float) -> dict:
        deadline = t0 + limits.timeout_s
        sel = selectors.DefaultSelector()
        bufs = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
        streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", r_fd: "result"}
        for fd, name in streams.items():
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, name)
        in_view = memoryview(stdin)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        pidfd = None
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            pass
        timed_out = exceeded = False
        exited_at = None
        open_reads = 3
        try:
            while True:
                now = time.monotonic()
                if exited_at is None and pidfd is None and cls._exited(proc.pid):
                    exited_at = now
                if exited_at is not None and (open_reads == 0 or now - exited_at > 0.2):
                    break  # ended; stragglers holding the pipes are killed by the caller
                if now >= deadline:
                    timed_out = exited_at is None
                    break
                wait = deadline - now
                if pidfd is None:
                    wait = min(wait, 0.01)
                if exited_at is not None:
                    wait = min(wait, 0.2)
                for key, _ in sel.select(wait):
                    name = key.data
                    if name == "exit":
                        exited_at = time.monotonic()
                        sel.unregister(key.fd)
                    elif name == "stdin":
                        try:
                            n = os.write(key.fd, in_view[:65536])
                            in_view = in_view[n:]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            in_view = in_view[:0]
                        if not len(in_view):
                            sel.unregister(key.fd)
                            proc.stdin.close()
                    else:
                        try:
                            chunk = os.read(key.fd, 65536)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            sel.unregister(key.fd)
                            open_reads -= 1
                            continue
                        bufs[name] += chunk
                        if name != "result" and len(bufs["stdout"]) + len(bufs["stderr"]) > limits.max_output_bytes:
                            exceeded = True
                        if name == "result" and len(bufs["result"]) > (1 << 20):
                            exceeded = True
                if exceeded:
                    break
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
            os.close(r_fd)
        return {
            "timed_out": timed_out,
            "exceeded": exceeded,
            "stdout": bytes(bufs["stdout"][: limits.max_output_bytes]),
            "stderr": bytes(bufs["stderr"][-65536:]),
            "result": bytes(bufs["result"]),
        }

    @staticmethod
    def _result(out: dict, returncode: int | None, nonce: str, t0: float) -> RunResult:
        layers, results, detail = {}, [], None
        for line in out["result"].decode(errors="replace").splitlines():
            if line.startswith("S ") and not layers:
                try:
                    layers = json.loads(line[2:])
                except ValueError:
                    pass
            elif line.startswith("C "):
                pass
            elif line.startswith("X ") and detail is None:
                detail = line[2:].strip()
            elif line.startswith(nonce + " "):
                results.append(line[len(nonce) + 1 :].strip())
        return RunResult(
            returncode=returncode,
            timed_out=out["timed_out"],
            output_exceeded=out["exceeded"],
            stdout=out["stdout"],
            stderr=out["stderr"],
            results=results,
            layers=layers,
            wall_s=time.monotonic() - t0,
            exit_detail=detail,
        )


def sandbox_info(**kwargs: Any) -> dict[str, Any]:
    """Which interpreter and confinement layers a :class:`Sandbox` with these options gets on this machine."""
    return Sandbox(**kwargs).info()
