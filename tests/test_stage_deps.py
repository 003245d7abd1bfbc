"""Each dvc.yaml stage's code deps are exactly the project files its command imports (no hand-kept list)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml
from support import REPO_ROOT

from expctr import stage_deps
from expctr.import_graph import closure, index_package


def test_dvc_yaml_code_deps_are_what_each_stage_imports():
    found = stage_deps.drift(REPO_ROOT)
    assert not found, "dvc.yaml code deps differ from the imports (run `.venv/bin/python -m expctr.stage_deps " \
        "--write`):\n" + "\n".join(f"{d.stage}: missing {list(d.missing)}, extra {list(d.extra)}" for d in found)


def test_serving_code_is_no_dep_of_the_training_stages():
    derived = stage_deps.derived_code_deps(REPO_ROOT)
    for stage, files in derived.items():
        if stage != "bento":
            assert not [f for f in files if f.startswith("src/expctr/serving/")], stage
    assert "src/expctr/stages/explainer_round.py" in derived["explainer_round_1"]
    assert "src/expctr/cli.py" in derived["raw_data"] and "bento/service.py" in derived["bento"]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


def test_closure_follows_lazy_relative_and_package_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": '"""Docstring only: importing below it runs nothing."""\n',
        "pkg/entry.py": """\
            from typing import TYPE_CHECKING

            from . import helper
            if TYPE_CHECKING:
                from pkg import typing_only

            def run():
                from pkg.sub.deep import f  # lazy: counts
                return f()
            """,
        "pkg/helper.py": "import json\nfrom .sub import deep\n",
        "pkg/sub/__init__.py": "LEVEL = 1  # code: runs before pkg.sub.deep\n",
        "pkg/sub/deep.py": "from ..leaf import g\n\ndef f():\n    return g\n",
        "pkg/leaf.py": "g = 1\n",
        "pkg/typing_only.py": "",
        "pkg/unused.py": "from pkg import leaf\n",
    })
    known = index_package(tmp_path / "pkg")
    got = closure([tmp_path / "pkg" / "entry.py"], known)
    want = ["entry.py", "helper.py", "leaf.py", "sub/__init__.py", "sub/deep.py"]
    assert [p.relative_to(tmp_path / "pkg").as_posix() for p in got] == want


CLI = """\
    import typer
    app = typer.Typer()

    @app.command("one")
    def one(root=None):
        _run("one", root, "params.yaml")

    @app.command("two")
    def two(round: int = 0):
        _run("two", None, "params.yaml", round=round)
    """
DVC_YAML = """\
    # comment at the top
    stages:
      one:
        cmd: expctr one
        deps:
          - src/expctr/stages      # a whole folder: too wide
          - data/in   # kept, with its comment
        outs:
          - data/one
      two:
        cmd: expctr two --round 1
        deps: # the list
          - data/one
          # a comment line between items stays
          - src/expctr/stages/two.py
          - src/expctr/gone.py
        params: &p [seed]
        outs: [data/two]
    """


def test_check_and_write_on_a_fake_project(tmp_path, capsys):
    _write(tmp_path, {
        "src/expctr/__init__.py": "",
        "src/expctr/cli.py": CLI,
        "src/expctr/io.py": "",
        "src/expctr/stages/__init__.py": "",
        "src/expctr/stages/one.py": "def run():\n    from expctr.io import x\n",
        "src/expctr/stages/two.py": "from expctr.stages import one\n",
        "dvc.yaml": DVC_YAML,
    })
    assert stage_deps.main(["--check", "--root", str(tmp_path)]) == 1
    assert "one: missing src/expctr/cli.py, src/expctr/io.py" in capsys.readouterr().out
    assert stage_deps.main(["--write", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == textwrap.dedent("""\
        # comment at the top
        stages:
          one:
            cmd: expctr one
            deps:
              - data/in   # kept, with its comment
              - src/expctr/cli.py
              - src/expctr/io.py
              - src/expctr/stages/one.py
            outs:
              - data/one
          two:
            cmd: expctr two --round 1
            deps: # the list
              - data/one
              # a comment line between items stays
              - src/expctr/cli.py
              - src/expctr/io.py
              - src/expctr/stages/one.py
              - src/expctr/stages/two.py
            params: &p [seed]
            outs: [data/two]
        """)
    assert stage_deps.main(["--check", "--root", str(tmp_path)]) == 0
    before = (tmp_path / "dvc.yaml").read_text()
    stage_deps.main(["--write", "--root", str(tmp_path)])
    assert (tmp_path / "dvc.yaml").read_text() == before
    assert yaml.safe_load(before)["stages"]["two"]["params"] == ["seed"]
