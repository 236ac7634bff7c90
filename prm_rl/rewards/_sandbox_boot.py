"""Inside the code sandbox: confine this process, then run the untrusted program in it.

Started by :mod:`prm_rl.rewards.sandbox` as ``PYTHON -I -B _sandbox_boot.py CONFIG.json`` in a new session,
with the private work directory as cwd. Standard library only and Python >= 3.8 syntax: it may run under
a different interpreter than the trainer's. Steps, each recorded in the status line sent back:

1. read and delete the config file; ask for SIGKILL when the parent dies (PR_SET_PDEATHSIG);
2. namespaces: as root, ``unshare(CLONE_NEWNET | CLONE_NEWPID)``; otherwise (or when that is refused,
   after dropping to the sandbox uid) a new user namespace with them. With a pid namespace the process
   forks: the parent stays outside as a tiny supervisor that relays the exit status, the child becomes
   pid 1 of the namespace, so when it ends the kernel kills every process left inside;
3. resource limits (RLIMIT_AS, CPU, FSIZE, NOFILE, NPROC, CORE);
4. as root: drop to the exclusive sandbox uid/gid with no supplementary groups;
5. Landlock (when the kernel has it): read-only access to the interpreter's prefix and the system
   directories, read-write access to the work directory only; TCP bind/connect denied (ABI >= 4);
   abstract unix sockets and signals scoped to the sandbox (ABI >= 6);
6. seccomp filter: socket(), io_uring, ptrace, process_vm_readv/writev, bpf, perf_event_open,
   userfaultfd fail with EACCES; any other syscall ABI (32-bit, x32) kills the process;
7. run the program: ``mode == "stdio"`` runs it as ``__main__`` on the given stdin; ``mode == "asserts"``
   runs it as module ``solution`` and then each test statement with the solution's names in scope,
   reporting ``NONCE INDEX P|F`` per test on the result pipe. Every value a test's operators act on
   (comparison, arithmetic, ``not``/``and``/``or``, indexing, the assert itself) must be built of plain
   builtin types, else the test fails (see :func:`_plain`), and builtins resolve to their state before
   the program ran: a returned object whose ``__eq__`` is always true, a patched ``builtins.all`` or a
   solution-level ``all = ...`` passes nothing.
"""
import ast
import builtins
import ctypes
import errno
import json
import os
import platform
import resource
import signal
import struct
import sys
import types

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return _libc.prctl(option, arg2, arg3, arg4, arg5)


def _unshare(flags):
    return _libc.unshare(ctypes.c_int(flags)) == 0


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- landlock
LL_CREATE, LL_ADD_RULE, LL_RESTRICT = 444, 445, 446
LL_RULE_PATH_BENEATH = 1
LL_FS_EXECUTE, LL_FS_WRITE_FILE, LL_FS_READ_FILE, LL_FS_READ_DIR = 1, 2, 4, 8
LL_FS_TRUNCATE, LL_FS_IOCTL_DEV = 1 << 14, 1 << 15


def _ll_fs_all(abi):
    bits = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        bits |= 1 << 13  # REFER
    if abi >= 3:
        bits |= LL_FS_TRUNCATE
    if abi >= 5:
        bits |= LL_FS_IOCTL_DEV
    return bits


def open_rule_paths(ro_paths, rw_paths, dev_rw, dev_ro):
    """O_PATH descriptors for the Landlock rules, opened early (as root, before the uid drop, when root):
    the sandbox uid may not be able to traverse to them, e.g. a work dir below a private directory."""
    out = []
    for kind, paths in (("ro", ro_paths), ("rw", rw_paths), ("dev_rw", dev_rw), ("dev_ro", dev_ro)):
        for p in paths:
            try:
                out.append((kind, p, os.open(p, os.O_PATH | os.O_CLOEXEC), os.path.isdir(p)))
            except OSError:
                pass
    return out


