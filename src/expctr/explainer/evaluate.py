"""A round's evaluation on the test pairs: every predictor scored on the same pairs, with intervals.

- ExpCTR-LLM: the frozen judge's P(Yes) after reading the explanation (its verdict worded by the explainer's
  confidence, then its reason); beside it, the judge reading the verdict clause alone, the stated stance alone
  (the two-point score a plain verdict gives) and the explainer's own verdict logit z (the confidence the
  words state; not a predictor that reads text);
- ExpCTR-Aug and its controls (`expctr.explainer.aug_stage`): with the pair's explanation, with the prompt's
  facts alone, with another pair's explanation of the same user; each against the ID model (paired
  bootstrap), and explanation - facts, explanation - shuffled;
- the ID model, the zero-shot judge and the model-free history rules on the same pairs (from llm_pairs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from expctr.config import Params
from expctr.evaluation.metrics import auc_with_ci, paired_auc_difference, verdict_confusion
from expctr.explainer.explain import explanation_stats
from expctr.explainer.rewards.lc import LCReward


def _auc(labels, scores, params: Params, is_probability: bool = True) -> dict[str, Any]:
    return auc_with_ci(labels, scores, seed=params.seed, n_boot=params.evaluation.bootstrap,
                       is_probability=is_probability)


def _diff(labels, a, b, params: Params) -> dict[str, Any]:
    return paired_auc_difference(labels, a, b, seed=params.seed, n_boot=params.evaluation.bootstrap)


def llm_metrics(test: pl.DataFrame, explained: pl.DataFrame, lc: LCReward, params: Params
                ) -> tuple[dict[str, Any], pl.DataFrame]:
    """The judge reads every explanation; (metrics, per-pair frame) of the LLM-side predictors.

    Beside the whole explanation the judge also reads its verdict clause alone (the graded opening as a
    sentence, in the same pass: both share the pair's context), which shows how much of ExpCTR-LLM's signal is
    the stated verdict and how much the reason adds or takes away."""
    texts, clauses = explained["explanation"].to_list(), explained["clause"].to_list()
    history, target = explained["history"].to_list(), explained["target"].to_list()
    both = lc.p_yes([t for pair in zip(texts, clauses) for t in pair], [h for h in history for _ in (0, 1)],
                    [t for t in target for _ in (0, 1)])
    p_judge, p_clause = both[0::2], both[1::2]
    labels = test["label"].to_numpy().astype(int)
    p_id = test["p_id"].to_numpy()
    stances = explained["stance"].to_numpy().astype(int)
    facts = [c for c in explained.columns if c.startswith("fact_")]
    frame = explained.select("user_id", "item_id", "label", "p_id", "explanation", "opening", "anchor", "grade",
                             "verdict_logit", "stance", "n_tokens", "complete", *facts).with_columns(
        pl.Series("p_yes_judge", p_judge), pl.Series("p_yes_verdict_clause", p_clause))
    by_grade = (frame.group_by("grade").agg(pl.len().alias("n"), pl.col("p_yes_judge").mean().alias("mean_p_yes"),
                                            pl.col("label").mean().alias("click_rate"))
                .sort("grade", descending=True))
    metrics: dict[str, Any] = {
        "test_pairs": len(labels),
        "test_click_rate": float(labels.mean()),
        "expctr_llm": _auc(labels, p_judge, params),
        "verdict_clause": _auc(labels, p_clause, params),
        "stance_only": _auc(labels, stances.astype(float), params, is_probability=False),
        "verdict_logit": _auc(labels, explained["verdict_logit"].to_numpy(), params, is_probability=False),
        "id_only": _auc(labels, p_id, params),
        "llm_minus_id": _diff(labels, p_judge, p_id, params),
        "zero_shot_judge": _auc(labels, test["p_yes_zero_shot"].to_numpy(), params),
        "rules": {c.removeprefix("rule_"): _auc(labels, test[c].to_numpy(), params, is_probability=False)
                  for c in test.columns if c.startswith("rule_")},
        "verdicts": verdict_confusion(stances, labels, p_id >= 0.5),
        "judge_by_grade": by_grade.to_dicts(),
        "explanations": explanation_stats(explained),
    }
    return metrics, frame


def aug_metrics(labels: np.ndarray, p_id: np.ndarray, scores: dict[str, np.ndarray], params: Params
                ) -> dict[str, Any]:
    """Per Aug variant its AUC and its paired difference to the ID model; explanation - facts / - shuffled."""
    out: dict[str, Any] = {}
    for v, p in scores.items():
        out[v] = {**_auc(labels, p, params), "minus_id": _diff(labels, p, p_id, params)}
    if "explanation" in scores and "facts" in scores:
        out["explanation_minus_facts"] = _diff(labels, scores["explanation"], scores["facts"], params)
    if "explanation" in scores and "shuffled" in scores:
        out["explanation_minus_shuffled"] = _diff(labels, scores["explanation"], scores["shuffled"], params)
    return out


__all__ = ["aug_metrics", "llm_metrics"]
