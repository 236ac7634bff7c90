"""The code verifier and its sandbox: real subprocesses, hostile programs, both test formats."""
import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from prm_rl.rewards.code_verifier import extract_code, outputs_match, parse_tests, verify_code
from prm_rl.rewards.base import SandboxError
from prm_rl.rewards.sandbox import Limits, Sandbox, sandbox_info
from prm_rl.rewards.selftest import live_processes_mentioning

RUN = dict(timeout_s=3.0, memory_mb=512)


def block(code):
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


def io(pairs):
    return {"tests": [{"input": i, "output": o} for i, o in pairs]}


@pytest.fixture(scope="module")
def layers():
    return sandbox_info()["layers"]


@pytest.fixture
def tmp_root():
    """Where the sandbox puts its private dirs for this test: must be empty and unused afterwards."""
    root = tempfile.mkdtemp(prefix="prm_rl_test_sbx_")
    os.chmod(root, 0o711)
    yield root
    time.sleep(0.05)
    left_dirs = os.listdir(root)
    left_procs = live_processes_mentioning(root)
    shutil.rmtree(root, ignore_errors=True)
    assert left_dirs == [], f"sandbox temp dirs not removed: {left_dirs}"
    assert left_procs == [], f"sandbox processes left running: {left_procs}"


# Landlock ABI versions that added what a layer name needs (network rules: 4; signal and socket scoping: 6).
_LANDLOCK_ABI = {"landlock": 1, "landlock_net": 4, "landlock_scoped": 6}


def _kernel_offers(name: str) -> bool:
    """Evidence, independent of the sandbox's own probe, that this machine offers a layer: if it does, a
    containment test must run, not skip (a skip would hide a sandbox that failed to use what is there)."""
    if name == "namespaces":
        return shutil.which("unshare") is not None and subprocess.run(
            ["unshare", "-rnp", "--fork", "true"], capture_output=True).returncode == 0
    if name in _LANDLOCK_ABI:
        # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION): syscall 444 on x86_64 and aarch64.
        abi = ctypes.CDLL(None, use_errno=True).syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        return abi >= _LANDLOCK_ABI[name]
    return False  # uid, seccomp: no second probe here


def _active(layers, name: str) -> bool:
    """Does the sandbox report ``name`` active (``landlock_net``/``landlock_scoped``: Landlock with that part)?"""
    if name in ("landlock_net", "landlock_scoped"):
        return bool(layers.get("landlock") and layers["landlock"].get(name.split("_")[1]))
    return bool(layers.get(name))


def _need(layers, *names):
    """Skip unless at least one of the named layers is active here (docs/verifiers.md: what holds where); fail
    instead where the kernel offers one of them but the sandbox did not take it."""
    if not any(_active(layers, n) for n in names):
        offered = [n for n in names if _kernel_offers(n)]
        if offered:
            pytest.fail(f"the kernel offers {offered} but the sandbox reports none of {names} active: {layers}")
        pytest.skip(f"none of the sandbox layers {names} is available on this machine")


@pytest.mark.parametrize("name", ["namespaces", "landlock", "landlock_net", "landlock_scoped"])
def test_the_second_probe_agrees_with_the_sandbox(layers, name):
    """Where the kernel offers a layer the sandbox uses it (so the containment tests below cannot skip)."""
    if _kernel_offers(name):
        assert _active(layers, name), f"the kernel offers {name}, the sandbox does not use it: {layers}"


