"""evaluation_report stage: predictors and explanations of every round, on the LLM test pairs, as a report.

Reads only finished artifacts (no model is loaded): `data/llm_pairs/test.parquet`, the item catalogue
(`data/features/items.parquet`, for title matching), `metrics/ctr.json`, and per round k in 1..rounds
`metrics/round_k.json`, `data/explanations/round_k/test.parquet` and the GRPO logs
`models/rounds/round_k/rl_{lc,ic}.jsonl`. Writes `reports/evaluation/` (report.html with embedded figures,
summary.md, the PNGs), `metrics/evaluation.json` (headline numbers) and `metrics/evaluation_rounds.csv`
(one row per round), each atomically.
"""

from __future__ import annotations

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
from expctr.evaluation.faithfulness import TitleIndex, unseen_mentions
from expctr.evaluation.metrics import (
    Predictor,
    clean_number,
    distinct_n,
    mean_words,
    predictor_rows,
    stance_agreement,
)
from expctr.evaluation.report import Evaluation, html_report, markdown_summary
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths

N_SAMPLES = 10
CSV_COLUMNS = [
    "round",
    "lc_auc",
    "aug_auc",
    "llm_auc",
    "id_auc",
    "aug_logloss",
    "llm_logloss",
    "aug_id_mean_abs_diff",
    "faithfulness",
    "unseen_title_share",
    "title_mention_share",
    "stance_share",
    "positive_stance_share",
    "stance_label_agreement",
    "stance_id_agreement",
    "share_one_sentence",
    "top_explanation_share",
    "distinct_1",
    "distinct_2",
    "mean_words",
    "lc_reward_mean",
    "ic_reward_mean",
    "rl_lc_steps",
    "rl_lc_reward_first",
    "rl_lc_reward_last",
    "rl_ic_steps",
    "rl_ic_reward_first",
    "rl_ic_reward_last",
]


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
    hint = f"run explainer round {k} first (`dvc repro explainer_round_{k}`)"
    metrics = json.loads(_need(paths.metric(f"round_{k}.json"), hint).read_text())
    test = pl.read_parquet(_need(paths.explanations(k) / "test.parquet", hint))
    if (
        test.height != pairs.height
        or test["user_id"].to_list() != pairs["user_id"].to_list()
        or test["item_id"].to_list() != pairs["item_id"].to_list()
    ):
        raise ExpCTRError(
            f"{paths.explanations(k)}/test.parquet does not list the pairs of "
            f"{paths.llm_pairs}/test.parquet in order: the pairs changed after round {k}; {hint}"
        )
    logs = {s: read_jsonl(paths.round_dir(k) / f"rl_{s}.jsonl") for s in ("lc", "ic")}
    return {"k": k, "metrics": metrics, "test": test, "logs": logs}


