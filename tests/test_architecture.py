"""Layering: every module imports, and no two top-level packages of effml import each other at module level.

The graph is built from the source with `ast` (only imports executed when a module is imported count: the
module body, class bodies, and `if`/`try` blocks at that level — not imports inside functions, which run
later, and not `if TYPE_CHECKING:` blocks). A cycle is named package by package, with one import per edge.
A second graph counts the imports inside functions too: it has no cycle either once the few deliberate lazy
plugin imports (LAZY_UPWARD, each with its reason) are left out.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import effml

SRC = Path(effml.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _top_level_imports(tree: ast.Module, module: str, is_package: bool):
    """(imported module, line) for every import run at import time."""
    def walk(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                walk(node.orelse)
                continue
            if isinstance(node, (ast.If, ast.Try)):
                walk(node.body)
                walk(node.orelse)
                for h in getattr(node, "handlers", ()):
                    walk(h.body)
                walk(getattr(node, "finalbody", []))
            elif isinstance(node, ast.ClassDef):
                walk(node.body)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    yield a.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                yield base, node.lineno
                for a in node.names:  # `from effml.x import y` where y is a submodule
                    yield f"{base}.{a.name}", node.lineno
    yield from walk(tree.body)


def _all_imports(tree: ast.Module, module: str, is_package: bool):
    """(imported module, line) for every import anywhere in the module (functions included), except inside
    `if TYPE_CHECKING:` blocks (annotations only, never run)."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for b in node.body for n in ast.walk(b)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            yield base, node.lineno
            for a in node.names:
                yield f"{base}.{a.name}", node.lineno


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "effml" or len(parts) < 2:
        return None
    top = parts[1]
    return top if (SRC / top).is_dir() or (SRC / f"{top}.py").is_file() else None


def package_graph(lazy: bool = False) -> dict[str, dict[str, str]]:
    """package -> {imported package: 'file:line' of one import that makes the edge}; lazy=True counts the
    imports inside functions too."""
    imports = _all_imports if lazy else _top_level_imports
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        src_pkg = _package_of(module)
        tree = ast.parse(path.read_text(), str(path))
        for target, line in imports(tree, module, path.name == "__init__.py"):
            dst_pkg = _package_of(target)
            if src_pkg and dst_pkg and dst_pkg != src_pkg:
                graph.setdefault(src_pkg, {}).setdefault(dst_pkg, f"{path.relative_to(SRC.parent)}:{line}")
    return graph


def module_graph() -> dict[str, dict[str, str]]:
    """module -> {imported effml module: 'file:line'}, module-level imports; a module's edges to its own
    packages (`from effml.train import checkpoint` inside effml.train.memory) and to its submodules are left
    out: a package's __init__ re-exporting its files is not a circle between files."""
    modules = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}
    graph: dict[str, dict[str, str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, line in _top_level_imports(tree, module, path.name == "__init__.py"):
            if (target in modules and target != module and not module.startswith(target + ".")
                    and not target.startswith(module + ".")):
                graph.setdefault(module, {}).setdefault(target, f"{path.relative_to(SRC.parent)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_imports():
    failed = {}
    for info in pkgutil.walk_packages(effml.__path__, "effml."):
        if info.name.endswith("__main__"):  # importing it runs the CLI
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as e:
            if getattr(e, "name", None) in OPTIONAL_EXTRAS:
                continue
            failed[info.name] = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - report every broken module at once
            failed[info.name] = f"{type(e).__name__}: {e}"
    assert not failed, "modules that do not import:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items())


# third-party packages only some installs have (extras): a module needing one may fail to import without it
OPTIONAL_EXTRAS = {"onnxruntime", "onnx", "psycopg2", "playwright"}


def test_no_import_cycle_between_packages():
    graph = package_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between effml packages: " + " -> ".join(cycle) + "\n  " + "\n  ".join(edges))


# imports inside functions that close a package cycle on purpose, each a plugin used only when a caller asks for
# it (without these edges the function-level package graph has no cycle)
LAZY_UPWARD = {
    ("llm", "compress"): "the LLM engine/model/roofline load the weight-only int8/int4 kernels "
                         "(compress.weight_only) and draft models are distilled (compress.distill) only when asked; "
                         "compress in turn knows the decoder's Attention/FeedForward for structured pruning",
}


def test_no_import_cycle_between_packages_counting_lazy_imports():
    graph = package_graph(lazy=True)
    top = package_graph()
    for (a, b), why in LAZY_UPWARD.items():
        # a stale entry would let a new real cycle through: each must still exist, and only inside functions
        assert b in graph.get(a, {}), f"LAZY_UPWARD lists {a} -> {b} ({why}) but no such import remains: drop it"
        assert b not in top.get(a, {}), f"{a} -> {b} is whitelisted as lazy but imported at module level " \
                                        f"({top[a][b]})"
    kept = {a: {b: where for b, where in edges.items() if (a, b) not in LAZY_UPWARD} for a, edges in graph.items()}
    cycle = find_cycle(kept)
    if cycle:
        edges = [f"{a} -> {b} ({kept[a][b]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between effml packages (function-level imports counted): " + " -> ".join(cycle)
                    + "\n  " + "\n  ".join(edges))


def test_no_import_circle_between_files():
    # e.g. nas/spaces.py and nas/models.py once imported each other; the family registry is now its own file
    graph = module_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import circle between effml files: " + " -> ".join(cycle) + "\n  " + "\n  ".join(edges))


def test_the_cycle_finder_finds_and_names_a_cycle():
    # the check itself must be able to fail: a -> b -> c -> a is found, a DAG is not
    assert find_cycle({"a": {"b": "x"}, "b": {"c": "y"}, "c": {"a": "z"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "x"}, "b": {"c": "y"}, "a2": {"c": "z"}}) is None
