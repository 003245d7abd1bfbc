"""Which figures the evaluation report shows, drawn from the computed evaluation (the drawing is in figures.py)."""

from __future__ import annotations

import math

import numpy as np

from expctr.evaluation import figures
from expctr.evaluation.metrics import Predictor
from expctr.evaluation.report import Evaluation
from expctr.evaluation.report_data import Round
from expctr.evaluation.report_tables import AUG_VARIANTS, by_key

# predictor key (without `_round_k`) -> (color, linestyle) on the ROC figure
_BASE_STYLE = {"id_only": ("#555555", "-"), "zero_shot_judge": ("#8c564b", ":"),
               "rule_share_liked": ("#bcbd22", "-."), "rule_genre_overlap": ("#17becf", "-."),
               "rule_item_liked_share": ("#e377c2", "-.")}
_ROUND_STYLE = {"expctr_llm": ("#1f77b4", "-"), "stance_only": ("#1f77b4", ":"), "verdict_logit": ("#9467bd", "-."),
                "expctr_aug": ("#d62728", "-"), "aug_facts": ("#2ca02c", "--"), "aug_shuffled": ("#ff7f0e", ":")}
_ABLATION_LABELS = {"explanation": "(a) ExpCTR-Aug, explanation", "facts": "(b) Aug, facts only",
                    "shuffled": "(c) Aug, shuffled explanation"}


def _roc_curves(ev: Evaluation, predictors: list[Predictor]) -> list[tuple]:
    rows, k = by_key(ev.pair_rows), ev.rounds[-1]
    curves = []
    for p in predictors:
        auc = rows[p.key]["auc"]
        tag = f"{p.label} (AUC {auc:.3f})" if auc is not None and math.isfinite(auc) else p.label
        stem, sep, r = p.key.rpartition("_round_")
        color, ls = _BASE_STYLE.get(p.key) or _ROUND_STYLE.get(stem, ("#7f7f7f", "-"))
        if sep and int(r) != k:  # an earlier round beside the final one: grey
            color = figures.round_color(0)
        curves.append((tag, p.scores, color, ls))
    return curves


def _ablation(ev: Evaluation) -> bytes | None:
    ab = ev.ablation
    if not ab:
        return None
    variants, idm = ab.get("variants") or {}, ab.get("id_only") or {}

    def iv(label: str, d: dict, key: str = "auc", lo: str = "auc_ci_low", hi: str = "auc_ci_high"):
        return label, d.get(key), d.get(lo), d.get(hi)

    aucs = [iv(_ABLATION_LABELS[v], variants[v]) for v in AUG_VARIANTS if v in variants]
    aucs.append(iv(f"ID model ({ev.primary})", idm))
    diffs = [iv(f"{_ABLATION_LABELS[v].split(',')[0]} − ID", variants[v].get("minus_id") or {}, "diff", "ci_low",
                "ci_high") for v in AUG_VARIANTS if v in variants]
    for key, label in (("explanation_minus_facts", "(a) − (b)"), ("explanation_minus_shuffled", "(a) − (c)")):
        if key in ab:
            diffs.append(iv(label, ab[key], "diff", "ci_low", "ci_high"))
    return figures.ablation_figure(aucs, diffs, f"ExpCTR-Aug ablation, round {ab['round']} (n = {ab.get('n')})")


def make_figures(ev: Evaluation, labels: np.ndarray, predictors: list[Predictor], rounds: list[Round]
                 ) -> dict[str, bytes]:
    """File stem -> PNG, in the order the report shows them."""
    shared, ks, rr = by_key(ev.shared_rows), ev.rounds, ev.round_rows
    aucs = {"ExpCTR-LLM": [shared.get(f"expctr_llm_round_{k}") for k in ks],
            "ExpCTR-Aug (explanation)": [shared.get(f"expctr_aug_round_{k}") for k in ks]}
    gains = {"ExpCTR-LLM − ID": [(ev.shared_gains.get(k) or {}).get("llm_minus_id") for k in ks],
             "ExpCTR-Aug − ID": [(ev.shared_gains.get(k) or {}).get("aug_minus_id") for k in ks]}
    ref = {f"ID-only {ev.primary}": (shared.get("id_only") or {}).get("auc"),
           "zero-shot judge": (shared.get("zero_shot_judge") or {}).get("auc")}
    out = {"roc_test_pairs": figures.roc_figure(labels, _roc_curves(ev, predictors),
                                                f"Final round's test pairs (n = {ev.n_pairs})")}
    ablation = _ablation(ev)
    if ablation is not None:
        out["aug_ablation"] = ablation
    out["judge_grades"] = figures.grade_figure(ev.grades, f"The judge reading each verdict grade (round {ks[-1]})")
    out["round_progress"] = figures.round_progress_figure(
        ks, aucs, gains, ref, f"Round over round on the same {ev.n_shared} pairs")
    if ev.aug_fit:
        out["aug_curves"] = figures.aug_curves_figure(ev.aug_fit, f"ExpCTR-Aug training, round {ks[-1]}")
    out["round_verdicts"] = figures.round_bars(
        ks, {"positive verdicts": [r["positive_share"] for r in rr],
             "verdict = click": [r["agree_label"] for r in rr],
             "verdict = ID model": [r["agree_id"] for r in rr],
             "faithful": [r["faithfulness"] for r in rr],
             "grounded": [r["grounded"] for r in rr],
             "quotes a title outside": [r["outside_title_share"] for r in rr],
             "one sentence": [r["share_one_sentence"] for r in rr]},
        "Verdicts and explanations per round (each round's test pairs)", "share",
        {"click rate": rr[-1].get("test_click_rate"), "ID model positive rate": rr[-1].get("id_positive_rate")},
        (0, 1.08))
    out["reward_curves"] = figures.stage_reward_curves({rd.k: rd.logs for rd in rounds if rd.k})
    return out


__all__ = ["make_figures"]
