"""evaluation_report stage: every round (0 = the base explainer) and every baseline on the same test pairs.

Reads only finished artifacts (no model is loaded): `data/llm_pairs/test.parquet` (the ID model's probability,
the zero-shot judge and the history rules per pair), the item catalogue (title matching), `metrics/ctr.json`,
per round k in 0..rounds `metrics/round_k.json` and `data/explanations/round_k/test.parquet` (round k's
explanations of the first n_k test pairs), the RL logs `models/rounds/round_k/rl_{lc,ic}.jsonl`, and every
stage's metrics file for its wall time. Two tables compare like with like: all predictors on the pairs every
round was evaluated on (the first min n_k), and the baselines with the final round on all of its pairs. Writes
`reports/evaluation/` (report.html with embedded figures, summary.md, the PNGs), `metrics/evaluation.json`
(headline numbers, the targets of issue 8 with met / missed) and `metrics/evaluation_rounds.csv` (one row per
round), each atomically.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from expctr.config import Params
from expctr.errors import ExpCTRError
from expctr.evaluation import figures
from expctr.evaluation.faithfulness import TitleIndex, quoted_outside, unseen_mentions
from expctr.evaluation.grounding import grounded_rate
from expctr.evaluation.metrics import Predictor, clean_number, distinct_n, mean_words, predictor_rows
from expctr.evaluation.report import Evaluation, html_report, markdown_summary
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths

N_SAMPLES = 10
# stage -> its metrics file (the `seconds` each stage records)
STAGE_METRICS = {"raw_data": "raw_data.json", "features": "features.json", "ctr_model": "ctr.json",
                 "base_llm": "base_llm.json", "llm_pairs": "llm_pairs.json"}
CSV_COLUMNS = [
    "round", "test_pairs", "llm_auc", "llm_auc_ci_low", "llm_auc_ci_high", "verdict_logit_auc", "aug_auc",
    "aug_minus_id", "aug_minus_id_ci_low", "aug_minus_id_ci_high", "id_auc", "positive_share",
    "agree_label", "agree_id", "faithfulness", "grounded", "outside_title_share", "share_one_sentence", "distinct_2",
    "mean_words", "seconds",
]
TARGETS = {"llm_auc_goal": 0.76, "positive_share_points": 0.10, "agree_id": 0.80, "aug_gain": 0.01,
           "wall_minutes": 60.0}


def report_dir(paths: ProjectPaths) -> Path:
    return paths.root / "reports" / "evaluation"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise ExpCTRError(f"{path} not found: {what}")
    return path


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


def load_round(paths: ProjectPaths, k: int, pairs: pl.DataFrame) -> dict[str, Any]:
    """Round k's metrics, test explanations (the first n_k pairs of llm_pairs, in order) and RL logs."""
    hint = f"run explainer round {k} first (`dvc repro explainer_round_{k}`)"
    metrics = json.loads(_need(paths.metric(f"round_{k}.json"), hint).read_text())
    test = pl.read_parquet(_need(paths.explanations(k) / "test.parquet", hint))
    head = pairs.head(test.height)
    if (test.height > pairs.height or test["user_id"].to_list() != head["user_id"].to_list()
            or test["item_id"].to_list() != head["item_id"].to_list()):
        raise ExpCTRError(
            f"{paths.explanations(k)}/test.parquet does not list the first {test.height} pairs of "
            f"{paths.llm_pairs}/test.parquet in order: the pairs changed after round {k}; {hint}")
    logs = {s: read_jsonl(paths.round_dir(k) / f"rl_{s}.jsonl") for s in ("lc", "ic")} if k else {}
    return {"k": k, "metrics": metrics, "test": test, "logs": logs}


RULE_NAMES = {"rule_share_liked": "Rule: share of history liked",
              "rule_genre_overlap": "Rule: genre overlap, liked minus disliked",
              "rule_item_liked_share": "Rule: the target's share of likes so far (stated in the prompt)"}


