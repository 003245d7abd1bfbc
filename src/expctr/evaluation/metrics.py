"""Evaluation metrics on the LLM test pairs: predictor AUC / log-loss (with bootstrap intervals), stance
agreement, and the diversity (distinct-n) and length of explanations. Pure functions of arrays and texts."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from expctr.ctr.trainer import binary_metrics

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


@dataclass(frozen=True)
class Predictor:
    """Scores of one predictor on the test pairs. `is_probability=False` (e.g. a history rule's score):
    only its ranking is meaningful, so AUC is reported and log-loss is not."""

    key: str
    label: str
    scores: np.ndarray
    is_probability: bool = True
    group: str = "baseline"


def auc_bootstrap_ci(
    labels: np.ndarray, scores: np.ndarray, seed: int, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC (pairs resampled with replacement; resamples with a single
    class are dropped). NaN when the labels have one class or fewer than two resamples are usable."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if len(y) < 2 or len(np.unique(y)) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    yb, sb = y[idx], s[idx]
    n_pos = yb.sum(axis=1)
    n_neg = len(y) - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    if ok.sum() < 2:
        return math.nan, math.nan
    ranks = rankdata(sb[ok], axis=1)  # ties get their average rank, as in roc_auc_score
    auc = ((ranks * yb[ok]).sum(axis=1) - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    lo, hi = np.quantile(auc, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def auc_with_ci(labels: Sequence[int], scores: Sequence[float], seed: int, n_boot: int = 1000,
                is_probability: bool = True) -> dict:
    """{auc, auc_ci_low, auc_ci_high, logloss (probabilities only), n}: one predictor on one set of pairs."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    m = binary_metrics(y, np.clip(s, 1e-7, 1 - 1e-7)) if is_probability else {"auc": _rank_auc(y, s)}
    lo, hi = auc_bootstrap_ci(y, s, seed, n_boot)
    return {"auc": m["auc"], "auc_ci_low": lo, "auc_ci_high": hi,
            "logloss": m.get("logloss") if is_probability else None, "n": len(y)}


def _rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else math.nan


def paired_auc_difference(labels: Sequence[int], a: Sequence[float], b: Sequence[float], seed: int,
                          n_boot: int = 1000, level: float = 0.95) -> dict:
    """AUC(a) - AUC(b) on the same pairs, with a paired percentile bootstrap interval (both predictors scored
    on each resample: the interval of the difference, much narrower than two separate intervals)."""
    y = np.asarray(labels, dtype=int)
    sa, sb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = _rank_auc(y, sa) - _rank_auc(y, sb)
    if len(y) < 2 or len(np.unique(y)) < 2:
        return {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "n": len(y)}
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    yb = y[idx]
    n_pos = yb.sum(axis=1)
    ok = (n_pos > 0) & (n_pos < len(y))
    yb, n_pos, n_neg = yb[ok], n_pos[ok], len(y) - n_pos[ok]

    def aucs(s: np.ndarray) -> np.ndarray:
        ranks = rankdata(s[idx][ok], axis=1)
        return ((ranks * yb).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)

    d = aucs(sa) - aucs(sb)
    lo, hi = np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2]) if len(d) >= 2 else (math.nan, math.nan)
    return {"diff": float(diff), "ci_low": float(lo), "ci_high": float(hi), "n": len(y)}


def verdict_confusion(stances: Sequence[int], labels: Sequence[int], id_positive: Sequence[bool]) -> dict:
    """How the explanations' verdicts (+1 enjoy / -1 not / 0 none) line up with the real clicks and with the ID
    model's decision: shares of each verdict, 2x2 counts against each reference (a pair without a verdict counts
    as "not"), and agreement rates."""
    st = np.asarray(stances, dtype=int)
    pos = st > 0
    out: dict = {"n": len(st), "share_positive": float(pos.mean()) if len(st) else math.nan,
                 "share_negative": float((st < 0).mean()) if len(st) else math.nan,
                 "share_none": float((st == 0).mean()) if len(st) else math.nan}
    for name, ref in (("label", np.asarray(labels, dtype=int) == 1), ("id_model", np.asarray(id_positive, bool))):
        out[f"vs_{name}"] = {
            "positive_verdict_and_positive": int((pos & ref).sum()),
            "positive_verdict_and_negative": int((pos & ~ref).sum()),
            "negative_verdict_and_positive": int((~pos & ref).sum()),
            "negative_verdict_and_negative": int((~pos & ~ref).sum()),
            "agreement": float((pos == ref).mean()) if len(st) else math.nan,
            "reference_positive_rate": float(ref.mean()) if len(st) else math.nan,
        }
    return out


def predictor_rows(
    labels: Sequence[int], predictors: Iterable[Predictor], seed: int, n_boot: int = 1000
) -> list[dict]:
    """One row per predictor: AUC, its 95% bootstrap interval, log-loss (probabilities only) and n."""
    y = np.asarray(labels, dtype=int)
    rows = []
    for p in predictors:
        s = np.asarray(p.scores, dtype=float)
        if len(s) != len(y):
            raise ValueError(f"{p.key}: {len(s)} scores for {len(y)} labels")
        if p.is_probability:
            m = binary_metrics(y, s)
        else:  # a score: min-max scaled into (0, 1) only so binary_metrics accepts it (AUC is rank-based)
            span = s.max() - s.min() if len(s) else 0.0
            m = binary_metrics(y, (s - s.min()) / (span + 1e-12) * 0.98 + 0.01 if len(s) else s)
            m["logloss"] = None
        lo, hi = auc_bootstrap_ci(y, s, seed, n_boot)
        rows.append(
            {
                "key": p.key,
                "predictor": p.label,
                "group": p.group,
                "auc": m["auc"],
                "auc_ci_low": lo,
                "auc_ci_high": hi,
                "logloss": m["logloss"],
                "n": len(y),
            }
        )
    return rows


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters/digits, inner apostrophes kept: "won't" is one word)."""
    return _WORD_RE.findall(str(text).lower().replace("\u2019", "'"))


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Corpus distinct-n (Li et al., 2016): distinct n-grams / all n-grams over the texts (n-grams do not
    cross texts). 0.0 when there are no n-grams."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = words(t)
        grams += [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_words(texts: Sequence[str]) -> float:
    """Mean length in whitespace-separated words (the count `explanation_stats` uses)."""
    return float(np.mean([len(str(t).split()) for t in texts])) if len(texts) else 0.0


def stance_agreement(stances: Sequence[int], positive: Sequence[bool]) -> tuple[float, int]:
    """Share of explanations WITH a stance (+1/-1) whose stance matches `positive` (+1 <-> True), and how
    many had a stance. NaN when none had one."""
    st = np.asarray(stances, dtype=int)
    pos = np.asarray(positive, dtype=bool)
    has = st != 0
    n = int(has.sum())
    if n == 0:
        return math.nan, 0
    return float(np.mean((st[has] > 0) == pos[has])), n


def clean_number(x):
    """NaN / inf -> None (valid JSON; DVC and Dagster skip it), numpy scalars -> Python numbers."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x
