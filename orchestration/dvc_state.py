"""What DVC knows about each stage, as versions Dagster can compare: plain Python, no Dagster or DVC import.

Dagster marks an asset stale when its *code version* differs from the one recorded at its latest
materialisation, or when an upstream asset's *data version* differs from the one it consumed. The DVC
stage graph maps onto that as follows:

- **code version** of a stage: a fingerprint of the stage's own inputs as they are in the workspace now —
  its ``cmd``, the values of its ``params`` and the content of every dep that no other stage produces (its
  code). A change to ``params.yaml`` or to a stage's code gives a new code version, the same change
  ``dvc status`` reports as ``changed deps`` or ``changed command``.
- **data version** of a stage: a hash of the output hashes ``dvc.lock`` records for it, so the same
  outputs have the same version whichever front door (``dvc repro``, ``dvc pull``, Dagster) made them.

``dvc status --json`` stays the source of truth for "changed": :func:`parse_status` reads it and
:func:`lock_provenance` uses it to decide whether a ``dvc.lock`` entry still matches the workspace's code
and upstream outputs before the state is reported to Dagster (see ``orchestration/sync.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestration.dvc_graph import DvcPipeline, DvcStage, paths_overlap

DVC_LOCK = "dvc.lock"
DEFAULT_PARAMS_FILE = "params.yaml"
LOCK_MARK = "dvc.lock:"  # prefix of a version that describes dvc.lock, not the workspace
SKIPPED_DIRS = {"__pycache__", ".git", ".dvc"}
_VERSION_CHARS = 16


class DvcStatusError(RuntimeError):
    """``dvc status`` could not be run or read (DVC missing, repository locked, not a DVC project)."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:_VERSION_CHARS]


# ------------------------------------------------------------------------------------------ dvc.lock


def read_lock(project_dir: str | Path) -> dict[str, Mapping[str, Any]]:
    """``{stage: lock entry}`` from ``dvc.lock``; empty when there is none (nothing reproduced yet)."""
    path = Path(project_dir) / DVC_LOCK
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not readable as YAML: {exc}") from exc
    stages = doc.get("stages") if isinstance(doc, Mapping) else None
    return {str(k): v for k, v in (stages or {}).items() if isinstance(v, Mapping)}


def lock_out_hashes(entry: Mapping[str, Any] | None) -> dict[str, str]:
    """``{out path: md5}`` of a ``dvc.lock`` stage entry (empty when the entry records no outs)."""
    return {
        str(o["path"]): str(o.get("md5") or o.get("hash") or "")
        for o in (entry or {}).get("outs") or []
        if isinstance(o, Mapping) and "path" in o
    }


def data_version_of_outs(outs: Mapping[str, str]) -> str | None:
    """The data version of a stage whose ``dvc.lock`` outs are ``outs``; ``None`` when it has none."""
    if not outs:
        return None
    return hashlib.sha256(json.dumps(dict(outs), sort_keys=True).encode()).hexdigest()[:_VERSION_CHARS]


# -------------------------------------------------------------------------------------- code version


def own_deps(pipeline: DvcPipeline, stage: DvcStage) -> tuple[str, ...]:
    """The stage's deps that no other stage produces: its code and external inputs."""
    others = [p for s in pipeline.stages if s.name != stage.name for p in s.produced]
    return tuple(d for d in stage.deps if not any(paths_overlap(d, o) for o in others))


def upstream_deps(pipeline: DvcPipeline, stage: DvcStage, upstream: DvcStage) -> tuple[str, ...]:
    """The stage's deps that ``upstream`` produces."""
    return tuple(d for d in stage.deps if any(paths_overlap(d, o) for o in upstream.produced))


def _param_value(doc: Any, dotted: str) -> Any:
    node = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return {"missing": dotted}
        node = node[part]
    return node


def param_values(stage: DvcStage, project_dir: Path) -> dict[str, Any]:
    """Current values of the stage's ``params`` (``key``, ``file:key`` or ``file:*``), keyed as written."""
    cache: dict[str, Any] = {}

    def doc(name: str) -> Any:
        if name not in cache:
            try:
                cache[name] = yaml.safe_load((project_dir / name).read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                cache[name] = None
        return cache[name]

    values: dict[str, Any] = {}
    for entry in stage.params:
        file, _, key = entry.rpartition(":") if ":" in entry else ("", "", entry)
        file = file or DEFAULT_PARAMS_FILE
        values[entry] = doc(file) if key == "*" else _param_value(doc(file), key)
    return values


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative path + content, ``__pycache__`` skipped)."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                if name.endswith(".pyc"):
                    continue
                f = Path(root) / name
                h.update(f.relative_to(path).as_posix().encode() + b"\0")
                h.update(hashlib.sha256(f.read_bytes()).digest())
    else:
        return "missing"
    return h.hexdigest()


def code_version(pipeline: DvcPipeline, stage: DvcStage, project_dir: str | Path) -> str:
    """Fingerprint of the stage's own inputs in the workspace now: cmd, param values, own deps' content."""
    root = Path(project_dir)
    return _digest(
        {
            "cmd": stage.cmd,
            "params": param_values(stage, root),
            "deps": {d: content_hash(root / d) for d in own_deps(pipeline, stage)},
        }
    )