def _finite_rewards(rows: list[dict]) -> list[float]:
    out = []
    for r in rows:
        v = r.get("reward")
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def round_row(rd: dict[str, Any], pairs: pl.DataFrame, index: TitleIndex, by_key: dict[str, dict]) -> dict:
    """Per-round explanation and predictor metrics on the test pairs."""
    k, test, m = rd["k"], rd["test"], rd["metrics"]
    labels = test["label"].to_numpy().astype(int)
    texts = [str(t or "") for t in test["explanation"].to_list()]
    stances = test["stance"].to_numpy().astype(int)
    unseen = [
        unseen_mentions(index, t, h, g)
        for t, h, g in zip(texts, pairs["history"].to_list(), pairs["target"].to_list())
    ]
    mentioned = [index.mentions(t) for t in texts]
    agree_label, _ = stance_agreement(stances, labels == 1)
    agree_id, _ = stance_agreement(stances, test["p_click_id"].to_numpy() >= 0.5)
    lc, ic = _finite_rewards(rd["logs"]["lc"]), _finite_rewards(rd["logs"]["ic"])
    n = max(1, len(texts))
    # the most frequent text (ties: alphabetically first): a collapsed explainer repeats one sentence
    top_text, top_n = min(Counter(texts).items(), key=lambda kv: (-kv[1], kv[0])) if texts else ("", 0)
    aug, llm, ident = (
        by_key[f"expctr_aug_round_{k}"],
        by_key[f"expctr_llm_round_{k}"],
        by_key[f"id_only_round_{k}"],
    )
    return {
        "round": k,
        "lc_auc": llm["auc"],
        "llm_auc": llm["auc"],
        "aug_auc": aug["auc"],
        "id_auc": ident["auc"],
        "aug_logloss": aug["logloss"],
        "llm_logloss": llm["logloss"],
        # how far the explanation embeddings move ExpCTR-Aug away from the ID model it starts from
        "aug_id_mean_abs_diff": float(
            np.mean(np.abs(test["p_click_aug"].to_numpy() - test["p_click_id"].to_numpy()))
        )
        if texts
        else math.nan,
        "faithfulness": 1 - sum(bool(u) for u in unseen) / n if texts else math.nan,
        "unseen_title_share": sum(bool(u) for u in unseen) / n if texts else math.nan,
        "title_mention_share": sum(bool(x) for x in mentioned) / n if texts else math.nan,
        "stance_share": float(np.mean(stances != 0)) if texts else math.nan,
        "positive_stance_share": float(np.mean(stances > 0)) if texts else math.nan,
        "stance_label_agreement": agree_label,
        "stance_id_agreement": agree_id,
        "share_one_sentence": ((m.get("explanations") or {}).get("test") or {}).get("share_one_sentence"),
        "top_explanation_share": top_n / n if texts else math.nan,
        "top_explanation": top_text,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "mean_words": mean_words(texts),
        "lc_reward_mean": m.get("lc_reward_mean"),
        "ic_reward_mean": m.get("ic_reward_mean"),
        "rl_lc_steps": len(lc),
        "rl_lc_reward_first": lc[0] if lc else None,
        "rl_lc_reward_last": lc[-1] if lc else None,
        "rl_ic_steps": len(ic),
        "rl_ic_reward_first": ic[0] if ic else None,
        "rl_ic_reward_last": ic[-1] if ic else None,
        "_unseen": [list(dict.fromkeys(mm.title for mm in u)) for u in unseen],  # a title once
    }


def pick_samples(
    rd: dict[str, Any], pairs: pl.DataFrame, unseen: list[list[str]], n: int = N_SAMPLES
) -> list[dict]:
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
        rows.append(
            {
                "user_id": t["user_id"],
                "item_id": t["item_id"],
                "target": f"{title} ({target['year']})" if target.get("year") else title,
                "label": int(t["label"]),
                "stance": int(t["stance"]),
                "p_yes_judge": t["p_yes_judge"],
                "p_click_aug": t["p_click_aug"],
                "p_click_id": t["p_click_id"],
                "unseen_titles": unseen[i],
                "explanation": t["explanation"],
            }
        )
    return rows


def full_split_table(ctr: dict, order: list[str]) -> dict:
    """The ctr_model stage's full-test-split table, models in `order` (params ctr.compare) first."""
    found = ctr.get("models") or {}
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    models = [
        {"model": n, "auc": found[n].get("test_auc"), "logloss": found[n].get("test_logloss")} for n in names
    ]
    return {"rows": ctr.get("test_rows"), "label_rate": ctr.get("test_label_rate"), "models": models}


