"""Openings on hand-written histories: which history item anchors the reason, and the quote-free reason."""

from __future__ import annotations

from expctr.llm.openings import QUOTE_CHARS, opened_explanation, opening_for, quote_token_ids, reason_anchor
from expctr.llm.prompts import Item

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
    assert opened_explanation(0.7, TARGET, speed) == 'The user will probably enjoy "Heat" because, like "Speed",'
    assert opened_explanation(0.93, western, speed) == ('The user will definitely enjoy "Unforgiven" because, '
                                                        'as with "Speed",')
    assert opened_explanation(0.3, TARGET, None) == 'The user will maybe not enjoy "Heat" because'
    assert opened_explanation(0.45, TARGET, speed, "verdict") == ('The user will probably not enjoy "Heat", but it '
                                                                  "is a close call")
    # the anchor is chosen on the side the confidence states, from the history given
    assert opening_for(0.2, HISTORY, TARGET) == ('The user will likely not enjoy "Heat" because, like "Drop Zone",',
                                                 HISTORY[4])
    assert opening_for(0.2, HISTORY, TARGET, "verdict") == ('The user will likely not enjoy "Heat"', None)


def test_quote_free_reason_bans_every_token_holding_a_title_quote(base_model_dir):
    from expctr.llm.base_model import load_tokenizer

    tok = load_tokenizer(base_model_dir)
    banned = set(quote_token_ids(tok))
    for text in ('"', ' "', '."', '“', '”', '`'):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert any(i in banned for i in ids), text
    texts = tok.batch_decode([[i] for i in sorted(banned)])
    assert all(any(q in t for q in QUOTE_CHARS) for t in texts)
    for word in (" Heat", " because", ",", ".", " like", "'s"):  # plain words and apostrophes stay allowed
        assert not set(tok(word, add_special_tokens=False)["input_ids"]) & banned, word
