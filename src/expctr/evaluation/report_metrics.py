"""The evaluation's versioned metrics: `metrics/evaluation.json` (headline numbers at the top level, tables nested
below them, so Dagster's flattened metadata, which keeps the shallowest keys, shows the headline) and the
per-round CSV DVC plots.

NaN / inf become null (valid JSON); only numbers and project-relative names are written, no absolute path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from expctr.evaluation.ablation import aug_fit_summary
from expctr.evaluation.metrics import clean_number
from expctr.evaluation.report import Evaluation
from expctr.evaluation.report_tables import by_key
from expctr.io import atomic_path

# per round: its own n_k pairs (from its metrics), then the shared pairs every round saw
CSV_COLUMNS = [
    "round", "test_pairs", "llm_auc", "llm_auc_ci_low", "llm_auc_ci_high", "stance_only_auc", "verdict_logit_auc",
    "llm_minus_id", "aug_auc", "aug_auc_ci_low", "aug_auc_ci_high", "aug_facts_auc", "aug_shuffled_auc",
    "aug_minus_id", "aug_minus_id_ci_low", "aug_minus_id_ci_high", "explanation_minus_facts",
    "explanation_minus_facts_ci_low", "explanation_minus_facts_ci_high", "id_auc", "aug_best_epoch",
    "shared_pairs", "shared_llm_auc", "shared_aug_auc", "shared_aug_facts_auc", "shared_id_auc",
    "shared_aug_minus_id", "shared_aug_minus_id_ci_low", "shared_aug_minus_id_ci_high",
    "positive_share", "agree_label", "agree_id", "faithfulness", "grounded", "reason_grounded",
    "outside_title_share", "share_one_sentence", "distinct_2", "mean_words", "seconds",
]
_INT_COLUMNS = ("round", "test_pairs", "aug_best_epoch", "shared_pairs")


def clean_any(v: Any) -> Any:
    """clean_number through nested mappings and lists."""
    if isinstance(v, dict):
        return {k: clean_any(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_any(x) for x in v]
    return clean_number(v)


def _table(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: clean_any({c: r[c] for c in ("auc", "auc_ci_low", "auc_ci_high", "logloss", "n")})
            for r in rows}


def shared_columns(ev: Evaluation, k: int) -> dict[str, Any]:
    """Round k's shared-pair columns of the CSV."""
    shared = by_key(ev.shared_rows)
    gain = (ev.shared_gains.get(k) or {}).get("aug_minus_id") or {}
    return {"shared_pairs": ev.n_shared,
            "shared_llm_auc": (shared.get(f"expctr_llm_round_{k}") or {}).get("auc"),
            "shared_aug_auc": (shared.get(f"expctr_aug_round_{k}") or {}).get("auc"),
            "shared_aug_facts_auc": (shared.get(f"aug_facts_round_{k}") or {}).get("auc"),
            "shared_id_auc": (shared.get("id_only") or {}).get("auc"),
            "shared_aug_minus_id": gain.get("diff"), "shared_aug_minus_id_ci_low": gain.get("ci_low"),
            "shared_aug_minus_id_ci_high": gain.get("ci_high")}


def write_rounds_csv(path: Path, ev: Evaluation) -> None:
    """metrics/evaluation_rounds.csv, one row per round (atomically)."""
    rows = []
    for r in ev.round_rows:
        row = {**r, **shared_columns(ev, r["round"])}
        rows.append({c: _csv_value(row.get(c)) for c in CSV_COLUMNS})
    schema = {c: (pl.Int64 if c in _INT_COLUMNS else pl.Float64) for c in CSV_COLUMNS}
    with atomic_path(path) as tmp:
        pl.DataFrame(rows, schema=schema).write_csv(tmp)


def _csv_value(v):
    v = clean_number(v)
    return round(v, 6) if isinstance(v, float) else v


def headline(ev: Evaluation) -> dict[str, Any]:
    """metrics/evaluation.json."""
    final = by_key(ev.pair_rows)
    k = ev.rounds[-1]
    last = ev.round_rows[-1]
    c = clean_number
    total = sum(v for v in ev.stage_seconds.values() if v)

    def auc(key: str):
        return c((final.get(key) or {}).get("auc"))

    out: dict[str, Any] = {
        "rounds": k, "test_pairs": ev.n_pairs, "shared_pairs": ev.n_shared, "test_pairs_label_rate": c(ev.label_rate),
        "id_only_auc": auc("id_only"), "zero_shot_judge_auc": auc("zero_shot_judge"),
        "rule_share_liked_auc": auc("rule_share_liked"), "rule_genre_overlap_auc": auc("rule_genre_overlap"),
        "final_llm_auc": auc(f"expctr_llm_round_{k}"), "final_stance_only_auc": auc(f"stance_only_round_{k}"),
        "final_verdict_logit_auc": auc(f"verdict_logit_round_{k}"),
        "final_aug_auc": auc(f"expctr_aug_round_{k}"), "final_aug_facts_auc": auc(f"aug_facts_round_{k}"),
        "final_aug_shuffled_auc": auc(f"aug_shuffled_round_{k}"),
        "final_aug_minus_id": c(last.get("aug_minus_id")),
        "final_explanation_minus_facts": c((ev.ablation.get("explanation_minus_facts") or {}).get("diff")),
        "final_positive_share": c(last.get("positive_share")), "final_agree_id": c(last.get("agree_id")),
        "final_faithfulness": c(last.get("faithfulness")), "final_grounded": c(last.get("grounded")),
        "final_reason_grounded": c(last.get("reason_grounded")),
        "final_outside_title_share": c(last.get("outside_title_share")),
        "pipeline_minutes": c(round(total / 60, 2)) if total else None,
        "targets_met": sum(1 for t in ev.targets if t["met"] is True),
        "targets_total": len(ev.targets),
        "targets": clean_any(ev.targets),
        "aug_ablation": clean_any(ev.ablation),
        "aug_fit": clean_any(aug_fit_summary(ev.aug_fit)),
        "judge_grades": {g["grade"]: clean_any({key: v for key, v in g.items() if key != "grade"})
                         for g in ev.grades},
        "final_pairs": _table(ev.pair_rows),
        "shared_pairs_table": _table(ev.shared_rows),
        "shared_gains": {f"round_{j}": clean_any(g) for j, g in ev.shared_gains.items()},
        "per_round": {f"round_{r['round']}": clean_any({key: v for key, v in r.items()
                                                        if key not in ("round", "top_explanation", "unseen_titles")})
                      for r in ev.round_rows},
        "stage_seconds": {s: c(v) for s, v in ev.stage_seconds.items()},
    }
    if ev.full_split:
        out["full_test_split"] = {
            "rows": ev.full_split["rows"], "label_rate": c(ev.full_split["label_rate"]),
            "models": {m["model"]: {"auc": c(m["auc"]), "logloss": c(m["logloss"])} for m in ev.full_split["models"]},
        }
    return out


__all__ = ["CSV_COLUMNS", "clean_any", "headline", "shared_columns", "write_rounds_csv"]