def run(params: Params, paths: ProjectPaths) -> dict:
    pairs = pl.read_parquet(_need(paths.llm_pairs / "test.parquet", "run the llm_pairs stage first"))
    catalogue = pl.read_parquet(_need(paths.features / "items.parquet", "run the features stage first"))
    ctr = json.loads(_need(paths.metric("ctr.json"), "run the ctr_model stage first").read_text())
    index = TitleIndex.from_catalogue(catalogue["title"].to_list(), catalogue["year"].to_list())
    ks = list(range(1, params.rounds + 1))
    rounds = [load_round(paths, k, pairs) for k in ks]
    labels = pairs["label"].to_numpy().astype(int)
    primary = str(ctr.get("primary") or params.ctr.model)

    predictors = [
        Predictor("id_only", f"ID-only ({primary})", rounds[0]["test"]["p_click_id"].to_numpy()),
        Predictor("zero_shot_judge", "Zero-shot judge (no explanation)", pairs["p_yes_zero_shot"].to_numpy()),
        Predictor(
            "rule_share_liked",
            "Rule: share of history liked",
            pairs["rule_share_liked"].to_numpy(),
            is_probability=False,
        ),
        Predictor(
            "rule_genre_overlap",
            "Rule: genre overlap, liked minus disliked",
            pairs["rule_genre_overlap"].to_numpy(),
            is_probability=False,
        ),
    ]
    for rd in rounds:
        k, t = rd["k"], rd["test"]
        predictors += [
            Predictor(
                f"expctr_aug_round_{k}",
                f"ExpCTR-Aug, round {k}",
                t["p_click_aug"].to_numpy(),
                group=f"round {k}",
            ),
            Predictor(
                f"expctr_llm_round_{k}",
                f"ExpCTR-LLM (judge + explanation), round {k}",
                t["p_yes_judge"].to_numpy(),
                group=f"round {k}",
            ),
        ]
    table = predictor_rows(labels, predictors, params.seed)
    by_key = {r["key"]: r for r in table}
    notes: list[str] = []
    for rd in rounds:  # the ID model is the same in every round: one row, but keep every round's for checking
        k = rd["k"]
        by_key[f"id_only_round_{k}"] = predictor_rows(
            labels, [Predictor("id", "id", rd["test"]["p_click_id"].to_numpy())], params.seed, n_boot=0
        )[0]
        if abs((by_key[f"id_only_round_{k}"]["auc"] or 0) - (by_key["id_only"]["auc"] or 0)) > 1e-9:
            notes.append(
                f"round {k} scored the pairs with a different ID model than round 1 "
                f"(AUC {by_key[f'id_only_round_{k}']['auc']:.4f} vs {by_key['id_only']['auc']:.4f})"
            )
        if not (rd["logs"]["lc"] or rd["logs"]["ic"]):
            notes.append(f"round {k}: no GRPO reward log (models/rounds/round_{k}/rl_lc.jsonl, rl_ic.jsonl)")

    round_rows = [round_row(rd, pairs, index, by_key) for rd in rounds]
    samples = pick_samples(rounds[-1], pairs, round_rows[-1]["_unseen"])
    for r in round_rows:
        r.pop("_unseen")

    ev = Evaluation(
        n_pairs=pairs.height,
        label_rate=float(labels.mean()) if len(labels) else math.nan,
        rounds=ks,
        primary=primary,
        pair_rows=table,
        round_rows=round_rows,
        full_split=full_split_table(ctr, list(params.ctr.compare)),
        samples=samples,
        notes=notes,
    )
    ev.figures = make_figures(ev, labels, predictors, rounds)

    with atomic_path(report_dir(paths)) as tmp:
        tmp.mkdir()
        for name, png in ev.figures.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / "report.html").write_text(html_report(ev), encoding="utf-8")
        (tmp / "summary.md").write_text(markdown_summary(ev), encoding="utf-8")

    metrics = headline(ev)
    write_json(paths.metric("evaluation.json"), metrics)
    with atomic_path(paths.metric("evaluation_rounds.csv")) as tmp:
        pl.DataFrame(
            [{c: _csv_value(r.get(c)) for c in CSV_COLUMNS} for r in round_rows],
            schema={
                c: (pl.Int64 if c in ("round", "rl_lc_steps", "rl_ic_steps") else pl.Float64)
                for c in CSV_COLUMNS
            },
        ).write_csv(tmp)
    return metrics


def _csv_value(v):
    v = clean_number(v)
    return round(v, 6) if isinstance(v, float) else v


