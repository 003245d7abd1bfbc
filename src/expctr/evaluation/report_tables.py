"""The report's predictor tables and per-round rows, computed from the loaded artifacts.

Two pair sets are compared like with like: the final round's pairs (every predictor, from the per-pair scores)
and the shared pairs every round saw (the first min n_k), where rounds can be compared with each other. The
per-round rows restate each round's own metrics (on its own n_k pairs) and add text measures of its
explanations (faithfulness, grounding, quoted titles, diversity).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import polars as pl

from expctr.evaluation.ablation import grade_words
from expctr.evaluation.faithfulness import TitleIndex, quoted_outside, unseen_mentions
from expctr.evaluation.grounding import grounded_rate
from expctr.evaluation.metrics import Predictor, distinct_n, mean_words, paired_auc_difference
from expctr.evaluation.report_data import Round

RULE_NAMES = {"rule_share_liked": "Rule: share of history liked",
              "rule_genre_overlap": "Rule: genre overlap, liked minus disliked",
              "rule_item_liked_share": "Rule: the target's share of likes so far (stated in the prompt)"}
# Aug variant -> (predictor key prefix, label): the explanation variant keeps the plain ExpCTR-Aug name
AUG_VARIANTS = {"explanation": ("expctr_aug", "ExpCTR-Aug (ID + explanation)"),
                "facts": ("aug_facts", "Aug, the prompt's facts only"),
                "shuffled": ("aug_shuffled", "Aug, shuffled explanation (same user)")}


def round_name(k: int) -> str:
    return "base explainer" if k == 0 else f"round {k}"


def baselines(pairs: pl.DataFrame, n: int, primary: str) -> list[Predictor]:
    """The ID model, the zero-shot judge and the history rules on the first n pairs."""
    head = pairs.head(n)
    return [
        Predictor("id_only", f"ID-only ({primary})", head["p_id"].to_numpy()),
        Predictor("zero_shot_judge", "Zero-shot judge (no explanation)", head["p_yes_zero_shot"].to_numpy()),
        *[Predictor(key, name, head[key].to_numpy(), is_probability=False)
          for key, name in RULE_NAMES.items() if key in head.columns],
    ]


def round_predictors(rd: Round, n: int, llm_side: bool = True) -> list[Predictor]:
    """Round k's predictors on its first n pairs: ExpCTR-LLM, the Aug variants it scored, and (with `llm_side`)
    the stated stance alone and the explainer's verdict logit (scores: AUC only)."""
    k, t, name = rd.k, rd.test.head(n), round_name(rd.k)
    out = [Predictor(f"expctr_llm_round_{k}", f"ExpCTR-LLM (judge reads the explanation), {name}",
                     t["p_yes_judge"].to_numpy(), group=name)]
    out += [Predictor(f"{key}_round_{k}", f"{label}, {name}", t[f"p_aug_{v}"].to_numpy(), group=name)
            for v, (key, label) in AUG_VARIANTS.items() if f"p_aug_{v}" in t.columns]
    if llm_side:
        out += [Predictor(f"stance_only_round_{k}", f"Stated stance alone, {name}",
                          t["stance"].to_numpy().astype(float), is_probability=False, group=name),
                Predictor(f"verdict_logit_round_{k}", f"Explainer's verdict logit, {name}",
                          t["verdict_logit"].to_numpy(), is_probability=False, group=name)]
    return out


def shared_gains(rounds: list[Round], labels: np.ndarray, p_id: np.ndarray, seed: int, n_boot: int
                 ) -> dict[int, dict[str, dict]]:
    """Per round, ExpCTR-LLM - ID and ExpCTR-Aug - ID on the shared pairs (paired bootstrap intervals)."""
    n = len(labels)
    out: dict[int, dict[str, dict]] = {}
    for rd in rounds:
        t = rd.test.head(n)
        gains = {"llm_minus_id": paired_auc_difference(labels, t["p_yes_judge"].to_numpy(), p_id, seed, n_boot)}
        if "p_aug_explanation" in t.columns:
            gains["aug_minus_id"] = paired_auc_difference(labels, t["p_aug_explanation"].to_numpy(), p_id, seed,
                                                          n_boot)
        out[rd.k] = gains
    return out


