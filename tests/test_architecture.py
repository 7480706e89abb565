"""The layering, read from the source with `ast` (lazy imports inside functions count too):

    cli → app → http/ → pipeline/ → schema/, storage/ → settings, errors, paths, ids, jsonio

No import cycle anywhere in collector/; pipeline/ imports neither http/ nor Starlette; storage/
imports neither pipeline/ nor http/; schema/ imports nothing above it; conformance/ and
loadtests/ never import collector (vendors run the kit, and teams the Locust scenarios, against
servers that are not ours).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "collector"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (`from x import y` gives x, and x.y
    when x.y is a module of ours)."""
    modules = our_modules()
    found: set[str] = set()
    package = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    return found


@cache
def our_modules() -> frozenset[str]:
    return frozenset(module_name(path) for path in PACKAGE.rglob("*.py"))


def collector_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for target in imports_of(path) if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None; package __init__ modules
    that only hold a docstring are edges like any other."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target.startswith(node + "."):  # a package importing its own submodule is not a cycle
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_collector_has_no_import_cycle() -> None:
    cycle = find_cycle(collector_graph())
    assert cycle is None, " → ".join(cycle or ())


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LAYERS = {
    # package: what it must never import
    "collector.pipeline": ("collector.http", "collector.app", "collector.cli", "starlette"),
    "collector.storage": ("collector.pipeline", "collector.http", "collector.schema", "collector.app", "starlette"),
    "collector.schema": ("collector.pipeline", "collector.http", "collector.storage", "collector.app", "starlette"),
    "collector.http": ("collector.app", "collector.cli"),
}
FLOOR = (
    "collector.settings",
    "collector.config_check",
    "collector.errors",
    "collector.ids",
    "collector.jsonio",
    "collector.logs",
)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_layer_imports_only_downward(package: str) -> None:
    forbidden = LAYERS[package]
    found = []
    for path in (ROOT / package.replace(".", "/")).rglob("*.py"):
        for target in imports_of(path):
            if any(target == bad or target.startswith(bad + ".") for bad in forbidden):
                found.append(f"{module_name(path)} imports {target}")
    assert not found, "\n".join(sorted(found))


def test_the_floor_modules_import_nothing_above_them() -> None:
    found = []
    for name in FLOOR:
        path = ROOT / (name.replace(".", "/") + ".py")
        for target in imports_of(path):
            if target.startswith("collector.") and target not in FLOOR:
                found.append(f"{name} imports {target}")
    assert not found, "\n".join(sorted(found))


# These two measure a checkout's own parts in a child process whose path starts with the checkout
# being measured (this one, or --baseline's): the storage ceiling and the CPU per event.
MEASURES_A_CHECKOUT = {"loadtests/benchmark.py", "loadtests/inprocess.py"}


@pytest.mark.parametrize("tree", ["conformance", "loadtests"])
def test_the_kit_and_the_load_tests_never_import_the_collector(tree: str) -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {target}"
        for path in (ROOT / tree).rglob("*.py")
        if str(path.relative_to(ROOT)) not in MEASURES_A_CHECKOUT
        for target in imports_of(path)
        if target == "collector" or target.startswith("collector.")
    ]
    assert not found, "\n".join(found)


def test_the_kit_knows_the_same_event_paths_as_the_spec() -> None:
    """The kit cannot import collector.paths (it ships alone), so its copy is checked here."""
    from collector import paths
    from conformance import lint

    assert lint.CALL_PATHS == paths.CALL_PATHS
    assert tuple(lint.BATCH_PATHS) == paths.BATCH_PATHS
