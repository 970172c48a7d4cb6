"""The guard's modules import one way: no cycle, counting imports inside functions and under
``TYPE_CHECKING`` too (an import that is only deferred is still a knot a reader has to untie)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "guard"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, modules: set[str], *, is_package: bool = False) -> set[str]:
    """Every guard module the module ``name`` (its text: ``source``) imports, wherever the import
    statement stands: at the top, in a function, under ``if TYPE_CHECKING:``."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            # "guard.a.b" counts as an import of the deepest guard module it names
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {
        module_name(p): imports_of(
            p.read_text(encoding="utf-8"), module_name(p), modules, is_package=p.name == "__init__.py"
        )
        for p in paths
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a path a->...->a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_finder_sees_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_counts_imports_inside_functions_and_type_checking_blocks() -> None:
    modules = {"guard", "guard.a", "guard.b", "guard.c", "guard.d", "guard.sub", "guard.sub.e"}
    source = """
from typing import TYPE_CHECKING
import json
if TYPE_CHECKING:
    from guard.b import Thing
def late():
    import guard.c
    from guard.sub.e import name
class K:
    def method(self):
        from . import d
"""
    found = imports_of(source, "guard.a", modules)
    assert found == {"guard", "guard.b", "guard.c", "guard.d", "guard.sub.e"}
    assert imports_of("from .e import x\nfrom .. import a", "guard.sub.f", modules) == {
        "guard.sub.e",
        "guard",
        "guard.a",
    }
    graph = import_graph()
    assert "guard.app" in graph and "guard.errors" in graph["guard.api"]


def test_no_import_cycle_among_the_guards_modules() -> None:
    found = cycles(import_graph())
    assert found == [], f"import cycles among guard's modules: {found}"


def test_nothing_imports_the_app_back() -> None:
    importers = sorted(m for m, targets in import_graph().items() if "guard.app" in targets)
    assert importers == ["guard.cli"], importers