def baselines(pairs: pl.DataFrame, n: int, primary: str) -> list[Predictor]:
    head = pairs.head(n)
    return [
        Predictor("id_only", f"ID-only ({primary})", head["p_id"].to_numpy()),
        Predictor("zero_shot_judge", "Zero-shot judge (no explanation)", head["p_yes_zero_shot"].to_numpy()),
        *[Predictor(key, name, head[key].to_numpy(), is_probability=False)
          for key, name in RULE_NAMES.items() if key in head.columns],
    ]


def round_predictors(rd: dict[str, Any], n: int) -> list[Predictor]:
    k, t = rd["k"], rd["test"].head(n)
    name = "base explainer" if k == 0 else f"round {k}"
    out = [Predictor(f"expctr_llm_round_{k}", f"ExpCTR-LLM (judge + explanation), {name}",
                     t["p_yes_judge"].to_numpy(), group=name),
           Predictor(f"verdict_logit_round_{k}", f"Explainer's verdict logit, {name}", t["verdict_logit"].to_numpy(),
                     is_probability=False, group=name)]
    if "p_click_aug" in t.columns:
        out.insert(1, Predictor(f"expctr_aug_round_{k}", f"ExpCTR-Aug, {name}", t["p_click_aug"].to_numpy(),
                                group=name))
    return out


def round_row(rd: dict[str, Any], pairs: pl.DataFrame, index: TitleIndex) -> dict[str, Any]:
    """Per-round figures on the round's own n_k pairs (from its metrics) plus text measures of its explanations."""
    k, test, m = rd["k"], rd["test"], rd["metrics"]
    head = pairs.head(test.height)
    texts = [str(t or "") for t in test["explanation"].to_list()]
    histories, targets_ = head["history"].to_list(), head["target"].to_list()
    unseen = [unseen_mentions(index, t, h, g) for t, h, g in zip(texts, histories, targets_)]
    outside = [bool(quoted_outside(t, h, g)) for t, h, g in zip(texts, histories, targets_)]
    n = max(1, len(texts))
    top_text, top_n = min(Counter(texts).items(), key=lambda kv: (-kv[1], kv[0])) if texts else ("", 0)
    verdicts = m.get("verdicts") or {}
    aug_diff = m.get("aug_minus_id") or {}
    rises = {f"{stage}_{phase}": r for stage, phases in (m.get("rewards_rise") or {}).items()
             for phase, r in phases.items()}
    return {
        "round": k,
        "test_pairs": test.height,
        "llm_auc": m["expctr_llm"]["auc"], "llm_auc_ci_low": m["expctr_llm"]["auc_ci_low"],
        "llm_auc_ci_high": m["expctr_llm"]["auc_ci_high"],
        "verdict_logit_auc": (m.get("verdict_logit") or {}).get("auc"),
        "aug_auc": (m.get("expctr_aug") or {}).get("auc"),
        "aug_minus_id": aug_diff.get("diff"), "aug_minus_id_ci_low": aug_diff.get("ci_low"),
        "aug_minus_id_ci_high": aug_diff.get("ci_high"),
        "id_auc": m["id_only"]["auc"],
        "test_click_rate": m.get("test_click_rate"),
        "positive_share": verdicts.get("share_positive"),
        "agree_label": (verdicts.get("vs_label") or {}).get("agreement"),
        "agree_id": (verdicts.get("vs_id_model") or {}).get("agreement"),
        "id_positive_rate": (verdicts.get("vs_id_model") or {}).get("reference_positive_rate"),
        "confusion_label": verdicts.get("vs_label"),
        "confusion_id": verdicts.get("vs_id_model"),
        "faithfulness": 1 - sum(bool(u) for u in unseen) / n if texts else math.nan,
        "grounded": grounded_rate(texts, histories, targets_) if texts else math.nan,
        "outside_title_share": sum(outside) / n if texts else math.nan,
        "share_one_sentence": (m.get("explanations") or {}).get("share_one_sentence"),
        "top_explanation_share": top_n / n if texts else math.nan,
        "top_explanation": top_text,
        "distinct_2": distinct_n(texts, 2),
        "mean_words": mean_words(texts),
        "rewards_rise": rises,
        "seconds": m.get("seconds"),
        "_unseen": [list(dict.fromkeys(mm.title for mm in u)) for u in unseen],
    }


