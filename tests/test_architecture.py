"""The layers of docs/architecture.md, checked on the imports the code has (AST, function-level included).

A layer may import itself and the layers ALLOWED lists; any other arrow, any import cycle between
modules and any private name taken from another module fails here, with every offence listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from support import REPO_ROOT

from expctr.import_graph import Import, find_cycles, import_graph, index_package

HELPERS = "helpers"  # the modules directly under src/expctr (config, errors, io, paths, ...)
ALLOWED = {
    HELPERS: set(),
    "data": {HELPERS},
    "llm": {HELPERS},
    "ctr": {"llm", "data", HELPERS},
    "evaluation": {"ctr", "llm", "data", HELPERS},
    "explainer": {"evaluation", "ctr", "llm", "data", HELPERS},
    "serving": {"evaluation", "ctr", "llm", "data", HELPERS},
    "stages": {"explainer", "evaluation", "ctr", "llm", "data", HELPERS},
    "cli": {"stages", HELPERS},
    "bento": {"serving", HELPERS},
    "orchestration": set(),
}


def layer_of(module: str) -> str:
    """`expctr.<package>.*` -> the package; a module directly under expctr -> helpers (cli: its own);
    `bento.*` and `orchestration.*` -> bento and orchestration."""
    parts = module.split(".")
    if parts[0] in ("bento", "orchestration"):
        return parts[0]
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED):
        return parts[1]
    return "cli" if parts[1:] == ["cli"] else HELPERS


def project_modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Every module of the library, the orchestration package and the bento scripts."""
    return {
        **index_package(root / "src" / "expctr", "expctr"),
        **index_package(root / "orchestration", "orchestration"),
        **index_package(root / "bento", "bento"),
    }


def layer_violations(graph: Mapping[str, list[Import]], known: Mapping[str, Path], layer=layer_of,
                     allowed: Mapping[str, set[str]] = ALLOWED) -> list[str]:
    """`file:line: importer -> imported (layer -> layer)` for each import the layer rules forbid."""
    out = []
    for module, imports in graph.items():
        for imp in imports:
            src, dst = layer(module), layer(imp.module)
            if dst != src and dst not in allowed[src]:
                out.append(f"{known[module].as_posix()}:{imp.line}: {module} -> {imp.module} ({src} -> {dst})")
    return sorted(out)


def private_imports(graph: Mapping[str, list[Import]], known: Mapping[str, Path]) -> list[str]:
    """`file:line: importer takes _name from module` for each private name taken from another module."""
    out = []
    for module, imports in graph.items():
        for imp in imports:
            if imp.module == module:
                continue
            names = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
            if imp.module.rsplit(".", 1)[-1].startswith("_"):
                names.append(f"the private module {imp.module}")
            out += [f"{known[module].as_posix()}:{imp.line}: {module} takes {n} from {imp.module}" for n in names]
    return sorted(out)


def cycles(graph: Mapping[str, list[Import]]) -> list[str]:
    return [" -> ".join(c) for c in find_cycles({m: [i.module for i in imps] for m, imps in graph.items()})]


def _project():
    known = project_modules()
    return known, import_graph(known)


def _listing(title: str, lines: list[str]) -> str:
    return f"{len(lines)} {title}:\n" + "\n".join(lines)


def test_every_module_has_a_layer():
    known, _ = _project()
    assert {layer_of(m) for m in known} <= set(ALLOWED)
    assert {layer_of(m) for m in known} >= {"data", "llm", "ctr", "serving", "stages", "orchestration", "bento"}


def test_imports_follow_the_layers():
    known, graph = _project()
    bad = [v.replace(str(REPO_ROOT) + "/", "") for v in layer_violations(graph, known)]
    assert not bad, _listing("imports against docs/architecture.md's layers", bad)


def test_no_import_cycles():
    _, graph = _project()
    found = cycles(graph)
    assert not found, _listing("import cycles between modules", found)


def test_no_private_names_from_other_modules():
    known, graph = _project()
    bad = [v.replace(str(REPO_ROOT) + "/", "") for v in private_imports(graph, known)]
    assert not bad, _listing("private names imported from another module", bad)


# ----------------------------------------------------------------- the checker on a tiny fake package


def _fake(tmp_path: Path) -> tuple[dict[str, Path], dict[str, list[Import]]]:
    files = {
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from app.high.b import g\n    return g\n",
        "low/c.py": "import app.low.a as a\n",
        "low/d.py": "from . import c\nfrom .c import _helper\n",
        "high/__init__.py": "",
        "high/b.py": "from app.low.d import x\n",
    }
    for rel, text in files.items():
        (tmp_path / "app" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "app" / rel).write_text(text)
    known = index_package(tmp_path / "app", "app")
    return known, import_graph(known)


def test_checker_reports_a_forbidden_arrow_a_cycle_and_a_private_name(tmp_path):
    known, graph = _fake(tmp_path)
    rules = {"low": set(), "high": {"low"}}
    bad = layer_violations(graph, known, layer=lambda m: m.split(".")[1], allowed=rules)
    assert bad == [f"{known['app.low.a'].as_posix()}:2: app.low.a -> app.high.b (low -> high)"]
    # a -> b (lazy) -> d -> c (relative) -> a
    assert cycles(graph) == ["app.high.b -> app.low.d -> app.low.c -> app.low.a -> app.high.b"]
    assert private_imports(graph, known) == [
        f"{known['app.low.d'].as_posix()}:2: app.low.d takes _helper from app.low.c"
    ]


def test_checker_passes_a_clean_package(tmp_path):
    (tmp_path / "app" / "low").mkdir(parents=True)
    (tmp_path / "app" / "low" / "a.py").write_text("X = 1\n")
    (tmp_path / "app" / "low" / "b.py").write_text("from app.low.a import X\n")
    known = index_package(tmp_path / "app", "app")
    graph = import_graph(known)
    assert graph["app.low.b"] == [Import("app.low.a", 1, ("X",))]
    assert layer_violations(graph, known, layer=lambda m: m.split(".")[1], allowed={"low": set()}) == []
    assert cycles(graph) == [] and private_imports(graph, known) == []