def _get(d: Any, *keys: str) -> Any:
    """d[k1][k2]..., None where any level is missing."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _diff_columns(col: str, d: Any) -> dict[str, Any]:
    """A paired difference {diff, ci_low, ci_high} as three flat columns."""
    return {col: _get(d, "diff"), f"{col}_ci_low": _get(d, "ci_low"), f"{col}_ci_high": _get(d, "ci_high")}


def round_row(rd: Round, pairs: pl.DataFrame, index: TitleIndex) -> dict[str, Any]:
    """Round k on its own n_k pairs: its recorded metrics plus text measures of its explanations."""
    m, test = rd.metrics, rd.test
    head = pairs.head(test.height)
    texts = [str(t or "") for t in test["explanation"].to_list()]
    histories, targets = head["history"].to_list(), head["target"].to_list()
    unseen = [unseen_mentions(index, t, h, g) for t, h, g in zip(texts, histories, targets)]
    # the reason the explainer wrote itself: the text after the opening it was given (the graded verdict and,
    # anchored, a history item the pipeline chose), so grounding is not credited for the anchor
    openings = test["opening"].to_list() if "opening" in test.columns else [""] * len(texts)
    free = [t[len(o):] if o and t.startswith(o) else t for t, o in zip(texts, (str(o or "") for o in openings))]
    outside = [bool(quoted_outside(t, h, g)) for t, h, g in zip(texts, histories, targets)]
    n = max(1, len(texts))
    top_text, top_n = min(Counter(texts).items(), key=lambda kv: (-kv[1], kv[0])) if texts else ("", 0)
    aug = m.get("expctr_aug") or {}
    rises = {f"{stage}_{phase}": r for stage, phases in (m.get("rewards_rise") or {}).items()
             for phase, r in phases.items()}
    row = {
        "round": rd.k, "test_pairs": test.height,
        "llm_auc": _get(m, "expctr_llm", "auc"), "llm_auc_ci_low": _get(m, "expctr_llm", "auc_ci_low"),
        "llm_auc_ci_high": _get(m, "expctr_llm", "auc_ci_high"),
        "stance_only_auc": _get(m, "stance_only", "auc"), "verdict_logit_auc": _get(m, "verdict_logit", "auc"),
        "aug_auc": _get(aug, "explanation", "auc"), "aug_auc_ci_low": _get(aug, "explanation", "auc_ci_low"),
        "aug_auc_ci_high": _get(aug, "explanation", "auc_ci_high"),
        "aug_facts_auc": _get(aug, "facts", "auc"), "aug_shuffled_auc": _get(aug, "shuffled", "auc"),
        "id_auc": _get(m, "id_only", "auc"),
        "test_click_rate": m.get("test_click_rate"),
        "positive_share": _get(m, "verdicts", "share_positive"),
        "agree_label": _get(m, "verdicts", "vs_label", "agreement"),
        "agree_id": _get(m, "verdicts", "vs_id_model", "agreement"),
        "id_positive_rate": _get(m, "verdicts", "vs_id_model", "reference_positive_rate"),
        "confusion_label": _get(m, "verdicts", "vs_label"), "confusion_id": _get(m, "verdicts", "vs_id_model"),
        "faithfulness": 1 - sum(bool(u) for u in unseen) / n if texts else math.nan,
        "grounded": grounded_rate(texts, histories, targets) if texts else math.nan,
        "reason_grounded": grounded_rate(free, histories, targets) if texts else math.nan,
        "outside_title_share": sum(outside) / n if texts else math.nan,
        "share_one_sentence": _get(m, "explanations", "share_one_sentence"),
        "top_explanation_share": top_n / n if texts else math.nan, "top_explanation": top_text,
        "distinct_2": distinct_n(texts, 2), "mean_words": mean_words(texts),
        "aug_best_epoch": _get(m, "aug_fit", "explanation", "best_epoch"),
        "rewards_rise": rises, "seconds": m.get("seconds"),
    }
    row.update(_diff_columns("llm_minus_id", m.get("llm_minus_id")))
    row.update(_diff_columns("aug_minus_id", _get(aug, "explanation", "minus_id")))
    row.update(_diff_columns("explanation_minus_facts", aug.get("explanation_minus_facts")))
    row["unseen_titles"] = [list(dict.fromkeys(mm.title for mm in u)) for u in unseen]
    return row


def pick_samples(rd: Round, pairs: pl.DataFrame, unseen: list[list[str]], n: int = 10) -> list[dict]:
    """The first n/2 clicked and first n/2 non-clicked test pairs (deterministic, both classes shown)."""
    test = rd.test
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
            "label": int(t["label"]), "grade": grade_words(t.get("grade")), "p_yes_judge": t["p_yes_judge"],
            "p_aug_explanation": t.get("p_aug_explanation"), "p_id": t["p_id"], "unseen_titles": unseen[i],
            "explanation": t["explanation"],
        })
    return rows


def full_split_table(ctr: dict, order: list[str]) -> dict:
    """The ctr_model stage's full-test-split table, models in `order` (params ctr.compare) first."""
    found = ctr.get("models") or {}
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    models = [{"model": n, "auc": found[n].get("test_auc"), "logloss": found[n].get("test_logloss")} for n in names]
    return {"rows": ctr.get("test_rows"), "label_rate": ctr.get("test_label_rate"), "models": models}


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


__all__ = ["AUG_VARIANTS", "RULE_NAMES", "baselines", "by_key", "full_split_table", "pick_samples",
           "round_name", "round_predictors", "round_row", "shared_gains"]