def pick_samples(rd: dict[str, Any], pairs: pl.DataFrame, unseen: list[list[str]], n: int = N_SAMPLES) -> list[dict]:
    """The first n/2 clicked and first n/2 non-clicked test pairs (deterministic, both classes shown)."""
    test = rd["test"]
    labels = test["label"].to_list()
    pos = [i for i, y in enumerate(labels) if y == 1][: n // 2]
    neg = [i for i, y in enumerate(labels) if y != 1][: n - len(pos)]
    rows = []
    for i in sorted(pos + neg):
        t = test.row(i, named=True)
        target = pairs["target"][i] or {}
        title = str(target.get("title") or "")
        rows.append({
            "user_id": t["user_id"], "item_id": t["item_id"],
            "target": f"{title} ({target['year']})" if target.get("year") else title,
            "label": int(t["label"]), "stance": int(t["stance"]), "p_yes_judge": t["p_yes_judge"],
            "p_click_aug": t.get("p_click_aug"), "p_click_id": t["p_id"], "unseen_titles": unseen[i],
            "explanation": t["explanation"],
        })
    return rows


def full_split_table(ctr: dict, order: list[str]) -> dict:
    """The ctr_model stage's full-test-split table, models in `order` (params ctr.compare) first."""
    found = ctr.get("models") or {}
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    models = [{"model": n, "auc": found[n].get("test_auc"), "logloss": found[n].get("test_logloss")} for n in names]
    return {"rows": ctr.get("test_rows"), "label_rate": ctr.get("test_label_rate"), "models": models}


def stage_seconds(paths: ProjectPaths, rounds: list[int]) -> dict[str, float | None]:
    """Wall seconds each stage recorded in its metrics file (None where a stage records none)."""
    out: dict[str, float | None] = {}
    names = {**STAGE_METRICS, **{f"explainer_round_{k}": f"round_{k}.json" for k in rounds}}
    for stage, name in names.items():
        path = paths.metric(name)
        data = json.loads(path.read_text()) if path.exists() else {}
        secs = data.get("seconds")
        if secs is None and stage == "ctr_model":
            secs = sum((m.get("train_seconds") or 0) for m in (data.get("models") or {}).values()) or None
        out[stage] = secs
    return out


def _by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


def targets(final_rows: list[dict], shared_rows: list[dict], round_rows: list[dict], seconds: dict) -> list[dict]:
    """Issue 8's targets, each with its measured value and met / missed."""
    final, shared = _by_key(final_rows), _by_key(shared_rows)
    k = round_rows[-1]["round"]
    llm = final.get(f"expctr_llm_round_{k}", {})
    best_rule = max((final[r] for r in ("rule_share_liked", "rule_genre_overlap") if r in final),  # history rules
                    key=lambda r: r["auc"], default={})
    zs = final.get("zero_shot_judge", {})
    r0, rk = shared.get("expctr_llm_round_0", {}), shared.get(f"expctr_llm_round_{k}", {})
    last = round_rows[-1]
    out = [
        {"target": "ExpCTR-LLM AUC >= 0.76 (goal) on the final pairs", "value": llm.get("auc"),
         "met": _ge(llm.get("auc"), TARGETS["llm_auc_goal"])},
        {"target": "its interval's lower bound above the best history rule (goal)",
         "value": llm.get("auc_ci_low"), "reference": best_rule.get("auc"),
         "met": _ge(llm.get("auc_ci_low"), best_rule.get("auc"), strict=True)},
        {"target": "ExpCTR-LLM above the zero-shot judge (must)", "value": llm.get("auc"),
         "reference": zs.get("auc"), "met": _ge(llm.get("auc"), zs.get("auc"), strict=True)},
        {"target": f"round {k} above round 0, intervals not overlapping (must, shared pairs)",
         "value": rk.get("auc_ci_low"), "reference": r0.get("auc_ci_high"),
         "met": _ge(rk.get("auc_ci_low"), r0.get("auc_ci_high"), strict=True)},
        {"target": "ExpCTR-LLM rises round over round (goal, shared pairs)",
         "value": [shared.get(f"expctr_llm_round_{r['round']}", {}).get("auc") for r in round_rows],
         "met": _increasing([shared.get(f"expctr_llm_round_{r['round']}", {}).get("auc") for r in round_rows])},
        {"target": "positive verdicts within 10 points of the click rate", "value": last.get("positive_share"),
         "reference": last.get("test_click_rate"),
         "met": _within(last.get("positive_share"), last.get("test_click_rate"), TARGETS["positive_share_points"])},
        {"target": "verdict agrees with the ID model's decision on >= 80 % of pairs", "value": last.get("agree_id"),
         "met": _ge(last.get("agree_id"), TARGETS["agree_id"])},
        {"target": "ExpCTR-Aug - ID model AUC >= +0.01 (goal)", "value": last.get("aug_minus_id"),
         "reference": [last.get("aug_minus_id_ci_low"), last.get("aug_minus_id_ci_high")],
         "met": _ge(last.get("aug_minus_id"), TARGETS["aug_gain"])},
    ]
    rises = [(f"round {r['round']} {name}", v) for r in round_rows for name, v in (r.get("rewards_rise") or {}).items()
             if v.get("rises") is not None]
    out.append({"target": "in every stage the last quarter's mean reward beats the first quarter's",
                "value": {name: v["rises"] for name, v in rises},
                "met": bool(rises) and all(v["rises"] for _, v in rises)})
    total = sum(v for v in seconds.values() if v)
    out.append({"target": "whole pipeline <= 60 min on 2 cores (stages' own wall times)",
                "value": round(total / 60, 1) if total else None,
                "met": _ge(TARGETS["wall_minutes"], total / 60 if total else None)})
    return out


def _finite(*vals) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals)


