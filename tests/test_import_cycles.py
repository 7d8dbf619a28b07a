"""No import circles in bot/, cogs/ and pipeline/: the graph of which module imports which, read from the source with
``ast``, has no cycle.

Every import statement counts: at module level, inside ``if TYPE_CHECKING:`` (a circle that only the type checker
walks is still two modules that cannot be understood apart) and inside functions (a lazy import only hides a circle
until that path runs). ``from package import name`` is an edge to ``package.name`` when that is a module, else to
``package``. Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit edges are left out, so
a package's ``__init__`` may re-export its own modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs", "pipeline")

# Circles known and owned elsewhere, each as the set of modules in it; a circle that grows is reported again.
KNOWN_CYCLES: list[frozenset[str]] = []

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path = ROOT) -> str:
    """``bot/telegram/app.py`` → ``bot.telegram.app``; ``bot/telegram/__init__.py`` → ``bot.telegram``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages, by name."""
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imported(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module``'s source imports, wherever the import statement stands."""
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # ``import a.b.attr``-like names: the longest prefix that is a module
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in (or is)
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in known else base)
    return found


def import_graph(files: dict[str, Path]) -> Graph:
    """Module → the modules it imports, among ``files``."""
    known = set(files)
    return {name: imported(name, path.name == "__init__.py", ast.parse(path.read_text(encoding="utf-8"), str(path)),
                           known)
            for name, path in files.items()}


def strongly_connected(graph: Graph) -> list[set[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for child in edges:
                if child not in index:
                    index[child] = low[child] = len(index)
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
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
    return components


def one_cycle(graph: Graph, component: set[str]) -> list[str]:
    """A shortest circle through the component's first module, as ``[a, b, ..., a]``, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no circle in {sorted(component)}")


def cycles(graph: Graph) -> list[list[str]]:
    """One named circle per tangle of modules that import each other (strongly connected), except the known ones."""
    return [one_cycle(graph, component) for component in strongly_connected(graph)
            if frozenset(component) not in KNOWN_CYCLES]


def tangles(graph: Graph) -> list[str]:
    """Each unknown tangle as a line: one circle in it, then every module it holds."""
    return [f"{' -> '.join(one_cycle(graph, component))}  (the tangle: {', '.join(sorted(component))})"
            for component in strongly_connected(graph) if frozenset(component) not in KNOWN_CYCLES]


def test_bot_cogs_and_pipeline_have_no_import_cycles():
    graph = import_graph(source_files())
    assert {"bot.telegram.app", "cogs.results", "pipeline.gpu.stylizer"} <= set(graph)  # the walk found the tree
    found = tangles(graph)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_every_kind_of_import_makes_an_edge(tmp_path):
    # a tree that has each way of importing once, so the check above cannot pass by missing one
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "top.py": "import pkg.plain\nfrom pkg import named\nfrom pkg.sub import deep as alias\n",
        "plain.py": "", "named.py": "", "lazy.py": "",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.top import X\n",
        "late.py": "def f():\n    from pkg import lazy\n    import pkg.sub.deep\n",
        "sub/__init__.py": "from . import deep\n",
        "sub/deep.py": "from ..named import thing\nfrom .. import plain\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    graph = import_graph(source_files(tmp_path, ["pkg"]))
    assert graph["pkg.top"] == {"pkg.plain", "pkg.named", "pkg.sub.deep"}
    assert graph["pkg.typed"] == {"pkg.top"}
    assert graph["pkg.late"] == {"pkg.lazy", "pkg.sub.deep"}
    assert graph["pkg.sub"] == {"pkg.sub.deep"}
    assert graph["pkg.sub.deep"] == {"pkg.named", "pkg.plain"}
    graph["pkg.plain"].add("pkg.top")  # pkg.top -> pkg.plain -> pkg.top
    assert cycles(graph) == [["pkg.plain", "pkg.top", "pkg.plain"]]
