"""The dependency direction of docs/architecture.md, read from the source: the API and the workers call the services,
the services the domain, never back; and no module imports itself through others.

Every import statement counts, wherever it stands: at the top of a module, inside a function, and under
`TYPE_CHECKING`. A deferred or type-only import is still a dependency in that direction, and keeping the rule whole
costs nothing where it holds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support import ROOT

PACKAGES = {ROOT / "src" / "widgetry": "widgetry", ROOT / "workers": "widgetry.workers"}
"""Where each part of the installed `widgetry` package comes from."""
ENTRY_POINTS = ("widgetry.app", "widgetry.cli", "widgetry.console", "widgetry.bench", "widgetry.dashboard")
"""What builds or drives the service: nothing below them imports them."""


def module_of(path: Path) -> str:
    for folder, package in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            return ".".join([package, *parts[: -1 if parts[-1] == "__init__" else None]])
    raise ValueError(path)


SOURCES = {module_of(path): path for folder in PACKAGES for path in sorted(folder.rglob("*.py"))}


def imported(module: str) -> Iterator[str]:
    """Every module of widgetry's that `module` imports, with the packages that importing it loads on the way."""
    path = SOURCES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            while name and name not in SOURCES:
                name = name.rpartition(".")[0]
            while name:
                if name != module:
                    yield name
                name = name.rpartition(".")[0] if "." in name else ""


GRAPH = {module: set(imported(module)) for module in SOURCES}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(f"{prefix}.") for prefix in prefixes)


def violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if within(module, (layer,))
        for target in targets
        if within(target, forbidden)
    )


def test_the_source_tree_is_read() -> None:
    assert {"widgetry.app", "widgetry.services.commands", "widgetry.domain.models", "widgetry.workers.jobs"} <= set(
        SOURCES
    )
    assert {"widgetry.services.queue", "widgetry.workers.jobs"} <= GRAPH["widgetry.workers.queue"]


def test_the_workers_never_import_the_api_or_what_drives_the_service() -> None:
    assert violations("widgetry.workers", ("widgetry.api", *ENTRY_POINTS)) == []


def test_the_api_never_imports_the_workers_or_what_drives_the_service() -> None:
    assert violations("widgetry.api", ("widgetry.workers", *ENTRY_POINTS)) == []


def test_the_services_import_neither_the_api_nor_the_workers_nor_the_connections() -> None:
    """The services are what both the API and the workers call; the Redis and database clients are built for them
    (connections.py) and handed in, so importing a service loads no driver."""
    forbidden = ("widgetry.api", "widgetry.workers", "widgetry.connections", *ENTRY_POINTS)
    assert violations("widgetry.services", forbidden) == []


def test_the_domain_imports_nothing_of_widgetry_but_itself() -> None:
    above = tuple(sorted({module for module in SOURCES if not within(module, ("widgetry.domain",))} - {"widgetry"}))
    assert violations("widgetry.domain", above) == []


def test_no_module_imports_itself_through_others() -> None:
    """Among them: the app builds the CLI's plugin, the CLI adds the bench's command, and the bench starts the app
    as processes, never by importing it."""
    cycles = [cycle for cycle in strongly_connected(GRAPH) if len(cycle) > 1]
    assert cycles == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: each group of modules that import one another, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    groups.append(sorted(group))
    return groups


def test_the_services_never_commit_or_roll_back_their_callers_unit_of_work() -> None:
    """Services read, change and flush; a request, a job or an operator's command owns the transaction
    (`services/units.py` opens it). A commit, a rollback or Advanced Alchemy's `auto_commit` in a service is a
    transaction ended behind its caller's back."""
    ended: list[str] = []
    for path in sorted((ROOT / "src" / "widgetry" / "services").rglob("*.py")):
        if path.name == "units.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("commit", "rollback"):
                ended.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.keyword) and node.arg in ("auto_commit", "auto_rollback"):
                ended.append(f"{path.name}:{node.lineno} {node.arg}=")
    assert ended == []
