"""The package's import graph: no circles, and nothing in the library reaches up into a command-line module.

Every ``import`` counts, also the ones inside functions (a deferred import is still a dependency). A module is
a command-line tool when it is in :mod:`prm_rl.cli`, the one home of the commands (a module that runs as
``python -m``, a ``__main__`` block, lives nowhere else, child processes aside); the library is everything else. See docs/contributing.md, "The house".
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "prm_rl"
# run in a fresh interpreter by the sandbox or the worker pool, never imported by the library
CHILD_PROCESSES = {"prm_rl.rewards._sandbox_boot", "prm_rl.rewards._worker", "prm_rl.rewards.code_verifier",
                   "prm_rl.models.warm_start"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports at run time: ``from a import b`` is ``a.b`` when that is a
    module, else ``a``; imports under ``if TYPE_CHECKING:`` are for annotations only and do not count."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def _runtime_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {m: imports(p, modules) - {m} for m, p in files.items()}


def commands() -> set[str]:
    return {m for m in graph() if m == "prm_rl.cli" or m.startswith("prm_rl.cli.")}


def runnable() -> set[str]:
    """Modules with a ``__main__`` block."""
    return {module_name(p) for p in PACKAGE.rglob("*.py") if "__name__ == \"__main__\"" in p.read_text()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), as sorted lists."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def parents_of(module: str) -> set[str]:
    """A package's ``__init__`` is imported with any of its modules: ``a.b.c`` depends on ``a.b`` and ``a``."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_the_import_graph_has_no_circle():
    edges = graph()
    assert circles(edges) == []


def test_no_library_module_imports_a_command_line_module():
    edges, cli = graph(), commands()
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() if m not in cli for t in targets & cli)
    assert upward == []


def test_every_command_lives_in_the_cli_package():
    assert sorted(runnable() - CHILD_PROCESSES - commands()) == []


def test_the_checker_finds_a_circle_and_an_upward_arrow():
    """The two checks above can fail: a hand-made graph with both faults."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    assert "prm_rl.cli" in commands() and "prm_rl.cli.estimate" in commands()


def test_checking_a_config_imports_neither_transformers_nor_deepspeed():
    """The launcher checks the overrides (and starts the CPU ranks) before any rank loads a model: every launch,
    and every test of a bad option, pays its imports; transformers alone costs about a second."""
    import subprocess
    import sys

    probe = ("import sys; from prm_rl.cli.startup import compose; compose(['rollout.max_new_tokens=64']); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'deepspeed', 'vllm', 'trl'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
