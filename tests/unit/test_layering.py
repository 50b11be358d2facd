"""The runtime's layers, read from the source: step modules import only leaves, leaves import
nothing of the project, no module imports in a circle, and none grows past its one job."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "pytest_isolate" / "runtime"
PACKAGE = "pytest_isolate.runtime"
# Modules that import nothing of the project (host.state and local import only each other).
LEAVES = {"errors", "syscalls", "local", "kernel.mountinfo", "process.protocol"}
STEP_MODULES = {"kernel.namespaces", "kernel.rootfs", "kernel.pid1"}
MAX_LINES = 400


def _name(path: Path) -> str:
    rel = path.relative_to(RUNTIME).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Runtime modules `path` imports, at any depth of the file (lazy imports count too)."""
    me = _name(path).split(".") if path.name != "__init__.py" else [*_name(path).split("."), ""]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = me[:len(me) - node.level]
                mod = ".".join(p for p in [*base, *(node.module or "").split(".")] if p)
            elif (node.module or "").startswith(PACKAGE + "."):
                mod = node.module[len(PACKAGE) + 1:]
            else:
                continue
            names = [a.name for a in node.names]
            for n in names:  # `from . import plan` names a module
                candidate = f"{mod}.{n}" if mod else n
                if _exists(candidate):
                    out.add(candidate)
                elif mod:
                    out.add(mod)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGE + "."):
                    out.add(a.name[len(PACKAGE) + 1:])
    return {m for m in out if m and _exists(m)}


def _exists(mod: str) -> bool:
    p = RUNTIME.joinpath(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_name(p): _imports(p) for p in RUNTIME.rglob("*.py")}


def test_leaves_import_nothing_of_the_runtime():
    graph = _graph()
    for leaf in LEAVES:
        assert graph[leaf] <= {"local"} - {leaf}, (leaf, graph[leaf])
    assert graph["host.state"] <= {"local"}, graph["host.state"]


def test_step_modules_import_only_leaves():
    graph = _graph()
    for mod in STEP_MODULES:
        assert graph[mod] <= LEAVES, (mod, graph[mod] - LEAVES)
    assert graph["plan"] <= {"syscalls"}, graph["plan"]  # pure: the zygote imports it
    assert graph["setup"] <= LEAVES | STEP_MODULES | {"plan", "kernel"}, graph["setup"]


def test_no_import_circles():
    graph = _graph()
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        if mod in path:
            cycle = (*path[path.index(mod):], mod)
            raise AssertionError(" -> ".join(cycle))
        if mod in done:
            return
        for dep in graph.get(mod, ()):
            # a package's __init__ re-exporting its own modules is not a circle
            if not dep.startswith(mod + "."):
                visit(dep, (*path, mod))
        done.add(mod)

    for mod in graph:
        visit(mod, ())


def test_only_the_executor_calls_the_kernel_steps():
    for path in RUNTIME.rglob("*.py"):
        name = _name(path)
        if name in {"setup", "probe"} or name.startswith("kernel"):
            continue
        text = path.read_text()
        for step in ("mount_host_tree", "mount_proc", "pivot_into", "unshare_namespaces(",
                     "set_hostname(", "bring_up_loopback("):
            assert step not in text, f"{name} calls {step} itself: make it a Step in plan.py"


def test_no_module_outgrows_its_one_job():
    for path in RUNTIME.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{_name(path)}: {lines} lines (split it by job)"