def _ge(a, b, strict: bool = False) -> bool | None:
    if not _finite(a, b):
        return None
    return bool(a > b) if strict else bool(a >= b)


def _within(a, b, tol: float) -> bool | None:
    return bool(abs(a - b) <= tol) if _finite(a, b) else None


def _increasing(vals) -> bool | None:
    if not vals or not all(_finite(v) for v in vals):
        return None
    return all(b > a for a, b in itertools.pairwise(vals))


def run(params: Params, paths: ProjectPaths) -> dict:
    pairs = pl.read_parquet(_need(paths.llm_pairs / "test.parquet", "run the llm_pairs stage first"))
    catalogue = pl.read_parquet(_need(paths.features / "items.parquet", "run the features stage first"))
    ctr = json.loads(_need(paths.metric("ctr.json"), "run the ctr_model stage first").read_text())
    index = TitleIndex.from_catalogue(catalogue["title"].to_list(), catalogue["year"].to_list())
    ks = list(range(params.rounds + 1))
    rounds = [load_round(paths, k, pairs) for k in ks]
    primary = str(ctr.get("primary") or params.ctr.model)
    labels = pairs["label"].to_numpy().astype(int)
    n_final = rounds[-1]["test"].height
    n_shared = min(rd["test"].height for rd in rounds)

    final_preds = baselines(pairs, n_final, primary) + round_predictors(rounds[-1], n_final)
    if rounds[0]["test"].height >= n_final:
        final_preds += round_predictors(rounds[0], n_final)
    final_rows = predictor_rows(labels[:n_final], final_preds, params.seed, params.evaluation.bootstrap)
    shared_preds = baselines(pairs, n_shared, primary) + [p for rd in rounds for p in round_predictors(rd, n_shared)]
    shared_rows = predictor_rows(labels[:n_shared], shared_preds, params.seed, params.evaluation.bootstrap)

    round_rows = [round_row(rd, pairs, index) for rd in rounds]
    samples = pick_samples(rounds[-1], pairs, round_rows[-1]["_unseen"])
    for r in round_rows:
        r.pop("_unseen")
    seconds = stage_seconds(paths, ks)
    notes = [f"round {rd['k']}: no RL log (models/rounds/round_{rd['k']}/rl_lc.jsonl, rl_ic.jsonl)"
             for rd in rounds if rd["k"] and not (rd["logs"]["lc"] or rd["logs"]["ic"])]
    ev = Evaluation(
        n_pairs=n_final, n_shared=n_shared,
        label_rate=float(labels[:n_final].mean()) if n_final else math.nan,
        rounds=ks, primary=primary, pair_rows=final_rows, shared_rows=shared_rows, round_rows=round_rows,
        targets=targets(final_rows, shared_rows, round_rows, seconds), stage_seconds=seconds,
        full_split=full_split_table(ctr, list(params.ctr.compare)), samples=samples, notes=notes,
    )
    ev.figures = make_figures(ev, labels[:n_final], final_preds, rounds)

    with atomic_path(report_dir(paths)) as tmp:
        tmp.mkdir()
        for name, png in ev.figures.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / "report.html").write_text(html_report(ev), encoding="utf-8")
        (tmp / "summary.md").write_text(markdown_summary(ev), encoding="utf-8")
    metrics = headline(ev)
    write_json(paths.metric("evaluation.json"), metrics)
    with atomic_path(paths.metric("evaluation_rounds.csv")) as tmp:
        pl.DataFrame([{c: _csv_value(r.get(c)) for c in CSV_COLUMNS} for r in round_rows],
                     schema={c: (pl.Int64 if c in ("round", "test_pairs") else pl.Float64) for c in CSV_COLUMNS},
                     ).write_csv(tmp)
    return metrics


