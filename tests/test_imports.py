"""The package's import graph has no cycle, and no library module grows past a reviewable size.

Every ``import`` counts, also those inside functions: a lazy import still ties two modules together
(the cycle only hides until a call path runs it). Read from the sources with ``ast``, nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vift_plugin

PACKAGE = Path(vift_plugin.__file__).parent
MAX_LINES = 450


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The plugin modules ``module`` imports (a name imported from a package counts as that package)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_plugin_modules() -> None:
    known = module_names()
    graph = {module: imported(module, path, known) for module, path in known.items()}
    assert graph["vift_plugin.cascade"] >= {"vift_plugin.generation"}, "the walker lost function-level imports"
    assert cycles(graph) == []


def test_the_io_layer_imports_nothing_of_the_plugin_above_it() -> None:
    """The readers import nothing of ours; the writers only the readers (for ``file_kind``)."""
    known = module_names()
    assert imported("vift_plugin.data.files", known["vift_plugin.data.files"], known) == set()
    assert imported("vift_plugin.data.writers", known["vift_plugin.data.writers"], known) == {"vift_plugin.data.files"}


def test_no_library_module_is_over_the_size_limit() -> None:
    sizes = {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in module_names().items()}
    assert {module: n for module, n in sizes.items() if n > MAX_LINES} == {}
