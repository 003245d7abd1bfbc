"""The catalogue's per-item statistics (what the explainer's prompt states about its target), on hand-made
frames: the training formula of `expctr.data.pairs.target_stats`, over every training rating."""

from __future__ import annotations

import polars as pl
import pytest

from expctr.serving.bundle import item_stats


def test_item_stats_count_every_training_rating_with_the_training_prior():
    items = pl.DataFrame({"item_code": [0, 1, 2], "item_id": ["a", "b", "never rated"]},
                         schema={"item_code": pl.Int32, "item_id": pl.String})
    # item 0: 3 ratings (2 clicks), two of them in the same second, the last at the latest training time
    train = pl.DataFrame({"item_code": [0, 0, 0, 1], "timestamp": [10, 20, 20, 15], "label": [1, 0, 1, 0]},
                         schema={"item_code": pl.Int32, "timestamp": pl.Int64, "label": pl.Int8})
    g = 2 / 4  # the training click rate: the prior the shares shrink towards (weight 10, as in training)
    got = {r["item_id"]: (r["viewers"], r["liked_share"]) for r in item_stats(items, train).iter_rows(named=True)}
    assert got["a"] == (3, pytest.approx((2 + 10 * g) / (3 + 10)))
    assert got["b"] == (1, pytest.approx((0 + 10 * g) / (1 + 10)))
    assert got["never rated"] == (0, pytest.approx(g))  # the prompt says "Nobody has rated it yet."


def test_without_target_stats_the_catalogue_states_nothing():
    items = pl.DataFrame({"item_code": [0], "item_id": ["a"]})
    got = item_stats(items, None).row(0, named=True)
    assert got == {"item_id": "a", "viewers": None, "liked_share": None}