def _csv_value(v):
    v = clean_number(v)
    return round(v, 6) if isinstance(v, float) else v


def make_figures(ev: Evaluation, labels: np.ndarray, predictors: list[Predictor], rounds: list[dict]) -> dict:
    base_style = {"id_only": ("#555555", "-"), "zero_shot_judge": ("#8c564b", ":"),
                  "rule_share_liked": ("#bcbd22", "-."), "rule_genre_overlap": ("#17becf", "-."),
                  "rule_item_liked_share": ("#e377c2", "-.")}
    by_key = _by_key(ev.pair_rows)
    curves = []
    for p in predictors:
        auc = by_key[p.key]["auc"]
        tag = f"{p.label} (AUC {auc:.3f})" if auc is not None and math.isfinite(auc) else p.label
        if p.key in base_style:
            curves.append((tag, p.scores, *base_style[p.key]))
        else:
            k = int(p.key.rsplit("_", 1)[1])
            style = "-" if "aug" in p.key else ("--" if "llm" in p.key else ":")
            curves.append((tag, p.scores, figures.round_color(k), style))
    shared = _by_key(ev.shared_rows)
    ks = ev.rounds
    series = {name: [shared.get(f"{key}_round_{k}") for k in ks]
              for name, key in (("ExpCTR-LLM", "expctr_llm"), ("ExpCTR-Aug", "expctr_aug"),
                                ("verdict logit", "verdict_logit"))}
    ref = {f"ID-only {ev.primary}": shared["id_only"]["auc"], "zero-shot judge": shared["zero_shot_judge"]["auc"],
           "best history rule": max(shared["rule_share_liked"]["auc"], shared["rule_genre_overlap"]["auc"])}
    if "rule_item_liked_share" in shared:
        ref["item's share of likes"] = shared["rule_item_liked_share"]["auc"]
    rr = ev.round_rows
    return {
        "roc_test_pairs": figures.roc_figure(labels, curves, f"Test pairs of the last round (n = {ev.n_pairs})"),
        "round_auc": figures.round_interval_bars(ks, series, f"AUC per round, same {ev.n_shared} pairs (95 % CI)",
                                                 ref),
        "round_verdicts": figures.round_bars(
            ks, {"positive verdicts": [r["positive_share"] for r in rr],
                 "verdict = click": [r["agree_label"] for r in rr],
                 "verdict = ID model": [r["agree_id"] for r in rr],
                 "faithful": [r["faithfulness"] for r in rr],
                 "grounded": [r["grounded"] for r in rr],
                 "one sentence": [r["share_one_sentence"] for r in rr]},
            "Verdicts and explanations per round (each round's test pairs)", "share",
            {"click rate": rr[-1].get("test_click_rate"), "ID model positive rate": rr[-1].get("id_positive_rate")},
            (0, 1.08)),
        "reward_curves": figures.stage_reward_curves({rd["k"]: rd["logs"] for rd in rounds if rd["k"]}),
    }


