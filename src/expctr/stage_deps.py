"""The code `deps:` of each dvc.yaml stage, derived from what the stage imports.

A stage must rerun when code it runs changes, and only then: its code deps are the files of its entry
modules plus every project module they import, directly or not (`expctr.import_graph`). Each stage's
`cmd` is `expctr <command>`; src/expctr/cli.py maps a command to `_run("<stage>")`, which imports
`expctr.stages.<stage>` by name, so the entries are cli.py and that stage module. A command that runs a
script instead names it in `SCRIPT_ENTRIES`.

`python -m expctr.stage_deps --check` reports stages whose code deps differ; `--write` rewrites only
those entries in dvc.yaml (comments, other deps and their order stay as they are).
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from expctr.import_graph import closure, index_package

CLI = "src/expctr/cli.py"
# Commands that run a script rather than a stage module: `expctr bento` runs bento/package.py, which
# packages bento/service.py as the Bento's service.
SCRIPT_ENTRIES = {"bento": ("bento/package.py", "bento/service.py")}


class StageDepsError(ValueError):
    """dvc.yaml or cli.py is not in the shape the derivation reads; the message says where."""


def is_code_dep(dep: str) -> bool:
    """True for the deps this module owns: project Python files and src/ folders."""
    return dep.startswith("src/") or dep.endswith(".py")


def _first_string_args(nodes: list[ast.AST], accept) -> list[str]:
    """First string arguments of the calls under `nodes` whose callee `accept` takes."""
    return [n.args[0].value for node in nodes for n in ast.walk(node) if isinstance(n, ast.Call) and n.args
            and accept(n.func) and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)]


def command_entries(root: Path) -> dict[str, tuple[str, ...]]:
    """CLI command -> entry files (relative to root), read from cli.py's `@app.command("<name>")` functions."""
    tree = ast.parse((root / CLI).read_text(encoding="utf-8"))
    out: dict[str, tuple[str, ...]] = {}
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        names = _first_string_args(fn.decorator_list, lambda f: isinstance(f, ast.Attribute) and f.attr == "command")
        if not names:
            continue
        stages = _first_string_args(fn.body, lambda f: isinstance(f, ast.Name) and f.id == "_run")
        if stages:
            entries = tuple(f"src/expctr/stages/{s}.py" for s in stages)
        elif names[0] in SCRIPT_ENTRIES:
            entries = SCRIPT_ENTRIES[names[0]]
        else:
            raise StageDepsError(f"{CLI}: command {names[0]!r} neither calls _run(<stage>) nor is in SCRIPT_ENTRIES")
        out[names[0]] = (CLI, *entries)
    return out


def derived_code_deps(root: Path) -> dict[str, list[str]]:
    """dvc.yaml stage -> the sorted code files its command runs (entries + their import closure)."""
    root = Path(root)
    known = index_package(root / "src" / "expctr", "expctr")
    commands = command_entries(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out: dict[str, list[str]] = {}
    for name, body in stages.items():
        argv = shlex.split(body["cmd"])
        if argv[:1] != ["expctr"] or len(argv) < 2 or argv[1] not in commands:
            raise StageDepsError(f"dvc.yaml: stage {name!r}: cmd {body['cmd']!r} is not an `expctr <command>`")
        for entry in commands[argv[1]]:
            if not (root / entry).is_file():
                raise StageDepsError(f"dvc.yaml: stage {name!r}: entry {entry} does not exist")
        files = closure([root / e for e in commands[argv[1]]], known)
        out[name] = [p.relative_to(root).as_posix() for p in files]
    return out


@dataclass(frozen=True)
class Drift:
    """How one stage's code deps in dvc.yaml differ from what it imports."""

    stage: str
    missing: tuple[str, ...]  # imported, not in deps
    extra: tuple[str, ...]  # in deps, not imported (a folder counts as extra: deps list files)


def drift(root: Path) -> list[Drift]:
    """Stages whose code deps in dvc.yaml are not exactly the files they import."""
    stages = yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out = []
    for name, want in derived_code_deps(root).items():
        have = [d for d in _dep_paths(stages[name].get("deps")) if is_code_dep(d)]
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            out.append(Drift(name, tuple(missing), tuple(extra)))
    return out


def _dep_paths(deps) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in deps or []]


_KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):\s*(#.*)?$")
_ITEM_LINE = re.compile(r"^(\s*)-\s+(\S[^#]*?)\s*(#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    """True for a line that is neither blank nor only a comment."""
    return bool(line.strip()) and not line.lstrip().startswith("#")


def rewrite(text: str, code_deps: dict[str, list[str]]) -> str:
    """dvc.yaml text with each stage's code deps replaced by `code_deps[stage]`, listed after its other
    deps; every other line is kept byte for byte."""
    lines, todo = text.splitlines(keepends=True), dict(code_deps)
    out: list[str] = []
    in_stages, stage_indent, body_indent, stage = False, None, None, None
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not _content(line):
            continue
        indent, key = _indent(line), _KEY_LINE.match(line)
        if indent == 0:
            in_stages, stage = line.startswith("stages:"), None
        elif in_stages and (stage_indent is None or indent == stage_indent):
            stage_indent, body_indent, stage = indent, None, key.group(2) if key else None
        elif stage is not None and (body_indent is None or indent == body_indent):
            body_indent = indent
            if key and key.group(2) == "deps" and stage in todo:
                i, block = _deps_block(lines, i, indent)
                out += _rewrite_block(block, todo.pop(stage), stage)
    if todo:
        raise StageDepsError(f"dvc.yaml: no block-style `deps:` list in stage(s) {', '.join(sorted(todo))}")
    return "".join(out)


def _deps_block(lines: list[str], i: int, key_indent: int) -> tuple[int, list[str]]:
    """The lines of the block list under a `deps:` key at key_indent, and the index after them."""
    start = i
    while i < len(lines):
        line = lines[i]
        if _content(line) and (_indent(line) < key_indent
                               or _indent(line) == key_indent and not line.lstrip().startswith("-")):
            break
        i += 1
    while i > start and not _content(lines[i - 1]):  # trailing blank/comment lines belong to what follows
        i -= 1
    return i, lines[start:i]


def _rewrite_block(block: list[str], code: list[str], stage: str) -> list[str]:
    """The deps lines with the code entries dropped and `code` appended after the other entries."""
    kept: list[str] = []
    indent, dropping = None, False
    for line in block:
        item = _ITEM_LINE.match(line)
        if item:
            indent = item.group(1) if indent is None else indent
            dropping = is_code_dep(item.group(2).rstrip(":").strip("'\""))
        elif not _content(line):
            dropping = False  # a comment line stays, whatever item it follows
        if not dropping:
            kept.append(line)
    if indent is None:
        raise StageDepsError(f"dvc.yaml: stage {stage!r}: `deps:` is not a block list")
    return kept + [f"{indent}- {path}\n" for path in code]


def write(root: Path) -> list[Drift]:
    """Rewrite dvc.yaml's code deps in place; returns the drift that was fixed."""
    path = Path(root) / "dvc.yaml"
    before = drift(root)
    if not before:
        return []
    text = path.read_text(encoding="utf-8")
    new = rewrite(text, derived_code_deps(root))
    old_doc, new_doc = yaml.safe_load(text), yaml.safe_load(new)
    for body in (*old_doc["stages"].values(), *new_doc["stages"].values()):  # nothing else may change
        body["deps"] = [d for d in _dep_paths(body.get("deps")) if not is_code_dep(d)]
    if old_doc != new_doc:
        raise StageDepsError("dvc.yaml: rewriting the code deps would change other entries; nothing written")
    path.write_text(new, encoding="utf-8")
    return before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m expctr.stage_deps", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when a stage's code deps differ")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps in dvc.yaml")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (holds dvc.yaml)")
    args = parser.parse_args(argv)
    found = write(args.root) if args.write else drift(args.root)
    for d in found:
        print(f"{d.stage}: " + "; ".join(
            part for part in (f"missing {', '.join(d.missing)}" if d.missing else "",
                              f"extra {', '.join(d.extra)}" if d.extra else "") if part))
    if args.write:
        print(f"rewrote the code deps of {len(found)} stage(s)" if found else "dvc.yaml code deps are current")
        return 0
    print(f"{len(found)} stage(s) out of date: run `python -m expctr.stage_deps --write`" if found
          else "dvc.yaml code deps match the imports")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