def landlock(rules):
    """Apply Landlock with the pre-opened ``rules``; returns a description dict, or None when unavailable."""
    abi = _libc.syscall(LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return None
    fs_all = _ll_fs_all(abi)
    file_rights = LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE
    if abi >= 3:
        file_rights |= LL_FS_TRUNCATE
    if abi >= 5:
        file_rights |= LL_FS_IOCTL_DEV
    net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, never granted
    scoped = 3 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
    if abi >= 6:
        attr = struct.pack("QQQ", fs_all, net, scoped)
    elif abi >= 4:
        attr = struct.pack("QQ", fs_all, net)
    else:
        attr = struct.pack("Q", fs_all)
    buf = ctypes.create_string_buffer(attr, len(attr))
    rs = _libc.syscall(LL_CREATE, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if rs < 0:
        return None
    ro = LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR
    wanted = {"ro": ro, "rw": fs_all, "dev_rw": file_rights & ~LL_FS_EXECUTE, "dev_ro": LL_FS_READ_FILE}
    for kind, _path, fd, is_dir in rules:
        rights = wanted[kind] if is_dir else wanted[kind] & file_rights
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & fs_all, fd), 12)
        _libc.syscall(LL_ADD_RULE, ctypes.c_int(rs), ctypes.c_int(LL_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0))
    ok = _libc.syscall(LL_RESTRICT, ctypes.c_int(rs), ctypes.c_uint32(0)) == 0
    os.close(rs)
    return {"abi": abi, "net": bool(net), "scoped": bool(scoped)} if ok else None


# ----------------------------------------------------------------------------------------------- seccomp
_ARCH = {
    # machine: (AUDIT_ARCH, denied syscall numbers, x32 bit check)
    "x86_64": (0xC000003E, [41, 101, 310, 311, 425, 426, 427, 321, 298, 323], True),
    "aarch64": (0xC00000B7, [198, 117, 270, 271, 425, 426, 427, 280, 241, 282], False),
}


def seccomp():
    """Install the deny-list filter; returns True when installed."""
    spec = _ARCH.get(platform.machine())
    if spec is None:
        return False
    arch, denied, x32 = spec
    LD_W_ABS, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    DENY = 0x00050000 | errno.EACCES
    prog = [(LD_W_ABS, 0, 0, 4)]  # seccomp_data.arch
    checks = [(JGE, 0x40000000)] if x32 else []
    checks += [(JEQ, nr) for nr in denied]
    n = len(checks)
    # layout: 0 ld arch | 1 jeq arch | 2 ld nr | 3..3+n-1 checks | allow | deny | kill
    allow_i, deny_i, kill_i = 3 + n, 4 + n, 5 + n
    prog.append((JEQ, 0, kill_i - 2, arch))
    prog.append((LD_W_ABS, 0, 0, 0))  # seccomp_data.nr
    for i, (op, k) in enumerate(checks):
        pc = 3 + i
        prog.append((op, deny_i - pc - 1, 0, k))
    prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, DENY), (RET, 0, 0, KILL)]
    raw = b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in prog)
    filt = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.cast(filt, ctypes.c_void_p))
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    rc = _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)
    return rc == 0