def make_figures(ev: Evaluation, labels: np.ndarray, predictors: list[Predictor], rounds: list[dict]) -> dict:
    base_style = {
        "id_only": ("#555555", "-"),
        "zero_shot_judge": ("#8c564b", ":"),
        "rule_share_liked": ("#bcbd22", "-."),
        "rule_genre_overlap": ("#17becf", "-."),
    }
    by_key = {r["key"]: r for r in ev.pair_rows}
    curves = []
    for p in predictors:
        auc = by_key[p.key]["auc"]
        tag = f"{p.label} (AUC {auc:.3f})" if auc is not None and math.isfinite(auc) else p.label
        if p.key in base_style:
            curves.append((tag, p.scores, *base_style[p.key]))
        else:
            k = int(p.key.rsplit("_", 1)[1])
            curves.append((tag, p.scores, figures.round_color(k), "-" if "aug" in p.key else "--"))
    ks = ev.rounds
    rr = ev.round_rows
    ref = {
        f"ID-only {ev.primary}": by_key["id_only"]["auc"],
        "zero-shot judge": by_key["zero_shot_judge"]["auc"],
        "rule: share liked": by_key["rule_share_liked"]["auc"],
    }
    return {
        "roc_test_pairs": figures.roc_figure(labels, curves, f"Test pairs (n = {ev.n_pairs})"),
        "round_auc": figures.round_bars(
            ks,
            {"ExpCTR-Aug": [r["aug_auc"] for r in rr], "ExpCTR-LLM (LC-AUC)": [r["llm_auc"] for r in rr]},
            f"AUC on the test pairs (n = {ev.n_pairs})",
            "AUC",
            ref,
            (0, 1.08),
        ),
        "round_explanations": figures.round_bars(
            ks,
            {
                "faithfulness": [r["faithfulness"] for r in rr],
                "stance = label": [r["stance_label_agreement"] for r in rr],
                "stance = ID model": [r["stance_id_agreement"] for r in rr],
                "one sentence": [r["share_one_sentence"] for r in rr],
                "distinct-2": [r["distinct_2"] for r in rr],
            },
            "Explanations on the test pairs",
            "share",
            None,
            (0, 1.08),
        ),
        "reward_curves": figures.reward_curves(
            {rd["k"]: rd["logs"] for rd in rounds}, "GRPO reward per step"
        ),
    }


def headline(ev: Evaluation) -> dict:
    """metrics/evaluation.json: top-level headline numbers, then the pair table, per-round rows and the
    full-split table (nested mappings, so `dvc metrics show` and Dagster flatten them)."""
    by_key = {r["key"]: r for r in ev.pair_rows}
    last = ev.round_rows[-1]
    c = clean_number
    out: dict[str, Any] = {
        "rounds": len(ev.rounds),
        "test_pairs": ev.n_pairs,
        "test_pairs_label_rate": c(ev.label_rate),
        "id_only_auc": c(by_key["id_only"]["auc"]),
        "zero_shot_judge_auc": c(by_key["zero_shot_judge"]["auc"]),
        "rule_share_liked_auc": c(by_key["rule_share_liked"]["auc"]),
        "final_aug_auc": c(last["aug_auc"]),
        "final_llm_auc": c(last["llm_auc"]),
        "final_faithfulness": c(last["faithfulness"]),
        "final_distinct_2": c(last["distinct_2"]),
        "final_stance_label_agreement": c(last["stance_label_agreement"]),
        "test_pairs_predictors": {
            r["key"]: {
                "auc": c(r["auc"]),
                "auc_ci_low": c(r["auc_ci_low"]),
                "auc_ci_high": c(r["auc_ci_high"]),
                "logloss": c(r["logloss"]),
                "n": r["n"],
            }
            for r in ev.pair_rows
        },
        "per_round": {
            f"round_{r['round']}": {k: c(v) for k, v in r.items() if k not in ("round", "top_explanation")}
            for r in ev.round_rows
        },
    }
    if ev.full_split:
        out["full_test_split"] = {
            "rows": ev.full_split["rows"],
            "label_rate": c(ev.full_split["label_rate"]),
            "models": {
                m["model"]: {"auc": c(m["auc"]), "logloss": c(m["logloss"])} for m in ev.full_split["models"]
            },
        }
    return out
