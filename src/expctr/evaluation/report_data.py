"""The finished artifacts the evaluation report is built from, read and checked once (no model is loaded).

Why one loader: the report compares rounds pair by pair, so every round's test explanations must be the first
n_k pairs of `data/llm_pairs/test.parquet`, in order; that is checked here, with a message naming the stage to
rerun, before anything is computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from expctr.config import Params
from expctr.errors import ExpCTRError
from expctr.paths import ProjectPaths

# stage -> its metrics file (the `seconds` each stage records)
STAGE_METRICS = {"raw_data": "raw_data.json", "features": "features.json", "ctr_model": "ctr.json",
                 "base_llm": "base_llm.json", "llm_pairs": "llm_pairs.json"}


@dataclass
class Round:
    """Round k (0 = the base explainer): its metrics, its test explanations (the first n_k pairs) and RL logs."""

    k: int
    metrics: dict[str, Any]
    test: pl.DataFrame
    logs: dict[str, list[dict]] = field(default_factory=dict)  # "lc" / "ic" -> JSONL rows (round 0: none)


@dataclass
class ReportInputs:
    pairs: pl.DataFrame  # data/llm_pairs/test.parquet: labels, the ID model, the zero-shot judge, the rules
    catalogue: pl.DataFrame  # data/features/items.parquet (title matching)
    ctr: dict[str, Any]  # metrics/ctr.json
    pool: dict[str, Any]  # metrics/llm_pairs.json ({} when absent): the judge's P(Yes) per grade
    rounds: list[Round]
    stage_seconds: dict[str, float | None]


def report_dir(paths: ProjectPaths) -> Path:
    return paths.root / "reports" / "evaluation"


def need(path: Path, what: str) -> Path:
    """`path`, or a clear error saying what to run first."""
    if not path.exists():
        raise ExpCTRError(f"{path} not found: {what}")
    return path


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL log (blank lines skipped); [] when the file does not exist."""
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ExpCTRError(f"{path}:{n}: not a JSON line ({exc})") from exc
            if isinstance(row, dict):
                rows.append(row)
    return rows


def load_round(paths: ProjectPaths, k: int, pairs: pl.DataFrame) -> Round:
    """Round k's artifacts; an error when its explanations are not the first n_k pairs in order."""
    hint = f"run explainer round {k} first (`dvc repro explainer_round_{k}`)"
    metrics = json.loads(need(paths.metric(f"round_{k}.json"), hint).read_text(encoding="utf-8"))
    test = pl.read_parquet(need(paths.explanations(k) / "test.parquet", hint))
    head = pairs.head(test.height)
    if (test.height > pairs.height or test["user_id"].to_list() != head["user_id"].to_list()
            or test["item_id"].to_list() != head["item_id"].to_list()):
        raise ExpCTRError(
            f"{paths.explanations(k)}/test.parquet does not list the first {test.height} pairs of "
            f"{paths.llm_pairs}/test.parquet in order: the pairs changed after round {k}; {hint}")
    logs = {s: read_jsonl(paths.round_dir(k) / f"rl_{s}.jsonl") for s in ("lc", "ic")} if k else {}
    return Round(k, metrics, test, logs)


def stage_seconds(paths: ProjectPaths, rounds: list[int]) -> dict[str, float | None]:
    """Wall seconds each stage recorded in its metrics file (None where a stage records none); ctr_model records
    per-model training seconds only, so its entry is their sum."""
    out: dict[str, float | None] = {}
    names = {**STAGE_METRICS, **{f"explainer_round_{k}": f"round_{k}.json" for k in rounds}}
    for stage, name in names.items():
        data = read_json(paths.metric(name))
        secs = data.get("seconds")
        if secs is None and stage == "ctr_model":
            secs = sum((m.get("train_seconds") or 0) for m in (data.get("models") or {}).values()) or None
        out[stage] = secs
    return out


def load_inputs(params: Params, paths: ProjectPaths) -> ReportInputs:
    """Everything the report reads, for rounds 0..params.rounds."""
    pairs = pl.read_parquet(need(paths.llm_pairs / "test.parquet", "run the llm_pairs stage first"))
    catalogue = pl.read_parquet(need(paths.features / "items.parquet", "run the features stage first"))
    ctr = json.loads(need(paths.metric("ctr.json"), "run the ctr_model stage first").read_text(encoding="utf-8"))
    ks = list(range(params.rounds + 1))
    rounds = [load_round(paths, k, pairs) for k in ks]
    return ReportInputs(pairs, catalogue, ctr, read_json(paths.metric("llm_pairs.json")), rounds,
                        stage_seconds(paths, ks))


__all__ = [
    "STAGE_METRICS",
    "ReportInputs",
    "Round",
    "load_inputs",
    "load_round",
    "need",
    "read_json",
    "read_jsonl",
    "report_dir",
    "stage_seconds",
]