# ------------------------------------------------------------------------------------------- supervisor
def _supervise(child, res_fd):
    """Outside the pid namespace: wait for its pid 1, report how it ended, exit alike.

    SIGTERM (from the parent, at a timeout) makes it SIGKILL its child first: the child is not yet reaped,
    so its pid cannot have been reused, and its death takes the whole pid namespace with it.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def on_term(_signum, _frame):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    try:
        os.write(res_fd, ("C %d\n" % child).encode())
    except OSError:
        pass
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            status = 0
            break
    if os.WIFSIGNALED(status):
        line, code = "X signal %d\n" % os.WTERMSIG(status), 128 + os.WTERMSIG(status)
    else:
        line, code = "X exit %d\n" % os.WEXITSTATUS(status), os.WEXITSTATUS(status)
    try:
        os.write(res_fd, line.encode())
    except OSError:
        pass
    os._exit(code)


def _fork_into_namespace(res_fd):
    pid = os.fork()
    if pid:
        _supervise(pid, res_fd)  # never returns
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- program
def _user_traceback():
    """Print the current exception's traceback without this launcher's own frames."""
    import traceback

    etype, value, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(etype, value, tb)


def _run_stdio(source):
    main = types.ModuleType("__main__")
    main.__file__ = "solution.py"
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv = ["solution.py"]
    try:
        exec(compile(source, "solution.py", "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException:
        _user_traceback()
        sys.stderr.flush()
        sys.exit(1)


_PLAIN_ATOMS = (type(None), bool, int, float, complex, str, bytes)
_PLAIN_CONTAINERS = (list, tuple, set, frozenset)
_GUARD = "__prm_rl_plain__"


class _NotPlain(TypeError):
    pass


def _plain(value, _type=type, _atoms=_PLAIN_ATOMS, _containers=_PLAIN_CONTAINERS, _dict=dict, _id=id):
    """``value`` itself if it and everything inside it has exactly a plain builtin type (no subclasses: their
    operators can be overridden); raises :class:`_NotPlain` otherwise. Defaults bind the builtins it uses."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = _type(item)
        if kind in _atoms:
            continue
        if _id(item) in seen:
            continue
        seen.add(_id(item))
        if kind in _containers:
            stack.extend(item)
        elif kind is _dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            raise _NotPlain("a test operand of type %s is not a plain value" % kind.__name__)
    return value


class _GuardOperands(ast.NodeTransformer):
    """Wrap every operand an operator dispatches on in ``__prm_rl_plain__(...)``."""

    def _wrap(self, node):
        return ast.copy_location(ast.Call(func=ast.Name(id=_GUARD, ctx=ast.Load()), args=[node], keywords=[]), node)

    def visit_Assert(self, node):
        self.generic_visit(node)
        node.test = self._wrap(node.test)
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        node.left = self._wrap(node.left)
        node.comparators = [self._wrap(c) for c in node.comparators]
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        node.left, node.right = self._wrap(node.left), self._wrap(node.right)
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        node.operand = self._wrap(node.operand)
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        node.values = [self._wrap(v) for v in node.values]
        return node

    def visit_Subscript(self, node):
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            node.value = self._wrap(node.value)
        return node


def _compile_test(text, index):
    tree = ast.fix_missing_locations(_GuardOperands().visit(ast.parse(text, "<test %d>" % index, "exec")))
    return compile(tree, "<test %d>" % index, "exec")


def _run_asserts(source, tests, start, res_fd, nonce):
    # Everything the harness uses once the program has run is bound (and every test compiled) before it
    # runs: the program shares this interpreter and could otherwise patch os.write, exec, compile or range
    # to fake passes. This stops casual tampering, not a program that goes looking through its own memory
    # (see docs/verifiers.md: the stdin/stdout form is the one judged outside the sandbox).
    write, exit_now, run_code = os.write, os._exit, exec
    pristine = dict(builtins.__dict__)  # the builtins tests see, whatever the program does to the module
    prefix = ("%s " % nonce).encode()
    compiled = []
    for i in range(start, len(tests)):
        try:
            compiled.append((i, _compile_test(tests[i], i + 1)))
        except BaseException:  # noqa: B902 - a test that does not compile fails
            compiled.append((i, None))

    def report(msg):
        write(res_fd, prefix + msg + b"\n")

    mod = types.ModuleType("solution")
    mod.__file__ = "solution.py"
    mod.__builtins__ = __builtins__
    sys.modules["solution"] = mod
    sys.argv = ["solution.py"]
    namespace = mod.__dict__
    try:
        run_code(compile(source, "solution.py", "exec"), namespace)
    except SystemExit:
        raise
    except BaseException:
        _user_traceback()
        sys.stderr.flush()
        exit_now(1)
    report(b"L")
    # The tests' scope: the solution's names, except those that shadow a builtin, over the saved builtins;
    # refreshed before each test (a function may have changed a global), keeping the names tests assigned.
    scope = {}
    for i, code in compiled:
        scope.update({k: v for k, v in namespace.items() if k not in pristine or k.startswith("__")})
        scope["__builtins__"], scope[_GUARD] = pristine, _plain
        ok = False
        if code is not None:
            try:
                run_code(code, scope)
                ok = True
            except BaseException:  # noqa: B902 - SystemExit/KeyboardInterrupt in a test fail that test
                ok = False
        report(b"%d %s" % (i, b"P" if ok else b"F"))
    report(b"E")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: B902
        pass
    exit_now(0)


