"""Which project modules each module imports, read from the source (AST), not by importing it.

The code imports lazily (inside functions) to keep start-up cheap, so every `import` / `from ... import`
anywhere in a file counts. Imports under `if TYPE_CHECKING:` never run and are left out. Both the stage
deps of dvc.yaml (`expctr.stage_deps`) and the layer test (tests/test_architecture.py) read this graph.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """One imported project module; `names` are the names taken from it (`from m import a, b`)."""

    module: str
    line: int
    names: tuple[str, ...] = ()


def index_package(package_dir: Path, name: str | None = None) -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` file under a package directory."""
    package_dir = Path(package_dir)
    name = name or package_dir.name
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking_guard(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth, except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if _type_checking_guard(node):
            children = list(node.orelse)  # the `else:` branch does run
        stack.extend(reversed(children))


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from` import names, resolving leading dots against `module`."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    package = parts if is_package else parts[:-1]
    up = node.level - 1
    if up > len(package) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package (line {node.lineno})")
    base = package[: len(package) - up]
    return ".".join(base + ([node.module] if node.module else []))


def file_imports(path: Path, module: str, known: Mapping[str, Path]) -> list[Import]:
    """The project modules (keys of `known`) that the file imports, in source order.

    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`. A name
    outside `known` (the standard library, third-party packages) is skipped.
    """
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    out: list[Import] = []
    for node in sorted(_import_nodes(tree), key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Import):
            out += [Import(a.name, node.lineno) for a in node.names if a.name in known]
            continue
        base = _base_of(node, module, _is_package(Path(path)))
        taken: list[str] = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in known:
                out.append(Import(sub, node.lineno))
            else:
                taken.append(alias.name)
        if taken and base in known:
            out.append(Import(base, node.lineno, tuple(taken)))
    return out


def _has_code(path: Path) -> bool:
    """True unless the file is empty or only a docstring."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def _parents(module: str, known: Mapping[str, Path]) -> list[str]:
    """Packages whose ``__init__.py`` runs before `module`, when they hold code beyond a docstring."""
    parts = module.split(".")
    names = (".".join(parts[:i]) for i in range(1, len(parts)))
    return [p for p in names if p in known and _has_code(known[p])]


def import_graph(known: Mapping[str, Path]) -> dict[str, list[Import]]:
    """Module -> the project modules it imports (edges keep line numbers and imported names)."""
    return {m: file_imports(p, m, known) for m, p in known.items()}


def closure(entries: Iterable[Path], known: Mapping[str, Path]) -> list[Path]:
    """The entry files plus every project file they import, directly or not, sorted.

    An entry may be a script outside `known` (e.g. bento/package.py); its imports resolve against `known`.
    """
    by_path = {p.resolve(): m for m, p in known.items()}
    seen: dict[Path, Path] = {}  # resolved -> as given
    stack = [Path(e) for e in entries]
    while stack:
        path = stack.pop()
        if path.resolve() in seen:
            continue
        seen[path.resolve()] = path
        module = by_path.get(path.resolve(), path.stem)
        for name in [i.module for i in file_imports(path, module, known)] + _parents(module, known):
            stack += [known[name]] + [known[p] for p in _parents(name, known)]
    return sorted(seen.values(), key=lambda p: p.as_posix())


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a self-import),
    each as a path ``[a, b, ..., a]`` starting at its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_cycle_path(set(c), graph) for c in components)


def _cycle_path(component: set[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest cycle through the component's smallest module (breadth-first inside the component)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in component and w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component has a cycle")  # pragma: no cover
