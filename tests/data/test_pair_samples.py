"""LLM pair samples: slates of same-time pairs of one user, and donor pairs for users with one test pair."""

from __future__ import annotations

import polars as pl
import pytest

from expctr.data.pairs import donor_pairs, known_user_share, sample_slates
from expctr.explainer.rounds import stage_sample


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


def test_known_share_draws_that_share_of_slates_from_users_the_id_model_knows():
    # 6 users with 2 same-time pairs each; users u0-u3 are known to the ID model (user_idx > OOV = 1)
    f = pl.DataFrame({"user_id": [f"u{k}" for k in range(6) for _ in (0, 1)], "timestamp": [7] * 12,
                      "item_id": [f"i{k}" for k in range(12)], "user_idx": [k + 2 if k < 4 else 1 for k in range(6)
                                                                           for _ in (0, 1)]})
    assert known_user_share(f) == pytest.approx(8 / 12)
    for share, known, new in ((0.5, 2, 2), (1.0, 4, 0), (0.0, 0, 2)):  # only 2 slates of unknown users exist
        s = sample_slates(f, 8, 2, seed=3, known_share=share)
        assert (s["user_idx"] != 1).sum() == 2 * known and (s["user_idx"] == 1).sum() == 2 * new
        assert set(s.group_by("user_id").len()["len"]) == {2}
    # a share the known users cannot fill takes what there is (4 slates of 2 from 4 known users)
    assert (sample_slates(f, 12, 2, seed=3, known_share=1.0)["user_idx"] != 1).sum() == 8
    with pytest.raises(ValueError, match="known_share"):
        sample_slates(f, 4, 2, seed=0, known_share=1.5)


def test_stage_sample_keeps_slates_whole():
    f = frame().filter(pl.col("timestamp") != 2)  # a pool of slates: (a, 1) x3, (b, 5) x2, (c, 9) x1
    s = stage_sample(f, 4, seed=0, slate=2)
    assert s.height in (3, 4, 5) and s.group_by("user_id", "timestamp", maintain_order=True).len()["len"].to_list() == [
        f.filter((pl.col("user_id") == u) & (pl.col("timestamp") == t)).height
        for u, t in s.unique(["user_id", "timestamp"], maintain_order=True).select("user_id", "timestamp").rows()]
    assert stage_sample(f, 4, seed=0, slate=2).equals(s)
    assert stage_sample(f, 4, seed=0).height == 4  # plain pairs without slates


def test_donors_only_for_users_with_a_single_pair():
    split = frame()
    pairs = split.filter(pl.col("item_id").is_in(["i1", "i2"]) & pl.col("user_id").is_in(["a", "b", "c"]))
    # a has two pairs (no donor needed); b and c have one each; c has no other row in the split
    d = donor_pairs(pairs, split, seed=0)
    assert d["user_id"].to_list() == ["b"] and d["item_id"].to_list() == ["i5"]
