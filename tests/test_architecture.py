"""The shape of the package: no import circle between its modules.

Every module under cacheproxy/ is parsed with ast (not imported) and each `import cacheproxy.x`
/ `from cacheproxy.x import y` is an edge, wherever it stands: at the top, inside a function
(a deferred import is a circle postponed, not removed) or under TYPE_CHECKING (a circle for the
reader and the type checker all the same). A package's own `__init__` is the module
`cacheproxy.pkg`; `from cacheproxy.pkg import name` points at `cacheproxy.pkg.name` when that
is a module, else at `cacheproxy.pkg`.

Run as a script (`python tests/test_architecture.py`) it prints the circles between modules
and those between packages.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "cacheproxy"
Graph = dict[str, set[str]]

def module_names(root: Path = ROOT) -> dict[str, Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(tree: ast.AST, modules: Iterable[str]) -> set[str]:
    """The cacheproxy modules a module's code imports, anywhere in it."""
    known = set(modules)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def import_graph(root: Path = ROOT) -> Graph:
    modules = module_names(root)
    return {name: imported(ast.parse(path.read_text(), str(path)), modules) - {name}
            for name, path in modules.items()}


def package_graph(graph: Mapping[str, set[str]]) -> Graph:
    """The graph between cacheproxy's subpackages (and top-level modules)."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: Graph = {}
    for name, targets in graph.items():
        out.setdefault(package(name), set()).update(
            package(t) for t in targets if package(t) != package(name))
    return out


def components(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node: each holds a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_in(graph: Mapping[str, set[str]], group: list[str]) -> list[str]:
    """One circle through a component's first module, as a path that ends where it began."""
    members = set(group)
    start = group[0]
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to start
        node = queue.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError("a strongly connected component always holds a circle")


def describe(graph: Mapping[str, set[str]]) -> list[str]:
    return [" -> ".join(cycle_in(graph, group)) for group in components(graph)]


# --- the tests ----------------------------------------------------------------------------------


GRAPH = import_graph()


def test_the_graph_sees_every_kind_of_import() -> None:
    # A deferred import, a TYPE_CHECKING one and a `from package import module` all count.
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import cacheproxy.http.fields\n"
        "if TYPE_CHECKING:\n    from cacheproxy.config import Config\n"
        "def f():\n    from cacheproxy.http import dates\n")
    modules = ["cacheproxy.http.fields", "cacheproxy.config", "cacheproxy.http",
               "cacheproxy.http.dates"]
    assert imported(tree, modules) == {
        "cacheproxy.http.fields", "cacheproxy.config", "cacheproxy.http.dates"}


def test_cycle_finder_names_the_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert describe(graph) == ["a -> b -> c -> a"]


def test_config_and_policies_do_not_import_each_other_both_ways() -> None:
    packages = package_graph(GRAPH)
    assert "cacheproxy.policies" not in packages["cacheproxy.config"]


def test_the_sans_io_rules_import_nothing_but_themselves() -> None:
    # DESIGN.md: cacheproxy/http is the sans-I/O core; the other rooms depend on it, not back.
    outside = {(name, target) for name, targets in GRAPH.items()
               if name.startswith("cacheproxy.http") for target in targets
               if not target.startswith("cacheproxy.http")}
    assert not outside


def test_no_import_cycle_between_modules() -> None:
    cycles = describe(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_no_import_cycle_between_packages() -> None:
    """proxy wires observe in (server.py) and records into observe.outcome; observe never
    imports proxy."""
    cycles = describe(package_graph(GRAPH))
    assert not cycles, "import cycles between packages: " + "; ".join(cycles)


if __name__ == "__main__":
    print("module cycles:", *describe(GRAPH) or ["none"], sep="\n  ")
    print("package cycles:", *describe(package_graph(GRAPH)) or ["none"], sep="\n  ")
