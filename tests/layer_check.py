"""Static checks of the code's structure with ``ast`` (nothing is imported or run).

- the import graph between modules, with every ``import`` counted: module level, inside
  functions and under ``if TYPE_CHECKING:`` (a function-level import hides a cycle from the
  interpreter, not from the design);
- its cycles (Tarjan's strongly connected components, then the shortest cycle through each
  member), between modules or between layers (``derm_exp.data``, ``derm_exp.train``, ...);
- functions longer than a limit, counted from the ``def`` line to the end of the body.

Used by ``tests/test_import_layers.py``; hand-written because the rules are ours and the whole
check is a page of code (import-linter would add a dependency and a config format).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# graph[a][b]: the statements by which module (or layer) a imports b, as
# "derm_exp/x.py:12 imports derm_exp.y" (for layers, every module-level import between the two)
Graph = dict[str, dict[str, list[str]]]


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "derm_exp.data.metadata"; a package is its __init__.py
    path: Path
    is_package: bool


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Module]:
    """Every ``.py`` file under ``root/<package>``, by dotted module name."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules[name] = Module(name, path, is_package)
    return modules


def _owner(dotted: str, known: Iterable[str]) -> str | None:
    """The longest known module that ``dotted`` (a module, or a name inside one) lies in."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def _imported_names(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """Absolute dotted names an import statement brings in (``from a import b`` -> ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: one level is the current package, each further one its parent
        parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(parent + ([node.module] if node.module else []))
    return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    """Which module imports which, among the modules under ``root/<package>``."""
    modules = find_modules(root, packages)
    graph: Graph = {name: {} for name in modules}
    for module in modules.values():
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported_names(node, package):
                target = _owner(name, modules)
                if target is not None and target != module.name:
                    where = f"{module.path.relative_to(root)}:{node.lineno} imports {target}"
                    edges = graph[module.name].setdefault(target, [])
                    if where not in edges:
                        edges.append(where)
    return graph


def layer_of(module: str) -> str:
    """A module's layer: its subpackage (``derm_exp.data``), or itself when top level
    (``derm_exp.train``)."""
    return ".".join(module.split(".")[:2])


def layer_graph(graph: Graph) -> Graph:
    """The import graph between layers; imports inside one layer are dropped."""
    layers: Graph = {layer_of(m): {} for m in graph}
    for source, targets in graph.items():
        for target, where in targets.items():
            if layer_of(source) != layer_of(target):
                layers[layer_of(source)].setdefault(layer_of(target), []).extend(where)
    return layers


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _shortest_cycle(graph: Graph, start: str, within: set[str]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside ``within`` (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w not in within:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    raise ValueError(f"{start} is on no cycle")


def find_cycles(graph: Graph) -> list[list[str]]:
    """Distinct shortest cycles through every module that is on one, each as a path
    ``[a, b, ..., a]`` starting at its smallest name."""
    cycles = set()
    for component in strongly_connected(graph):
        if len(component) == 1:
            continue  # self-imports are not recorded
        for start in component:
            path = _shortest_cycle(graph, start, set(component))[:-1]
            first = path.index(min(path))
            cycles.add(tuple(path[first:] + path[:first]))
    return [[*cycle, cycle[0]] for cycle in sorted(cycles)]


def _by_file_and_line(where: str) -> tuple[str, int]:
    path, _, rest = where.partition(":")
    return path, int(rest.split()[0])


def format_cycles(cycles: list[list[str]], graph: Graph) -> str:
    """One line per cycle, then the import statements behind each of its steps."""
    lines = []
    for cycle in cycles:
        lines.append("  " + " -> ".join(cycle))
        for a, b in zip(cycle[:-1], cycle[1:], strict=True):
            lines += [f"      {where}" for where in sorted(graph[a][b], key=_by_file_and_line)]
    return "\n".join(lines)


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """``(qualified name, node)`` of every function and method under ``node``, nested too."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if not isinstance(child, ast.ClassDef):
                yield prefix + child.name, child
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def long_functions(root: Path, packages: Iterable[str], limit: int) -> list[str]:
    """``path:line name: N lines`` for every function longer than ``limit`` lines."""
    found = []
    for module in find_modules(root, packages).values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        for name, node in _functions(tree):
            n_lines = node.end_lineno - node.lineno + 1
            if n_lines > limit:
                found.append(
                    f"{module.path.relative_to(root)}:{node.lineno} {name}: {n_lines} lines"
                )
    return found
