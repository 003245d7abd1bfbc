"""ExpCTR-Aug's slate folds: whole slates per fold, every slate in exactly one, sizes within one slate, seeded."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from expctr.errors import ExpCTRError
from expctr.explainer.aug_stage import slate_folds


def _frame() -> pl.DataFrame:
    # 7 slates (user, timestamp) of 1-3 pairs each
    users = ["a", "a", "a", "b", "b", "c", "a", "d", "d", "d", "e", "f", "f"]
    times = [1, 1, 1, 5, 5, 2, 9, 3, 3, 3, 4, 8, 8]
    return pl.DataFrame({"user_id": users, "timestamp": times})


def test_folds_keep_slates_whole_and_balanced():
    frame = _frame()
    fold = slate_folds(frame, 3, seed=0)
    keys = [f"{u}|{t}" for u, t in zip(frame["user_id"], frame["timestamp"])]
    by_slate = {}
    for k, f in zip(keys, fold.tolist()):
        by_slate.setdefault(k, set()).add(f)
    assert all(len(fs) == 1 for fs in by_slate.values())  # a slate never straddles folds
    per_fold = np.bincount([next(iter(fs)) for fs in by_slate.values()], minlength=3)
    assert sorted(per_fold.tolist()) == [2, 2, 3]  # 7 slates over 3 folds
    np.testing.assert_array_equal(fold, slate_folds(frame, 3, seed=0))
    assert any(not np.array_equal(fold, slate_folds(frame, 3, seed=s)) for s in range(1, 6))


def test_more_folds_than_slates_is_a_clear_error():
    with pytest.raises(ExpCTRError, match="7 slates cannot fill 8 folds"):
        slate_folds(_frame(), 8, seed=0)
