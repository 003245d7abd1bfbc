"""Asset and asset-check factories: one asset per DVC stage, one blocking check per GX result file.

Materialising an asset runs its stage with ``dvc repro --single-item`` (see :class:`DvcProject`) and
records the stage's metrics files, outputs, command and ``dvc.lock`` hashes as materialisation metadata;
a stage's ``meta.dagster.markdown`` file (a Markdown summary the stage writes, e.g. the evaluation report's)
becomes the ``summary`` entry. Each ``meta.dagster.checks`` file (a Great Expectations result JSON written by
the stage) becomes a blocking asset check: when it fails, downstream stages in the same run do not start.
"""

import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from orchestration.dvc_graph import DvcPipeline, DvcStage
from orchestration.dvc_state import code_version, data_version_of_outs, lock_out_hashes, read_lock
from orchestration.resources import DvcProject

GROUP_NAME = "expctr"
RESOURCE_KEY = "dvc"
MAX_METRIC_ENTRIES = 40
MAX_HEADLINE = 10
MAX_FAILED_ROWS = 50
MAX_MARKDOWN_CHARS = 20_000


class ReproConfig(dg.Config):
    """Run config of every stage asset."""

    force: bool = False
    """Pass ``--force`` to ``dvc repro``: run the stage even when DVC finds nothing changed."""


# ----------------------------------------------------------------------------------------- metrics


def flatten_numeric(obj: Any, prefix: str = "") -> list[tuple[str, int | float]]:
    """Numeric leaves of nested mappings as ``(dotted.key, value)``, in document order.

    Booleans and strings are not numeric; lists are skipped (per-row data, curves and GX result lists
    are not headline numbers).
    """
    out: list[tuple[str, int | float]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)):
                out.append((key, v))
            elif isinstance(v, Mapping):
                out.extend(flatten_numeric(v, key))
    return out


def read_metrics_file(path: Path) -> Any:
    """Parse a DVC metrics file (JSON, YAML); ``None`` when missing, unreadable or another format."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        return None
    return None


def collect_metrics(stage: DvcStage, project_dir: Path) -> tuple[dict[str, int | float], int]:
    """Flattened numeric metrics of the stage, keyed ``<file stem>.<dotted key>``.

    At most :data:`MAX_METRIC_ENTRIES` are kept, shallowest keys first (document order within a
    depth). Returns the kept metrics in document order and how many were left out.
    """
    leaves: list[tuple[str, int | float]] = []
    for rel in stage.metrics:
        data = read_metrics_file(project_dir / rel)
        if data is not None:
            leaves.extend(flatten_numeric(data, Path(rel).stem))
    keep = {k for k, _ in sorted(leaves, key=lambda kv: kv[0].count("."))[:MAX_METRIC_ENTRIES]}
    return {k: v for k, v in leaves if k in keep}, max(0, len(leaves) - len(keep))


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return "nan" if math.isnan(v) else f"{v:.6g}"


def headline_table(stage: DvcStage, metrics: Mapping[str, int | float]) -> str:
    """Markdown table of ``meta.dagster.headline`` keys (default: the shallowest metrics)."""
    if stage.headline:
        keys = [k for k in stage.headline if k in metrics]
        missing = [k for k in stage.headline if k not in metrics]
    else:
        keys = sorted(metrics, key=lambda k: k.count("."))[:MAX_HEADLINE]
        missing = []
    if not keys and not missing:
        return "_no numeric metrics_"
    rows = [f"| `{k}` | {_fmt(metrics[k])} |" for k in keys]
    rows += [f"| `{k}` | _missing_ |" for k in missing]
    return "\n".join(["| metric | value |", "| --- | ---: |", *rows])


def lock_outs(stage: DvcStage, project_dir: Path) -> dict[str, str]:
    """``{out path: md5}`` that ``dvc.lock`` records for the stage (empty when not recorded)."""
    try:
        return lock_out_hashes(read_lock(project_dir).get(stage.name))
    except ValueError:
        return {}


def samples_table(stage: DvcStage, project_dir: Path, limit: int = 5) -> str | None:
    """A markdown table of the `samples` list a stage's metrics JSON carries (e.g. sample explanations)."""
    for rel in stage.metrics:
        try:
            data = json.loads((project_dir / rel).read_text())
        except (OSError, ValueError):
            continue
        rows = data.get("samples") if isinstance(data, dict) else None
        if not rows or not isinstance(rows, list) or not isinstance(rows[0], dict):
            continue
        cols = list(rows[0])
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows[:limit]]
        return "\n".join(lines)
    return None


