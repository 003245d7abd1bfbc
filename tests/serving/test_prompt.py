"""The served opening on hand-written histories (no model): which history item anchors the reason."""

from __future__ import annotations

from expctr.llm.prompts import Item
from expctr.serving.prompt import reason_anchor, served_opening

TARGET = Item("Heat", 1995, ("Action", "Crime", "Thriller"))
HISTORY = [  # oldest first
    Item("Fargo", 1996, ("Crime", "Drama", "Thriller"), True),
    Item("Toy Story", 1995, ("Animation", "Comedy"), True),
    Item("Speed", 1994, ("Action", "Romance", "Thriller"), True),
    Item("Casper", 1995, ("Children's", "Comedy"), False),
    Item("Drop Zone", 1994, ("Action",), False),
]


def test_anchor_is_the_verdicts_side_item_sharing_most_genres_latest_on_a_tie():
    assert reason_anchor(HISTORY, TARGET, True).title == "Speed"  # Fargo and Speed share two; Speed is later
    assert reason_anchor(HISTORY, TARGET, False).title == "Drop Zone"
    comedy = Item("Airplane!", 1980, ("Comedy",))
    assert reason_anchor(HISTORY, comedy, False).title == "Casper"
    western = Item("Unforgiven", 1992, ("Western",))
    assert reason_anchor(HISTORY, western, True).title == "Speed"  # none shares a genre: the latest liked
    assert reason_anchor([h for h in HISTORY if h.liked], TARGET, False) is None  # nothing disliked
    assert reason_anchor([], TARGET, True) is None


def test_openings():
    speed, western = HISTORY[2], Item("Unforgiven", 1992, ("Western",))
    # the verdict is worded by the score it was chosen from
    assert served_opening(0.7, TARGET, speed) == 'The user will probably enjoy "Heat" because, like "Speed",'
    assert served_opening(0.93, western, speed) == ('The user will surely enjoy "Unforgiven" because, '
                                                    'as with "Speed",')
    assert served_opening(0.3, TARGET, None) == 'The user will likely not enjoy "Heat" because'
    assert served_opening(0.45, TARGET, speed, "verdict") == ('The user will probably not enjoy "Heat", though it '
                                                              "could go either way")
