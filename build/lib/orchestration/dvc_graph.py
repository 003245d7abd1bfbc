"""Pure-Python reading of ``dvc.yaml`` into stage records and the stage dependency graph.

DVC owns the stage graph; this module only *reads* it so that Dagster can show the same graph without
importing DVC (which lives in its own virtual environment). The upstream relation mirrors
``dvc.repo.graph.build_graph``: stage B depends on stage A when a path in B's ``deps`` equals, lies under,
or contains a path that A produces (its ``outs``, ``metrics`` or ``plots``).

Dagster-specific settings live under each stage's ``meta.dagster``::

    meta:
      dagster:
        asset: validated_features              # asset key (default: the stage name)
        checks: [metrics/validation.json]      # GX result JSON files -> blocking asset checks
        headline: [ctr.din.auc, ctr.din.logloss]  # flattened metric keys for the headline table
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DVC_YAML = "dvc.yaml"
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


class DvcYamlError(ValueError):
    """``dvc.yaml`` cannot be read into stages; the message names the file and the stage."""


@dataclass(frozen=True)
class DvcStage:
    """One stage of ``dvc.yaml``. Every path is relative to the project root (``wdir`` applied)."""

    name: str
    asset_key: str
    desc: str | None
    cmd: str
    wdir: str = "."
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def produced(self) -> tuple[str, ...]:
        """Every path DVC tracks as an output of this stage (outs, metrics and plots)."""
        return self.outs + self.metrics + self.plots


@dataclass(frozen=True)
class DvcPipeline:
    """The stages of one ``dvc.yaml`` in file order, with the upstream relation between them."""

    path: Path
    stages: tuple[DvcStage, ...]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def stage(self, name: str) -> DvcStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.path}: no stage named {name!r} (stages: {', '.join(self.stage_names)})")

    def upstream(self, name: str) -> tuple[str, ...]:
        """Names of the stages whose outputs ``name`` depends on, in file order."""
        stage = self.stage(name)
        return tuple(
            other.name
            for other in self.stages
            if other.name != name
            and any(paths_overlap(dep, out) for dep in stage.deps for out in other.produced)
        )

    def downstream(self, name: str) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if name in self.upstream(s.name))

    def edges(self) -> set[tuple[str, str]]:
        """``(upstream_stage, downstream_stage)`` pairs."""
        return {(up, s.name) for s in self.stages for up in self.upstream(s.name)}


def paths_overlap(dep: str, out: str) -> bool:
    """True when ``dep`` equals ``out`` or one lies inside the other (DVC links both directions)."""
    if dep == out:
        return True
    return dep.startswith(out.rstrip("/") + "/") or out.startswith(dep.rstrip("/") + "/")


def load_pipeline(project_dir: str | Path) -> DvcPipeline:
    """Read ``<project_dir>/dvc.yaml``."""
    path = Path(project_dir) / DVC_YAML
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DvcYamlError(f"{path}: not found (set EXPCTR_PROJECT_DIR to the DVC project root)") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DvcYamlError(f"{path}: not valid YAML: {exc}") from exc
    return parse_pipeline(data, path)


def parse_pipeline(data: Any, path: str | Path = DVC_YAML) -> DvcPipeline:
    """Build a :class:`DvcPipeline` from the parsed YAML document of a ``dvc.yaml``."""
    path = Path(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("stages"), Mapping):
        raise DvcYamlError(f"{path}: expected a top-level 'stages:' mapping")
    stages: list[DvcStage] = []
    seen_keys: dict[str, str] = {}
    for name, body in data["stages"].items():
        stage = _parse_stage(str(name), body, path)
        if stage.asset_key in seen_keys:
            raise DvcYamlError(
                f"{path}: stage {stage.name!r}: asset key {stage.asset_key!r} is already used by stage "
                f"{seen_keys[stage.asset_key]!r}"
            )
        seen_keys[stage.asset_key] = stage.name
        stages.append(stage)
    if not stages:
        raise DvcYamlError(f"{path}: no stages")
    return DvcPipeline(path=path, stages=tuple(stages))


def _parse_stage(name: str, body: Any, path: Path) -> DvcStage:
    where = f"{path}: stage {name!r}"

    def fail(msg: str) -> DvcYamlError:
        return DvcYamlError(f"{where}: {msg}")

    if not isinstance(body, Mapping):
        raise fail(f"expected a mapping, got {type(body).__name__}")
    if "foreach" in body or "matrix" in body:
        raise fail("'foreach'/'matrix' stages are not supported by the Dagster bridge; write the stages out")

    cmd = body.get("cmd")
    if isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd):
        cmd = " && ".join(cmd)
    if not isinstance(cmd, str) or not cmd.strip():
        raise fail("'cmd' must be a non-empty string or list of strings")
    desc = body.get("desc")
    if desc is not None and not isinstance(desc, str):
        raise fail("'desc' must be a string")
    wdir = body.get("wdir", ".")
    if not isinstance(wdir, str):
        raise fail("'wdir' must be a string")

    def paths(key: str) -> tuple[str, ...]:
        return tuple(_norm(wdir, p, fail, key) for p in _entries(body.get(key), key, fail))

    meta = body.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise fail("'meta' must be a mapping")
    dmeta = meta.get("dagster") or {}
    if not isinstance(dmeta, Mapping):
        raise fail("'meta.dagster' must be a mapping")

    asset_key = dmeta.get("asset", None)
    if asset_key is None:
        asset_key = re.sub(r"[^A-Za-z0-9_]", "_", name)
    elif not isinstance(asset_key, str) or not _NAME_RE.match(asset_key):
        raise fail(f"'meta.dagster.asset' must be a name of letters, digits and '_', got {asset_key!r}")

    checks = tuple(_norm(wdir, p, fail, "meta.dagster.checks") for p in _str_list(dmeta, "checks", fail))
    headline = _str_list(dmeta, "headline", fail)
    produced = paths("outs") + paths("metrics") + paths("plots")
    for check in checks:
        if not any(check == p or check.startswith(p.rstrip("/") + "/") for p in produced):
            raise fail(f"check file {check!r} is not one of (or inside) the stage's outs/metrics/plots")

    return DvcStage(
        name=name,
        asset_key=asset_key,
        desc=desc.strip() if desc else None,
        cmd=cmd,
        wdir=wdir,
        deps=paths("deps"),
        params=tuple(_param_names(body.get("params"), fail)),
        outs=paths("outs"),
        metrics=paths("metrics"),
        plots=paths("plots"),
        checks=checks,
        headline=headline,
        meta=dict(dmeta),
    )


def _entries(value: Any, key: str, fail) -> list[str]:
    """Paths of a deps/outs/metrics/plots list whose items are ``path`` or ``{path: options}``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(f"{key!r} must be a list")
    out: list[str] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping) and len(item) == 1:
            ((p, opts),) = item.items()
            if not isinstance(p, str) or not (opts is None or isinstance(opts, Mapping)):
                raise fail(f"{key!r} entry {item!r} must be 'path' or '{{path: {{options}}}}'")
            out.append(p)
        else:
            raise fail(f"{key!r} entry {item!r} must be 'path' or '{{path: {{options}}}}'")
    return out


def _norm(wdir: str, p: str, fail, key: str) -> str:
    if "${" in p:
        raise fail(f"{key!r} path {p!r} uses templating, which the Dagster bridge does not resolve")
    if "://" in p or posixpath.isabs(p):
        return p
    return posixpath.normpath(posixpath.join(wdir, p))


def _str_list(meta: Mapping[str, Any], key: str, fail) -> tuple[str, ...]:
    value = meta.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(f"'meta.dagster.{key}' must be a list of strings")
    return tuple(value)


def _param_names(value: Any, fail) -> list[str]:
    """``params`` entries as strings: ``key`` or ``file:key`` (``{file: [keys]}`` form expanded)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail("'params' must be a list")
    out: list[str] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping):
            for file, keys in item.items():
                if keys is None or keys == []:
                    out.append(f"{file}:*")
                elif isinstance(keys, list):
                    out.extend(f"{file}:{k}" for k in keys)
                else:
                    raise fail(f"'params' entry {item!r} must map a file to a list of keys")
        else:
            raise fail(f"'params' entry {item!r} must be a key or '{{file: [keys]}}'")
    return out
