"""The target's reception stated in the prompt: counted from training ratings strictly before the pair's time."""

from __future__ import annotations

import polars as pl
import pytest

from expctr.data.pairs import target_stats
from expctr.llm.prompts import Item, explainer_messages


def test_counts_only_earlier_training_ratings_of_the_same_item():
    train = pl.DataFrame({"item_code": [1, 1, 1, 1, 2], "timestamp": [10, 20, 20, 30, 5], "label": [1, 0, 1, 1, 0]})
    pairs = pl.DataFrame({"item_code": [1, 1, 1, 1, 2, 3], "timestamp": [10, 20, 25, 99, 6, 50], "x": list("abcdef")})
    out = target_stats(pairs, train, prior_weight=0.0)
    assert out["x"].to_list() == list("abcdef")  # input order kept
    # t=10: nothing before (its own rating is not counted); t=20: one rating (t=10, liked); t=25: both ratings
    # of second 20 count -> 3 ratings, 2 liked; t=99: all 4, 3 liked; item 2 at t=6: one (disliked); item 3: none
    assert out["viewers"].to_list() == [0, 1, 3, 4, 1, 0]
    shares = out["liked_share"].to_list()
    assert shares[1:5] == pytest.approx([1.0, 2 / 3, 3 / 4, 0.0])
    g = 0.6  # the training click rate: with a prior weight, shares shrink toward it and unseen items get it
    shrunk = target_stats(pairs, train, prior_weight=10.0)["liked_share"].to_list()
    assert shrunk[0] == pytest.approx(g) and shrunk[3] == pytest.approx((3 + 10 * g) / 14)


def test_the_prompt_states_the_reception():
    hist = [Item("Heat", 1995, ("Action",), True)]
    text = explainer_messages(hist, Item("Fargo", 1996, ("Crime",), viewers=1204, liked_share=0.716))[1]["content"]
    assert 'Target: "Fargo" (1996; Crime). Liked by 72% of its 1204 viewers so far.' in text
    assert "Nobody has rated it yet." in explainer_messages(hist, Item("New", viewers=0, liked_share=0.6))[1]["content"]
    assert "viewers" not in explainer_messages(hist, Item("Fargo"))[1]["content"]
    row = {"title": "Fargo", "year": 1996, "genres": ["Crime"], "viewers": 3, "liked_share": float("nan")}
    assert "Nobody has rated it yet." in explainer_messages(hist, row)[1]["content"]
