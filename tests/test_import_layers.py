"""Imports only go downward: no import cycle among fastattn's modules, the kernel layer
(``kernels/``, installed as ``fastattn.kernels``) never reaches up into the op, functional or
dispatch layers, and the build-verification tools (``fastattn.buildcheck``) are reached from no
runtime module (docs/architecture.md, "Layers").

The graph is read from the source (``import`` and ``from ... import`` statements anywhere in a
module, function bodies included: a lazy import is still a dependency), so it does not depend
on what this machine can import.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fastattn
import fastattn.kernels

PACKAGE = Path(fastattn.__file__).resolve().parent
KERNELS = Path(fastattn.kernels.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found = {}
    for root, prefix in ((PACKAGE, "fastattn"), (KERNELS, "fastattn.kernels")):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((prefix, *parts))] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The fastattn modules ``name`` imports (a ``from pkg import x`` counts as ``pkg.x`` when
    that is a module, else as ``pkg``)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # A module importing a package's submodule also runs the package's __init__; that edge is
    # the package's own business and not a layering fact, so it is not added.
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_kernels_import_nothing_above_them():
    above = ("fastattn.ops", "fastattn.functional", "fastattn.dispatch", "fastattn.backends", "fastattn.nn",
             "fastattn.integrations", "fastattn.patching", "fastattn.cli")
    bad = {name: sorted(t for t in targets if t.startswith(above))
           for name, targets in _graph().items() if name.startswith("fastattn.kernels")}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"kernel modules importing from the layers above them: {bad}"


# Modules that are not on the runtime import path: the command line (``info --kernels`` reports
# the build checks) and the build-verification tools themselves.
_NOT_RUNTIME = ("fastattn.buildcheck", "fastattn.cli", "fastattn.__main__")


def _reachable(graph: dict[str, set[str]], roots) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_no_runtime_module_reaches_the_build_checks():
    graph = _graph()
    runtime = [name for name in graph if not name.startswith(_NOT_RUNTIME)]
    bad = {name: sorted(_reachable(graph, [name]) & {m for m in graph if m.startswith("fastattn.buildcheck")})
           for name in runtime}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"runtime modules reaching fastattn.buildcheck: {bad}"


def test_importing_fastattn_loads_no_build_check():
    """The same, as the interpreter sees it: the public package and every kernel module import
    without loading fastattn.buildcheck."""
    code = ("import sys, pkgutil, importlib, fastattn, fastattn.kernels\n"
            "for m in pkgutil.iter_modules(fastattn.kernels.__path__):\n"
            "    importlib.import_module('fastattn.kernels.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('fastattn.buildcheck')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_graph_is_read():
    """The reader sees the edges it must (a broken parser would make the two tests above pass)."""
    graph = _graph()
    assert "fastattn.dispatch" in graph["fastattn.functional.attention"]
    assert "fastattn.kernels.attention" in graph["fastattn.backends.triton.attention"]
    assert "fastattn.backends.reference" not in graph["fastattn.dispatch"]  # by name in a table, not imported
    assert "fastattn.buildcheck.kernel_report" in graph["fastattn.cli.info"]  # a lazy import, still seen
    assert "fastattn.kernels._configs" in graph["fastattn.buildcheck.triton_aot"]
