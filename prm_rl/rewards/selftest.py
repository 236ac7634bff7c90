"""Run hostile programs in the code sandbox and report what is contained on *this* machine.

``python -m prm_rl.cli.verify --sandbox-selftest`` prints one JSON object: the layers the sandbox got and, per
attack, ``"contained"`` or ``"NOT contained"``. This is how the table in docs/verifiers.md was measured;
run it on a new cluster before trusting code rewards there. Takes a few seconds (the fork bomb runs until
its time limit).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

from prm_rl.rewards.sandbox import Limits, Sandbox

__all__ = ["sandbox_selftest"]


def live_processes_mentioning(text: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``text``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text.encode() in cmd and state not in (b"Z", b"X"):
            pids.append(int(pid))
    return pids


def sandbox_selftest(**sandbox_options: Any) -> dict[str, Any]:
    """Attack the sandbox (built with ``sandbox_options``) and report, per attack, whether it was contained."""
    base = tempfile.mkdtemp(prefix="prm_rl_selftest_")
    os.chmod(base, 0o711)
    tmp_root = os.path.join(base, "sandboxes")
    os.mkdir(tmp_root, 0o711)
    open_dir = os.path.join(base, "open")  # 0755 dir, 0644 file: protected by Landlock only
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o755)
    private_dir = os.path.join(base, "private")  # 0700 dir of the trainer's user
    os.mkdir(private_dir, 0o700)
    world_dir = os.path.join(base, "world")  # 0777: writable by anyone without Landlock
    os.mkdir(world_dir)
    os.chmod(world_dir, 0o777)
    for d in (open_dir, private_dir):
        with open(os.path.join(d, "secret.txt"), "w") as f:
            f.write("hunter2")
        os.chmod(os.path.join(d, "secret.txt"), 0o644)

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            received.append(conn.recv(100) or b"<connected>")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    planted = os.path.join(world_dir, "planted.txt")
    tmp_file = os.path.join(tempfile.gettempdir(), f"prm_rl_selftest_{os.getpid()}.txt")
    attacks = {
        "read_0644_file_in_0755_dir": (f"print(open({os.path.join(open_dir, 'secret.txt')!r}).read())", lambda r: b"hunter2" not in r.stdout),
        "read_file_in_0700_dir": (f"print(open({os.path.join(private_dir, 'secret.txt')!r}).read())", lambda r: b"hunter2" not in r.stdout),
        "write_into_0777_dir": (f"open({planted!r}, 'w').write('x')", lambda r: not os.path.exists(planted)),
        "write_into_tmp": (f"open({tmp_file!r}, 'w').write('x')", lambda r: not os.path.exists(tmp_file)),
        "tcp_connect_to_host": (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')",
            lambda r: (time.sleep(0.2), not received)[1],
        ),
        "signal_the_host": (f"import os\nos.kill({os.getpid()}, 0)\nprint('reachable')", lambda r: b"reachable" not in r.stdout),
        "memory_over_limit": ("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", lambda r: b"allocated" not in r.stdout),
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", None),
        "setsid_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)", None),
        "huge_output": ("while True:\n    print('x' * 10000)", lambda r: r.output_exceeded and len(r.stdout) <= 1 << 20),
    }
    report: dict[str, Any] = {}
    try:
        sandbox = Sandbox(Limits(timeout_s=1.5, memory_mb=256, max_procs=16), tmp_root=tmp_root, **sandbox_options)
        report["info"] = sandbox.info()
        results = {}
        for name, (source, contained) in attacks.items():
            res = sandbox.run(source)
            time.sleep(0.05)
            ok = contained(res) if contained is not None else True
            ok = ok and not live_processes_mentioning(tmp_root) and not os.listdir(tmp_root)
            results[name] = "contained" if ok else "NOT contained"
        report["attacks"] = results
    finally:
        stop.set()
        thread.join(2)
        server.close()
        shutil.rmtree(base, ignore_errors=True)
        if os.path.exists(tmp_file):
            os.remove(tmp_file)
    return report
