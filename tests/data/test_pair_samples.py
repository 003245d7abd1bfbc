"""LLM pair samples: slates of same-time pairs of one user, and donor pairs for users with one test pair."""

from __future__ import annotations

import polars as pl
import pytest

from expctr.data.pairs import donor_pairs, sample_slates


def frame() -> pl.DataFrame:
    # user a rated 3 items at t=1 and 1 at t=2; user b 2 at t=5; user c 1 at t=9
    return pl.DataFrame({"user_id": ["a", "a", "a", "a", "b", "b", "c"],
                         "item_id": ["i1", "i2", "i3", "i4", "i1", "i5", "i2"],
                         "timestamp": [1, 1, 1, 2, 5, 5, 9], "label": [1, 0, 1, 1, 0, 1, 1]})


def test_slates_are_same_user_same_time_pairs():
    f = frame()
    s = sample_slates(f, 4, 2, seed=0)
    assert s.height == 4 and s.columns == f.columns
    groups = s.group_by("user_id", "timestamp").len()
    assert set(groups["len"]) == {2}
    # only groups with at least 2 rows can be drawn: (a, 1) and (b, 5)
    assert set(zip(groups["user_id"], groups["timestamp"])) == {("a", 1), ("b", 5)}
    assert s.unique(["user_id", "item_id", "timestamp"]).height == 4
    assert sample_slates(f, 4, 2, seed=0).equals(s)
    with pytest.raises(ValueError, match="no user has 3"):
        sample_slates(f.filter(pl.col("user_id") != "a"), 4, 3, seed=0)


def test_donors_only_for_users_with_a_single_pair():
    split = frame()
    pairs = split.filter(pl.col("item_id").is_in(["i1", "i2"]) & pl.col("user_id").is_in(["a", "b", "c"]))
    # a has two pairs (no donor needed); b and c have one each; c has no other row in the split
    d = donor_pairs(pairs, split, seed=0)
    assert d["user_id"].to_list() == ["b"] and d["item_id"].to_list() == ["i5"]