def headline(ev: Evaluation) -> dict:
    """metrics/evaluation.json: headline numbers, the targets, both pair tables, per-round rows, the full split
    and the stage wall times (nested mappings, so `dvc metrics show` and Dagster flatten them)."""
    by_key = _by_key(ev.pair_rows)
    last = ev.round_rows[-1]
    c = clean_number

    def table(rows):
        return {r["key"]: {"auc": c(r["auc"]), "auc_ci_low": c(r["auc_ci_low"]), "auc_ci_high": c(r["auc_ci_high"]),
                           "logloss": c(r["logloss"]), "n": r["n"]} for r in rows}

    k = ev.rounds[-1]
    out: dict[str, Any] = {
        "rounds": k,
        "test_pairs": ev.n_pairs,
        "shared_pairs": ev.n_shared,
        "test_pairs_label_rate": c(ev.label_rate),
        "id_only_auc": c(by_key["id_only"]["auc"]),
        "zero_shot_judge_auc": c(by_key["zero_shot_judge"]["auc"]),
        "rule_share_liked_auc": c(by_key["rule_share_liked"]["auc"]),
        "rule_genre_overlap_auc": c(by_key["rule_genre_overlap"]["auc"]),
        "final_llm_auc": c(by_key[f"expctr_llm_round_{k}"]["auc"]),
        "final_aug_auc": c(by_key.get(f"expctr_aug_round_{k}", {}).get("auc")),
        "final_aug_minus_id": c(last.get("aug_minus_id")),
        "final_positive_share": c(last.get("positive_share")),
        "final_agree_id": c(last.get("agree_id")),
        "final_faithfulness": c(last.get("faithfulness")),
        "targets_met": sum(1 for t in ev.targets if t["met"]),
        "targets_total": len(ev.targets),
        "targets": [{**t, "value": _clean_any(t.get("value")), "reference": _clean_any(t.get("reference"))}
                    for t in ev.targets],
        "final_pairs": table(ev.pair_rows),
        "shared_pairs_table": table(ev.shared_rows),
        "per_round": {f"round_{r['round']}": {key: _clean_any(v) for key, v in r.items()
                                              if key not in ("round", "top_explanation")} for r in ev.round_rows},
        "stage_seconds": {s: c(v) for s, v in ev.stage_seconds.items()},
    }
    if ev.full_split:
        out["full_test_split"] = {
            "rows": ev.full_split["rows"], "label_rate": c(ev.full_split["label_rate"]),
            "models": {m["model"]: {"auc": c(m["auc"]), "logloss": c(m["logloss"])} for m in ev.full_split["models"]},
        }
    return out


def _clean_any(v):
    if isinstance(v, dict):
        return {k: _clean_any(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean_any(x) for x in v]
    return clean_number(v) if isinstance(v, float) else v