# --------------------------------------------------------------------------------------- passing / partial
def test_asserts_all_pass(tmp_root):
    code = "def add(a, b):\n    return a + b\n"
    v = verify_code("", block(code), {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}, tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0 and v.reason is None


def test_asserts_partial(tmp_root):
    code = "def sq(x):\n    return x * x if x < 3 else 0\n"
    tests = [f"assert sq({i}) == {i * i}" for i in range(5)]
    v = verify_code("", block(code), {"tests": tests}, tmp_root=tmp_root, **RUN)
    assert float(v) == pytest.approx(3 / 5)
    assert "passed 3/5" in v.reason


def test_asserts_main_block_does_not_run_and_tests_see_solution_namespace(tmp_root):
    code = "def f():\n    return 1\nif __name__ == '__main__':\n    input()\n"
    v = verify_code("", block(code), {"tests": ["assert f() == 1"]}, tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0


def test_stdio_all_pass(tmp_root):
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    v = verify_code("", block(code), io([("1 2\n", "3\n"), ("5 5", "10"), ("-1 1\n", "0")]), tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0


def test_stdio_partial(tmp_root):
    code = "n = int(input())\nprint(n * 2 if n % 2 == 0 else n)\n"
    v = verify_code("", block(code), io([(f"{i}\n", f"{2 * i}\n") for i in range(4)]), tmp_root=tmp_root, **RUN)
    assert float(v) == pytest.approx(0.5)  # 0 and 2 pass, 1 and 3 fail
    assert "wrong output" in v.reason


def test_stdio_apps_style_dict_and_json_string(tmp_root):
    code = "print(input()[::-1])\n"
    v = verify_code("", block(code), {"tests": {"inputs": ["abc\n", "xy\n"], "outputs": ["cba\n", "yx\n"]}}, tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0
    v = verify_code("", block(code), {"tests": '[{"input": "ab\\n", "output": "ba"}]'}, tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0


def test_first_ten_rule(tmp_root):
    # 12 tests; f is wrong only on x == 10 (the 11th test): all do not pass, the first 10 do -> 1.0
    code = "def f(x):\n    return -1 if x == 10 else x\n"
    tests = [f"assert f({i}) == {i}" for i in range(12)]
    v = verify_code("", block(code), {"tests": tests}, tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0 and "beyond the first 10" in v.reason
    assert float(verify_code("", block(code), {"tests": tests}, partial="all", tmp_root=tmp_root, **RUN)) == pytest.approx(11 / 12)
    assert float(verify_code("", block(code), {"tests": tests}, partial="none", tmp_root=tmp_root, **RUN)) == 0.0
    # wrong on three of the first ten -> 7/10
    code = "def f(x):\n    return -1 if x in (1, 4, 7) else x\n"
    v = verify_code("", block(code), {"tests": tests}, tmp_root=tmp_root, **RUN)
    assert float(v) == pytest.approx(0.7)


def test_a_hanging_assert_fails_alone_and_later_tests_still_count(tmp_root):
    code = "def f(x):\n    while x == 2:\n        pass\n    return x\n"
    tests = [f"assert f({i}) == {i}" for i in range(5)]
    t0 = time.monotonic()
    v = verify_code("", block(code), {"tests": tests}, tmp_root=tmp_root, timeout_s=1.0, memory_mb=512)
    assert float(v) == pytest.approx(4 / 5)
    assert "test 3" in v.reason and "timeout" in v.reason
    assert time.monotonic() - t0 < 8


def test_a_test_that_exits_the_process_fails_alone(tmp_root):
    code = "import os\ndef f(x):\n    if x == 1:\n        os._exit(0)\n    return x\n"
    v = verify_code("", block(code), {"tests": [f"assert f({i}) == {i}" for i in range(3)]}, tmp_root=tmp_root, **RUN)
    assert float(v) == pytest.approx(2 / 3)


def test_no_code_block_and_broken_programs_score_zero(tmp_root):
    tests = {"tests": ["assert True"]}
    v = verify_code("", "I would write some code here.", tests, tmp_root=tmp_root, **RUN)
    assert float(v) == 0.0 and v.reason == "no ```python block"
    v = verify_code("", block("def f(:\n    pass"), tests, tmp_root=tmp_root, **RUN)
    assert float(v) == 0.0 and "SyntaxError" in v.reason
    v = verify_code("", block("raise SystemExit(3)"), tests, tmp_root=tmp_root, **RUN)
    assert float(v) == 0.0 and "exit 3" in v.reason
    v = verify_code("", block("import sys; sys.exit(1)"), io([("", "")]), tmp_root=tmp_root, **RUN)
    assert float(v) == 0.0


# ------------------------------------------------------------------------------------------------ hostile
def test_write_into_private_run_dir_is_contained(tmp_root, layers):
    _need(layers, "uid", "landlock")
    run_dir = tempfile.mkdtemp(prefix="prm_rl_test_run_")  # 0700, owned by the trainer's user
    try:
        target = os.path.join(run_dir, "checkpoint.pt")
        code = f"open({target!r}, 'w').write('overwritten')\nprint('done')\n"
        v = verify_code("", block(code), io([("", "done")]), tmp_root=tmp_root, **RUN)
        assert float(v) == 0.0
        assert not os.path.exists(target)
    finally:
        shutil.rmtree(run_dir)


def test_write_to_world_writable_dir_is_contained(tmp_root, layers):
    _need(layers, "landlock")
    open_dir = tempfile.mkdtemp(prefix="prm_rl_test_open_")
    os.chmod(open_dir, 0o777)
    try:
        target = os.path.join(open_dir, "planted.txt")
        code = f"open({target!r}, 'w').write('x')\nprint('done')\n"
        v = verify_code("", block(code), io([("", "done")]), tmp_root=tmp_root, **RUN)
        assert float(v) == 0.0
        assert not os.path.exists(target)
    finally:
        shutil.rmtree(open_dir)


@pytest.mark.parametrize("mode, needs", [(0o700, ("uid", "landlock")), (0o755, ("landlock",))])
def test_reading_the_run_dir_is_contained(tmp_root, layers, mode, needs):
    _need(layers, *needs)
    run_dir = tempfile.mkdtemp(prefix="prm_rl_test_run_")
    os.chmod(run_dir, mode)
    try:
        secret = os.path.join(run_dir, "secret.txt")
        with open(secret, "w") as f:
            f.write("hunter2")
        os.chmod(secret, 0o644)
        code = f"print(open({secret!r}).read())\n"
        assert float(verify_code("", block(code), io([("", "hunter2")]), tmp_root=tmp_root, **RUN)) == 0.0
        listing = f"import os\nprint(sorted(os.listdir({run_dir!r})))\n"
        assert float(verify_code("", block(listing), io([("", "['secret.txt']")]), tmp_root=tmp_root, **RUN)) == 0.0
    finally:
        shutil.rmtree(run_dir)


def test_network_is_contained(tmp_root, layers):
    _need(layers, "seccomp", "namespaces", "landlock_net")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    received, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            received.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')\nprint('sent')\n"
        v = verify_code("", block(code), io([("", "sent")]), tmp_root=tmp_root, **RUN)
        assert float(v) == 0.0
        time.sleep(0.3)
        assert received == []
    finally:
        stop.set()
        thread.join(2)
        server.close()


def test_fork_bomb_is_contained(tmp_root):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    v = verify_code("", block(code), io([("", "x")]), tmp_root=tmp_root, timeout_s=1.5, max_procs=8, memory_mb=256)
    assert float(v) == 0.0
    assert time.monotonic() - t0 < 15
    # the tmp_root fixture asserts that no process of this run is left


def test_detached_background_process_is_killed(tmp_root):
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')\n"
    v = verify_code("", block(code), io([("", "parent done")]), tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0  # the program itself is fine; its daemon must still be gone (fixture)


def test_memory_limit(tmp_root):
    code = "x = bytearray(1500 * 1024 * 1024)\nprint('allocated')\n"
    v = verify_code("", block(code), io([("", "allocated")]), tmp_root=tmp_root, timeout_s=5.0, memory_mb=256)
    assert float(v) == 0.0 and "MemoryError" in v.reason


def test_infinite_loop_times_out(tmp_root):
    t0 = time.monotonic()
    v = verify_code("", block("while True:\n    pass\n"), io([("", "")]), tmp_root=tmp_root, timeout_s=1.0, memory_mb=256)
    assert float(v) == 0.0 and "timeout" in v.reason
    assert time.monotonic() - t0 < 6


def test_sleeping_program_times_out_on_wall_clock(tmp_root):
    v = verify_code("", block("import time\ntime.sleep(60)\n"), {"tests": ["assert True"]}, tmp_root=tmp_root, timeout_s=1.0)
    assert float(v) == 0.0 and "timeout" in v.reason


def test_huge_output_is_capped(tmp_root):
    t0 = time.monotonic()
    code = "while True:\n    print('x' * 10000)\n"
    v = verify_code("", block(code), io([("", "x")]), tmp_root=tmp_root, max_output_bytes=200_000, **RUN)
    assert float(v) == 0.0 and "output limit" in v.reason
    assert time.monotonic() - t0 < 3


def test_cannot_signal_the_host(tmp_root, layers):
    _need(layers, "uid", "namespaces", "landlock_scoped")
    code = f"import os\nos.kill({os.getpid()}, 0)\nprint('reachable')\n"
    assert float(verify_code("", block(code), io([("", "reachable")]), tmp_root=tmp_root, **RUN)) == 0.0


def test_sandbox_reports_its_layers_and_private_cwd(tmp_root):
    res = Sandbox(Limits(timeout_s=3.0), tmp_root=tmp_root).run("import os\nprint(os.getcwd())\n")
    assert res.ok
    cwd = res.stdout.decode().strip()
    assert cwd.startswith(tmp_root) and cwd.endswith("/work")
    assert set(res.layers) >= {"uid", "namespaces", "landlock", "seccomp", "nproc"}
    assert not os.path.exists(cwd)


def test_require_unknown_layer_is_rejected():
    with pytest.raises(ValueError, match="unknown sandbox layer"):
        Sandbox(require=["selinux"])


# ------------------------------------------------------------------------------------------ helpers
def test_extract_code_takes_the_last_closed_python_block():
    text = "```python\na = 1\n```\n```js\nb\n```\n```py\nc = 3\n```\n```python\nunclosed"
    assert extract_code(text) == "c = 3\n"
    assert extract_code("```\nplain\n```") is None


@pytest.mark.parametrize(
    "got, expected, same",
    [
        ("3\n", "3", True),
        ("1 2  \n3\n\n", "1 2\n3", True),
        ("1\n2\n", "1 2", True),  # token-wise
        ("0.3333333\n", "0.33333333", True),  # numeric within 1e-6
        ("0.33\n", "0.3333", False),
        ("YES", "yes", False),
        ("", "0", False),
    ],
)
def test_outputs_match(got, expected, same):
    assert outputs_match(got, expected) is same


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "fields\\['tests'\\] is missing"),
        ({"tests": []}, "non-empty list"),
        ({"tests": ["assert True", {"input": "", "output": ""}]}, "same form"),
        ({"tests": [{"input": "1"}]}, "tests'\\]\\[0\\]"),
        ({"tests": "not json"}, "not JSON"),
        ({"tests": {"inputs": ["1"], "outputs": []}}, "equal length"),
    ],
)
def test_bad_tests_field_raises(fields, message):
    with pytest.raises(ValueError, match=message):
        parse_tests(fields)


def test_required_layers_are_enforced_before_running(tmp_root, layers):
    present = [k for k in ("uid", "namespaces", "landlock", "seccomp") if layers.get(k)]
    v = verify_code("", block("print(1)"), io([("", "1")]), require=present, tmp_root=tmp_root, **RUN)
    assert float(v) == 1.0
    sb = Sandbox(Limits(timeout_s=3.0), landlock=False, require=["landlock"], tmp_root=tmp_root)
    with pytest.raises(SandboxError, match="required sandbox layer\\(s\\) unavailable here: landlock"):
        sb.run("open('/tmp/should_not_run_prm_rl', 'w')")
    assert not os.path.exists("/tmp/should_not_run_prm_rl")


@pytest.mark.parametrize(
    "hack",
    [
        "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
        "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n",
        "import os\n_w = os.write\nos.write = lambda fd, b: _w(fd, b.replace(b' F', b' P'))\n",
        "import os\nfor i in range(10):\n    os.write(3, b'%d P\\n' % i)\n",
    ],
)
def test_casual_tampering_with_the_assert_harness_does_not_pass_tests(tmp_root, hack):
    code = hack + "def f(x):\n    return 0\n"
    v = verify_code("", block(code), {"tests": [f"assert f({i}) == {i + 1}" for i in range(3)]}, tmp_root=tmp_root, **RUN)
    assert float(v) == 0.0


@pytest.mark.parametrize(
    "hack, tests",
    [  # a result whose __eq__ is always true: every `assert f(x) == y` passed, scored 1.0 (issue 12)
        ("class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
         "def f(x):\n    return Any()\n", [f"assert f({i}) == {i + 1}" for i in range(3)]),
        ("class Yes(int):\n    def __eq__(self, other):\n        return True\n"
         "def f(x):\n    return Yes(0)\n", [f"assert f({i}) == {i + 1}" for i in range(3)]),
        ("class Yes:\n    def __bool__(self):\n        return True\n"
         "def f(x):\n    return Yes()\n", [f"assert f({i})" for i in range(3)]),
        ("class Zero:\n    def __sub__(self, other):\n        return 0.0\n"
         "def f(x):\n    return Zero()\n", [f"assert abs(f({i}) - {i}.5) < 1e-9" for i in range(3)]),
        ("class No:\n    def __bool__(self):\n        return False\n"
         "def f(x):\n    return No()\n", [f"assert not f({i})" for i in range(3)]),
        ("all = lambda *a: True\ndef f(x):\n    return 0\n", [f"assert all([f({i}) == {i + 1}])" for i in range(3)]),
        ("import builtins\nbuiltins.all = lambda *a: True\ndef f(x):\n    return 0\n",
         [f"assert all([f({i}) == {i + 1}])" for i in range(3)]),
        ("def f(x):\n    return [Any()]\nclass Any:\n    def __eq__(self, other):\n        return True\n",
         [f"assert f({i}) == [{i + 1}]" for i in range(3)]),
    ],
    ids=["eq-always-true", "int-subclass", "bool-always-true", "sub-to-zero", "bool-always-false",
         "shadowed-builtin", "patched-builtin", "nested-in-a-list"],
)
def test_results_that_fake_equality_or_truth_pass_no_test(tmp_root, hack, tests):
    assert float(verify_code("", block(hack), {"tests": tests}, tmp_root=tmp_root, **RUN)) == 0.0


def test_plain_results_in_every_test_shape_still_pass(tmp_root):
    code = ("def f(x):\n    return x + 0.5\n"
            "def pair(x):\n    return (x, {'k': [x, None]}, {x}, b'x', 2j)\n"
            "def apply(g, x):\n    return g(x)\n"
            "LIMIT = 3\n"
            "COUNT = 0\n"
            "def bump():\n    global COUNT\n    COUNT += 1\n")
    tests = ["assert abs(f(1) - 1.5) < 1e-9", "assert f(1) in [1.5, 2.5]", "assert not f(-0.5)",
             "assert pair(1) == (1, {'k': [1, None]}, {1}, b'x', 2j)", "assert pair(1)[1]['k'][0] == 1",
             "assert apply(f, 2) == 2.5", "assert all(f(i) == i + 0.5 for i in range(3))",
             "assert sorted([f(2), f(1)]) == [1.5, 2.5]", "assert LIMIT == 3", "x = f(0)", "assert x == 0.5",
             "assert f(1) is not None and 0 < f(1) < 2", "bump()", "assert COUNT == 1"]
    v = verify_code("", block(code), {"tests": tests}, tmp_root=tmp_root, partial="all", **RUN)
    assert float(v) == 1.0, v.reason