def markdown_summary(stage: DvcStage, project_dir: Path, limit: int = MAX_MARKDOWN_CHARS) -> str | None:
    """Content of the Markdown file named by the stage's ``meta.dagster.markdown`` (relative to the stage's
    ``wdir``); ``None`` when unset, not a string, missing or unreadable. Files over ``limit`` characters are
    cut at the last line break before it, with a note naming the file."""
    rel = stage.meta.get("markdown")
    if not isinstance(rel, str) or not rel.strip():
        return None
    rel = posixpath.normpath(posixpath.join(stage.wdir, rel))
    try:
        text = (project_dir / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    cut = cut if cut > limit // 2 else limit
    note = f"_… truncated: {cut:,} of {len(text):,} characters shown; full text in `{rel}`._"
    return text[:cut].rstrip() + "\n\n" + note + "\n"


def materialization_metadata(stage: DvcStage, project_dir: Path) -> tuple[dict[str, Any], str | None]:
    """Metadata of one materialisation and a data version (hash of the stage's ``dvc.lock`` outs)."""
    metrics, left_out = collect_metrics(stage, project_dir)
    md: dict[str, Any] = {
        k: (dg.MetadataValue.int(v) if isinstance(v, int) else dg.MetadataValue.float(float(v)))
        for k, v in metrics.items()
    }
    md["headline_metrics"] = dg.MetadataValue.md(headline_table(stage, metrics))
    if left_out:
        md["metrics_left_out"] = dg.MetadataValue.int(left_out)
    samples = samples_table(stage, project_dir)
    if samples:
        md["sample_explanations"] = dg.MetadataValue.md(samples)
    summary = markdown_summary(stage, project_dir)
    if summary is not None:
        md["summary"] = dg.MetadataValue.md(summary)
    md["dvc_cmd"] = dg.MetadataValue.text(stage.cmd)
    md["dvc_outs"] = dg.MetadataValue.json(list(stage.produced))
    missing = [p for p in stage.produced if not (project_dir / p).exists()]
    if missing:
        md["dvc_outs_missing"] = dg.MetadataValue.json(missing)
    outs = lock_outs(stage, project_dir)
    if outs:
        md["dvc_lock_outs"] = dg.MetadataValue.json(outs)
    return md, data_version_of_outs(outs)


# ---------------------------------------------------------------------------------------- GX checks


def check_name(path: str) -> str:
    """Asset-check name for a GX result file: ``metrics/validation_raw.json`` -> ``gx_validation_raw``."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).stem)
    return stem if stem.startswith("gx_") else f"gx_{stem}"


def _examples(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def evaluate_gx_result(path: Path, stage_name: str, rel: str | None = None) -> dg.AssetCheckResult:
    """Check result for a GX result JSON: passes iff its top-level ``success`` is true."""
    shown = rel or str(path)
    if not path.exists():
        return dg.AssetCheckResult(
            passed=False,
            description=f"{shown} does not exist: stage {stage_name!r} has not written it "
            f"(materialise the asset, i.e. `dvc repro {stage_name}`)",
            metadata={"gx_file": dg.MetadataValue.path(shown)},
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, Mapping):
            raise TypeError("top level is not an object")
    except (OSError, ValueError, TypeError) as exc:
        return dg.AssetCheckResult(
            passed=False,
            description=f"{shown} is not a readable GX result JSON: {exc}",
            metadata={"gx_file": dg.MetadataValue.path(shown)},
        )

    suites = [s for s in doc.get("suites") or [] if isinstance(s, Mapping)]
    suite_rows, failed_rows = [], []
    evaluated = 0
    for s in suites:
        results = [r for r in s.get("results") or [] if isinstance(r, Mapping)]
        n_eval = s.get("evaluated", len(results))
        n_fail = s.get("failed", sum(1 for r in results if not r.get("success", False)))
        evaluated += n_eval if isinstance(n_eval, int) else 0
        suite_rows.append(
            dg.TableRecord(
                {
                    "table": str(s.get("table", "")),
                    "success": bool(s.get("success", False)),
                    "evaluated": n_eval if isinstance(n_eval, int) else None,
                    "failed": n_fail if isinstance(n_fail, int) else None,
                }
            )
        )
        for r in results:
            if r.get("success", False):
                continue
            count = r.get("unexpected_count")
            failed_rows.append(
                dg.TableRecord(
                    {
                        "table": str(s.get("table", "")),
                        "expectation": str(r.get("expectation", "")),
                        "column": None if r.get("column") is None else str(r.get("column")),
                        "unexpected_count": count if isinstance(count, int) else None,
                        "examples": _examples(r.get("examples", [])),
                    }
                )
            )

    passed = doc.get("success") is True
    md: dict[str, Any] = {
        "gx_file": dg.MetadataValue.path(shown),
        "evaluated": dg.MetadataValue.int(evaluated),
        "failed_expectations_count": dg.MetadataValue.int(len(failed_rows)),
        "suites": dg.MetadataValue.table(
            suite_rows,
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("table", "string"),
                    dg.TableColumn("success", "bool"),
                    dg.TableColumn("evaluated", "int"),
                    dg.TableColumn("failed", "int"),
                ]
            ),
        ),
    }
    if failed_rows:
        md["failed_expectations"] = dg.MetadataValue.table(
            failed_rows[:MAX_FAILED_ROWS],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("table", "string"),
                    dg.TableColumn("expectation", "string"),
                    dg.TableColumn("column", "string"),
                    dg.TableColumn("unexpected_count", "int"),
                    dg.TableColumn("examples", "string"),
                ]
            ),
        )
    if passed:
        description = f"all {evaluated} expectations passed ({len(suites)} suites)"
    else:
        names = ", ".join(
            f"{r.data['table']}.{r.data['column'] or '*'} {r.data['expectation']}" for r in failed_rows[:5]
        )
        description = f"{len(failed_rows)} of {evaluated} expectations failed" + (
            f": {names}" if names else ""
        )
        if len(failed_rows) > 5:
            description += ", ..."
    return dg.AssetCheckResult(passed=passed, description=description, metadata=md)


# ---------------------------------------------------------------------------------------- factories


def build_stage_asset(
    stage: DvcStage, upstream: Sequence[DvcStage], version: str | None = None
) -> dg.AssetsDefinition:
    """The asset that materialises ``stage`` through ``dvc repro --single-item``.

    ``version`` is the stage's code version (:func:`orchestration.dvc_state.code_version`: its command,
    param values and code as they are now), so Dagster marks the asset stale when any of them changes.
    """

    @dg.asset(
        name=stage.asset_key,
        description=stage.desc,
        code_version=version,
        deps=[dg.AssetKey(u.asset_key) for u in upstream],
        group_name=GROUP_NAME,
        kinds={"dvc"},
        tags={"dvc_stage": stage.name},
        metadata={
            "dvc_stage": dg.MetadataValue.text(stage.name),
            "dvc_cmd": dg.MetadataValue.text(stage.cmd),
            "dvc_deps": dg.MetadataValue.json(list(stage.deps)),
            "dvc_params": dg.MetadataValue.json(list(stage.params)),
            "dvc_outs": dg.MetadataValue.json(list(stage.produced)),
        },
    )
    def _stage_asset(
        context: dg.AssetExecutionContext, config: ReproConfig, dvc: DvcProject
    ) -> dg.MaterializeResult:
        tail = dvc.repro(stage.name, context.log, force=config.force)
        metadata, version = materialization_metadata(stage, Path(dvc.project_dir))
        # DVC skips a stage whose deps, params and outs match dvc.lock; say so instead of hiding it
        skipped = any(f"Stage '{stage.name}' didn't change" in line for line in tail)
        metadata["dvc_stage_ran"] = dg.MetadataValue.bool(not skipped)
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(version) if version else None
        )

    return _stage_asset


def build_gx_check(stage: DvcStage, rel: str) -> dg.AssetChecksDefinition:
    """A blocking check on ``stage``'s asset that passes iff the GX result file ``rel`` has success."""

    @dg.asset_check(
        asset=dg.AssetKey(stage.asset_key),
        name=check_name(rel),
        blocking=True,
        description=f"Great Expectations results written by DVC stage {stage.name!r} to {rel}; "
        "passes iff `success` is true. Blocking: downstream stages do not run when it fails.",
        metadata={"gx_file": dg.MetadataValue.path(rel)},
    )
    def _gx_check(dvc: DvcProject) -> dg.AssetCheckResult:
        return evaluate_gx_result(Path(dvc.project_dir) / rel, stage.name, rel)

    return _gx_check


def build_assets(pipeline: DvcPipeline, project_dir: Path | None = None) -> list[dg.AssetsDefinition]:
    """One asset per stage; with ``project_dir``, each carries its stage's current code version."""
    return [
        build_stage_asset(
            s,
            [pipeline.stage(u) for u in pipeline.upstream(s.name)],
            code_version(pipeline, s, project_dir) if project_dir is not None else None,
        )
        for s in pipeline.stages
    ]


def build_checks(pipeline: DvcPipeline) -> list[dg.AssetChecksDefinition]:
    return [build_gx_check(s, rel) for s in pipeline.stages for rel in s.checks]


def asset_keys(pipeline: DvcPipeline) -> Iterable[dg.AssetKey]:
    return [dg.AssetKey(s.asset_key) for s in pipeline.stages]