def main():
    cfg_path = sys.argv[1]
    with open(cfg_path) as f:
        cfg = json.load(f)
    os.unlink(cfg_path)
    res_fd = cfg["result_fd"]
    os.set_inheritable(res_fd, False)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    rules = []
    if cfg["landlock"]:
        rules = open_rule_paths(cfg["ro_paths"], [cfg["work"]], ["/dev/null"], ["/dev/urandom", "/dev/zero", "/dev/random"])
    layers = {"uid": None, "namespaces": None, "landlock": None, "seccomp": False, "nproc": None}

    if cfg["namespaces"] and os.geteuid() == 0 and _unshare(CLONE_NEWNET | CLONE_NEWPID):
        layers["namespaces"] = "net+pid"
        _fork_into_namespace(res_fd)

    lim = cfg["limits"]

    def setlim(which, value):
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    setlim(resource.RLIMIT_CORE, 0)
    setlim(resource.RLIMIT_AS, lim["memory_bytes"])
    setlim(resource.RLIMIT_CPU, lim["cpu_s"])
    setlim(resource.RLIMIT_FSIZE, lim["file_bytes"])
    setlim(resource.RLIMIT_NOFILE, lim["nofile"])

    uid = cfg.get("uid")
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        layers["uid"] = uid
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the credential change
        # The uid change also made us non-dumpable, which hands /proc/self to root and would stop us from
        # writing our own uid_map below; nothing here is secret from the sandbox uid itself.
        _prctl(PR_SET_DUMPABLE, 1)

    if cfg["namespaces"] and layers["namespaces"] is None:
        my_uid, my_gid = os.getuid(), os.getgid()
        if _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID):
            try:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", "%d %d 1" % (my_uid, my_uid))
                _write("/proc/self/gid_map", "%d %d 1" % (my_gid, my_gid))
                layers["namespaces"] = "user+net+pid"
            except OSError:
                layers["namespaces"] = "user+net+pid (unmapped)"
            _fork_into_namespace(res_fd)

    nproc = lim["nproc"] if (uid is not None or layers["namespaces"]) else lim["nproc_shared"]
    setlim(resource.RLIMIT_NPROC, nproc)
    layers["nproc"] = nproc

    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if cfg["landlock"]:
        layers["landlock"] = landlock(rules)
    for _kind, _path, fd, _is_dir in rules:
        os.close(fd)
    layers["seccomp"] = seccomp()

    os.write(res_fd, ("S %s\n" % json.dumps(layers)).encode())
    mode = cfg["mode"]
    source = cfg["source"]
    if mode == "asserts":
        tests, start, nonce = cfg["tests"], cfg["start"], cfg["nonce"]
        del cfg
        os.closerange(3, res_fd)
        os.closerange(res_fd + 1, 4096)
        _run_asserts(source, tests, start, res_fd, nonce)
    else:
        del cfg
        os.close(res_fd)
        os.closerange(3, 4096)
        _run_stdio(source)


if __name__ == "__main__":
    main()
