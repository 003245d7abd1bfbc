"""What the explanation adds: the final round's ExpCTR-Aug ablation, and how the judge reads each verdict grade.

The ablation puts the three Aug variants (with the pair's explanation, with the prompt's facts only, with
another pair's explanation of the same user) beside the ID model on the same pairs. Its plain reading says
whether the explanation beats the facts alone, because a gain over the ID model that the facts already give is
not evidence that the explanation helps.
"""

from __future__ import annotations

import math
from typing import Any

from expctr.llm.verdicts import VERDICT_GRADES, Grade

ABLATION_VARIANTS = ("explanation", "facts", "shuffled")


def _ok(*vals: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)


def _ci(d: dict | None) -> str:
    d = d or {}
    return f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if _ok(d.get("ci_low"), d.get("ci_high")) else "[–]"


def aug_ablation(metrics: dict[str, Any], k: int) -> dict[str, Any]:
    """The ablation block of round k's metrics ({} when the round trained no Aug, e.g. round 0)."""
    aug = metrics.get("expctr_aug") or {}
    if not aug:
        return {}
    out: dict[str, Any] = {"round": k, "n": (aug.get("explanation") or {}).get("n"),
                           "variants": {v: aug[v] for v in ABLATION_VARIANTS if v in aug},
                           "id_only": metrics.get("id_only") or {}}
    for key in ("explanation_minus_facts", "explanation_minus_shuffled", "cross_user_donors"):
        if key in aug:
            out[key] = aug[key]
    d = out.get("explanation_minus_facts") or {}
    # "facts alone account for the gain" when explanation - facts is not above 0 with its interval
    out["facts_account_for_gain"] = bool(d["ci_low"] <= 0) if _ok(d.get("ci_low")) else None
    out["reading"] = ablation_reading(out)
    return out


def ablation_reading(ab: dict[str, Any]) -> str:
    """Plain sentences: the gain over the ID model, whether the facts alone account for it, and whether the
    pair's own explanation beats a shuffled one."""
    if not ab:
        return "No ExpCTR-Aug ablation was recorded."
    expl, idm = ab["variants"].get("explanation") or {}, ab.get("id_only") or {}
    gain = expl.get("minus_id") or {}
    parts = []
    if _ok(expl.get("auc"), idm.get("auc"), gain.get("diff")):
        parts.append(f"ExpCTR-Aug with the explanation reaches {expl['auc']:.3f} AUC against the ID model's "
                     f"{idm['auc']:.3f}: {gain['diff']:+.3f} (paired 95 % CI {_ci(gain)}).")
    d = ab.get("explanation_minus_facts") or {}
    if _ok(d.get("diff"), d.get("ci_low"), d.get("ci_high")):
        if d["ci_low"] > 0:
            parts.append(f"The explanation adds {d['diff']:+.3f} AUC over the prompt's facts alone ({_ci(d)}, above "
                         "0): the gain is not the facts alone.")
        elif d["ci_high"] < 0:
            parts.append(f"The explanation makes Aug worse than the prompt's facts alone ({d['diff']:+.3f}, "
                         f"{_ci(d)}, below 0): the facts alone account for the gain, and the explanation costs AUC.")
        else:
            parts.append(f"Explanation minus facts is {d['diff']:+.3f} AUC ({_ci(d)}, includes 0): the prompt's "
                         "facts alone account for the gain; the explanation adds nothing measurable.")
        if not (_ok(gain.get("ci_low")) and gain["ci_low"] > 0):
            parts.append("ExpCTR-Aug's own gain over the ID model is not above 0 with its interval either.")
    else:
        parts.append("Explanation minus facts has no interval: whether the explanation adds anything is not known.")
    s = ab.get("explanation_minus_shuffled") or {}
    if _ok(s.get("diff"), s.get("ci_low"), s.get("ci_high")):
        verdict = ("beats" if s["ci_low"] > 0 else "is worse than" if s["ci_high"] < 0
                   else "does no better than")
        parts.append(f"The pair's own explanation {verdict} another pair's explanation of the same user "
                     f"({s['diff']:+.3f}, {_ci(s)}).")
    donors = ab.get("cross_user_donors")
    if isinstance(donors, int) and donors > 0:
        parts.append(f"{donors} test pairs took their shuffled explanation from another user (no second pair).")
    return " ".join(parts)


def grade_label(g: Grade) -> str:
    """The words that state a grade, as metrics/llm_pairs.json keys them ("probably enjoy, though ...")."""
    return f"{g.words}{g.hedge}"


def grade_words(min_p: Any) -> str:
    """The words of the grade a pair's `grade` column (its min_p) names; the number itself when none match."""
    g = next((g for g in VERDICT_GRADES if _ok(min_p) and abs(g.min_p - float(min_p)) < 1e-6), None)
    return grade_label(g) if g else ("–" if min_p is None else str(min_p))


def grade_rows(by_grade: list[dict], pool: dict[str, Any]) -> list[dict]:
    """One row per verdict grade, highest first: on the round's test pairs n, the judge's mean P(Yes) and the
    click rate; on the RL pool (llm_pairs), the judge's mean P(Yes) after the bare sentence and the share of
    pairs where it reads the grade above the next one."""
    found = {round(float(r["grade"]), 6): r for r in by_grade if _ok(r.get("grade"))}
    pool_p = (pool.get("judge_grades") or {}).get("mean_p_yes") or {}
    pool_order = (pool.get("judge_grades") or {}).get("share_ordered_with_next") or {}
    rows = []
    for g in VERDICT_GRADES:
        r = found.get(round(g.min_p, 6), {})
        rows.append({"grade": grade_label(g), "min_p": g.min_p, "n": int(r.get("n") or 0),
                     "mean_p_yes": r.get("mean_p_yes"), "click_rate": r.get("click_rate"),
                     "pool_mean_p_yes": pool_p.get(grade_label(g)),
                     "pool_ordered_with_next": pool_order.get(grade_label(g))})
    return rows


def aug_fit_summary(fit: dict[str, Any]) -> dict[str, dict]:
    """Per Aug variant: best epoch, its held-out AUC and the epochs run (did the head learn: best epoch > 0)."""
    return {v: {"best_epoch": f.get("best_epoch"), "best_valid_auc": f.get("best_valid_auc"),
                "epochs": max((c.get("epoch", 0) for c in f.get("curve") or []), default=0)}
            for v, f in (fit or {}).items()}


__all__ = ["ABLATION_VARIANTS", "ablation_reading", "aug_ablation", "aug_fit_summary", "grade_label", "grade_rows",
           "grade_words"]
