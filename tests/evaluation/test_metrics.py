"""Evaluation metrics on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from expctr.evaluation.metrics import (
    Predictor,
    auc_bootstrap_ci,
    clean_number,
    distinct_n,
    mean_words,
    predictor_rows,
    stance_agreement,
    words,
)


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 distinct / 7;  bigrams: ab ba ab | ab bc -> {ab, ba, bc} 3 / 5
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    # n-grams do not cross texts: "b" + "a" is not a bigram here
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["The user WON'T like it.", "the user won't like it"], 1) == pytest.approx(5 / 10)
    assert distinct_n([], 2) == 0.0 and distinct_n(["one"], 2) == 0.0
    assert words("Won’t  LIKE, it!") == ["won't", "like", "it"]


def test_mean_words_and_stance_agreement():
    assert mean_words(["a b c", "d"]) == 2.0 and mean_words([]) == 0.0
    share, n = stance_agreement([1, -1, 0, 1], [True, True, False, False])
    assert n == 3 and share == pytest.approx(1 / 3)
    share, n = stance_agreement([0, 0], [True, False])
    assert n == 0 and math.isnan(share)


def test_predictor_table_on_known_aucs():
    y = np.array([0, 0, 1, 1])
    perfect = Predictor("p", "perfect", np.array([0.1, 0.2, 0.8, 0.9]))
    inverted = Predictor("i", "inverted", np.array([0.9, 0.8, 0.2, 0.1]))
    half = Predictor("h", "half", np.array([0.1, 0.6, 0.4, 0.9]))  # 3 of 4 positive-negative pairs ordered
    rule = Predictor("r", "rule", np.array([-3.0, 0.0, 2.0, 5.0]), is_probability=False)
    rows = {r["key"]: r for r in predictor_rows(y, [perfect, inverted, half, rule], seed=0, n_boot=200)}
    assert rows["p"]["auc"] == 1.0 and rows["i"]["auc"] == 0.0 and rows["h"]["auc"] == pytest.approx(0.75)
    assert rows["r"]["auc"] == 1.0 and rows["r"]["logloss"] is None  # a score, not a probability
    expected_ll = -np.mean(np.log([0.9, 0.8, 0.8, 0.9]))
    assert rows["p"]["logloss"] == pytest.approx(expected_ll) and rows["p"]["n"] == 4
    assert rows["p"]["auc_ci_low"] == rows["p"]["auc_ci_high"] == 1.0


def test_bootstrap_interval_matches_sklearn_auc_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = y * 0.5 + rng.normal(0, 0.5, 300)
    s[:20] = 0.25  # ties
    lo, hi = auc_bootstrap_ci(y, s, seed=1)
    auc = roc_auc_score(y, s)
    assert lo < auc < hi and hi - lo < 0.2
    assert auc_bootstrap_ci(y, s, seed=1) == (lo, hi)
    # the rank formula equals sklearn's AUC (ties averaged) on a resample
    idx = np.random.default_rng(1).integers(0, 300, (1, 300))
    from scipy.stats import rankdata

    yb, sb = y[idx][0], s[idx][0]
    r = rankdata(sb)
    n1 = yb.sum()
    assert (r[yb == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(yb) - n1)) == pytest.approx(
        roc_auc_score(yb, sb)
    )
    assert all(math.isnan(v) for v in auc_bootstrap_ci(np.ones(5), np.arange(5.0), seed=0))


def test_clean_number_makes_json_safe_values():
    assert clean_number(float("nan")) is None and clean_number(np.float32(0.5)) == 0.5
    assert clean_number(np.int64(3)) == 3 and isinstance(clean_number(np.int64(3)), int)
    assert clean_number(None) is None and clean_number("x") == "x"
