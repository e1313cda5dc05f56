"""No import circle between the product's modules.

Every `mmcurate.*` import in the product folders counts: module level and inside functions (a
lazy import back is still a circle a reader has to follow to understand either module), under
`if TYPE_CHECKING:` too. The graph is built from the source with `ast`, nothing is imported.

orchestration/dags/ is left out: it holds Airflow DAG files that Airflow loads by file path (no
`__init__.py`, not a package in pyproject.toml), so no `mmcurate` module can import them and they
can never close a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipelines", "transforms", "quality", "schemas", "orchestration")
SKIP = {ROOT / "orchestration" / "dags"}


def _modules() -> dict[str, Path]:
    """mmcurate.<folder>.<name> -> file, for every .py file of the package folders."""
    modules = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(path.is_relative_to(skip) for skip in SKIP):
                continue
            parts = ["mmcurate", *path.relative_to(ROOT).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str, path: Path, known: set[str]) -> dict[str, int]:
    """The mmcurate modules that `module` imports, each with the first line that imports it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.setdefault(target, line)
        # importing mmcurate.a.b runs mmcurate/a/__init__.py first: a package __init__ that
        # re-exports its children depends on them. Not counted for the package's own modules
        # (Python has the package loaded before any of them runs).
        package = target.rpartition(".")[0]
        while package in known and not module.startswith(package + "."):
            found.setdefault(package, line)
            package = package.rpartition(".")[0]

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mmcurate."):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            if not base.startswith("mmcurate."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from mmcurate.x import y`: module mmcurate.x.y when y is a submodule,
                # otherwise a name defined in mmcurate.x
                add(sub if sub in known else base, node.lineno)
    return found


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}, modules


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components)


def _chain(component: list[str], graph, modules) -> str:
    """One circle through the component's first module, as `a (file:line) -> b -> ... -> a`,
    then every import edge inside the component."""
    members = set(component)
    start = component[0]
    # breadth-first search for the shortest way back to start
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child in members and child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    path = [start]
    node = previous[start]
    while node != start:
        path.append(node)
        node = previous[node]
    path.append(start)
    path.reverse()

    def where(a: str, b: str) -> str:
        return f"{modules[a].relative_to(ROOT)}:{graph[a][b]}"

    lines = ["  " + " -> ".join(path)]
    lines += [f"      {a} -> {b}  ({where(a, b)})" for a, b in zip(path, path[1:])]
    others = [
        (a, b) for a in component for b in sorted(graph[a]) if b in members
        if (a, b) not in set(zip(path, path[1:]))
    ]
    if others:
        lines.append("    other imports inside this circle:")
        lines += [f"      {a} -> {b}  ({where(a, b)})" for a, b in others]
    return "\n".join(lines)


def test_no_import_cycles():
    graph, modules = import_graph()
    cycles = strongly_connected(graph)
    report = "\n".join(_chain(c, graph, modules) for c in cycles)
    assert not cycles, f"{len(cycles)} import circle(s) between product modules:\n{report}"


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a circle closed by a lazy `from ... import` inside a function, and a
    `from package import submodule` resolved to the submodule."""
    source = {
        "a.py": "from mmcurate.pkg import b\n",
        "b.py": "def f():\n    from mmcurate.pkg.c import thing\n",
        "c.py": "from . import a\nthing = 1\n",
        "d.py": "import mmcurate.pkg.a\n",
    }
    for name, text in source.items():
        (tmp_path / name).write_text(text)
    known = {f"mmcurate.pkg.{n[:-3]}" for n in source} | {"mmcurate.pkg"}
    graph = {
        f"mmcurate.pkg.{n[:-3]}": _imports(f"mmcurate.pkg.{n[:-3]}", tmp_path / n, known)
        for n in source
    }
    graph["mmcurate.pkg"] = {}
    assert strongly_connected(graph) == [["mmcurate.pkg.a", "mmcurate.pkg.b", "mmcurate.pkg.c"]]
    assert graph["mmcurate.pkg.b"] == {"mmcurate.pkg.c": 2}