# ---------------------------------------------------------------------------------------- dvc status


@dataclass(frozen=True)
class StageStatus:
    """What ``dvc status`` reports for one stage; a stage it does not list is clean."""

    changed_deps: Mapping[str, Any] = field(default_factory=dict)  # path (or params file) -> change
    changed_outs: Mapping[str, str] = field(default_factory=dict)
    other: tuple[str, ...] = ()  # e.g. "changed command", "always changed"

    @property
    def clean(self) -> bool:
        return not (self.changed_deps or self.changed_outs or self.other)


def parse_status(doc: Any) -> dict[str, StageStatus]:
    """``dvc status --json`` output as ``{stage: StageStatus}`` (``.dvc`` file entries are skipped)."""
    if not isinstance(doc, Mapping):
        raise DvcStatusError(f"dvc status --json: expected an object, got {type(doc).__name__}")
    out: dict[str, StageStatus] = {}
    for name, changes in doc.items():
        if str(name).endswith(".dvc"):
            continue
        deps: dict[str, Any] = {}
        outs: dict[str, str] = {}
        other: list[str] = []
        for change in changes if isinstance(changes, list) else [changes]:
            if isinstance(change, str):
                other.append(change)
            elif isinstance(change, Mapping):
                deps.update(change.get("changed deps") or {})
                outs.update(change.get("changed outs") or {})
                other.extend(k for k in change if k not in ("changed deps", "changed outs"))
        out[str(name).rpartition(":")[2]] = StageStatus(deps, outs, tuple(other))
    return out


def dvc_status(project_dir: str | Path, dvc_bin: str, env: Mapping[str, str] | None = None,
               timeout: float = 300) -> dict[str, StageStatus]:
    """Run ``dvc status --json`` in the project (never waits for DVC's lock: a busy repository raises)."""
    cmd = [dvc_bin, "status", "--json"]
    try:
        proc = subprocess.run(cmd, cwd=project_dir, env=dict(env) if env is not None else None,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DvcStatusError(f"{' '.join(cmd)} in {project_dir}: {exc}") from exc
    if proc.returncode != 0:
        raise DvcStatusError(f"{' '.join(cmd)} in {project_dir} exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    try:
        return parse_status(json.loads(proc.stdout or "{}"))
    except ValueError as exc:
        raise DvcStatusError(f"{' '.join(cmd)}: output is not JSON: {proc.stdout[:500]!r}") from exc


# ------------------------------------------------------------------------- the state dvc.lock records


@dataclass(frozen=True)
class LockProvenance:
    """The versions of one stage's ``dvc.lock`` entry, as Dagster records them on a materialisation."""

    stage: str
    data_version: str
    code_version: str
    input_data_versions: Mapping[str, str]  # upstream stage name -> data version it consumed
    own_inputs_changed: bool
    changed_upstream: tuple[str, ...]


def lock_provenance(pipeline: DvcPipeline, stage: DvcStage, project_dir: str | Path,
                    lock: Mapping[str, Mapping[str, Any]],
                    status: Mapping[str, StageStatus]) -> LockProvenance | None:
    """Versions of ``stage``'s ``dvc.lock`` entry; ``None`` when the workspace does not hold its outputs.

    Where ``dvc status`` says the stage's own inputs (params, command, code) changed since the lock was
    written, the code version is a ``dvc.lock:`` marker instead of the workspace's, so Dagster shows the
    asset stale; the same for an upstream whose outputs changed since this stage consumed them.
    """
    entry = lock.get(stage.name)
    data_version = data_version_of_outs(lock_out_hashes(entry))
    st = status.get(stage.name, StageStatus())
    if entry is None or data_version is None or st.changed_outs:
        return None
    own = set(own_deps(pipeline, stage))
    own_changed = bool(st.other) or any(
        path in own or not any(paths_overlap(path, d) for d in stage.deps) for path in st.changed_deps
    )  # params.yaml is not a dep path: it lands in the second clause
    if own_changed:
        recorded = {k: entry.get(k) for k in ("cmd", "params")}
        recorded["deps"] = {
            str(d.get("path")): d.get("md5") or d.get("hash")
            for d in entry.get("deps") or []
            if isinstance(d, Mapping) and str(d.get("path")) in own
        }
        code = LOCK_MARK + _digest(recorded)
    else:
        code = code_version(pipeline, stage, project_dir)

    inputs: dict[str, str] = {}
    changed_up: list[str] = []
    for up_name in pipeline.upstream(stage.name):
        up = pipeline.stage(up_name)
        paths = upstream_deps(pipeline, stage, up)
        current = data_version_of_outs(lock_out_hashes(lock.get(up_name)))
        if current is None or any(any(paths_overlap(p, c) for p in paths) for c in st.changed_deps):
            consumed = {
                str(d.get("path")): d.get("md5") or d.get("hash")
                for d in entry.get("deps") or []
                if isinstance(d, Mapping) and str(d.get("path")) in paths
            }
            inputs[up_name] = LOCK_MARK + _digest(consumed)
            changed_up.append(up_name)
        else:
            inputs[up_name] = current
    return LockProvenance(stage.name, data_version, code, inputs, own_changed, tuple(changed_up))
