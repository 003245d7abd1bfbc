"""The grounded-reason checker on hand-written explanations: history titles, shared genres, generic reasons."""

from __future__ import annotations

import math

import pytest

from expctr.evaluation.grounding import genre_forms, grounded, grounded_rate, grounding
from expctr.llm.prompts import Item

HISTORY = [
    Item("Schindler's List", 1993, ("Drama", "War"), True),
    Item("Matrix, The", 1999, ("Action", "Sci-Fi", "Thriller"), True),
    Item("Heat", 1995, ("Action", "Crime", "Thriller"), False),
    Item("Star Wars: Episode V - The Empire Strikes Back", 1980, ("Action", "Sci-Fi", "War"), False),
    Item("Children of the Corn", 1984, ("Horror",), False),
]
TARGET = Item("Back to the Future", 1985, ("Comedy", "Sci-Fi"))


@pytest.mark.parametrize("text, items, genres", [
    # a history title, however it is written (punctuation, article moved, part before a colon, quotes)
    ('The user will probably enjoy "Back to the Future" because they loved "Schindler\'s List".',
     ["Schindler's List"], []),
    ("The user will probably enjoy it as much as The Matrix.", ["Matrix, The"], []),
    ("The user will probably not enjoy it because they disliked Star Wars.",
     ["Star Wars: Episode V - The Empire Strikes Back"], []),
    ('The user will probably not enjoy it because they disliked "Heat".', ["Heat"], []),
    # a genre the target shares with the history, in its usual spellings
    ("The user will probably enjoy it because they like sci-fi.", [], ["Sci-Fi"]),
    ("The user will probably enjoy it because they like science fiction adventures.", [], ["Sci-Fi"]),
    ("The user will probably enjoy it because it is Sci-Fi like the Matrix, The (1999).",
     ["Matrix, The"], ["Sci-Fi"]),
])
def test_grounded_reasons(text, items, genres):
    g = grounding(text, HISTORY, TARGET)
    assert [t for t, _ in g.items] == items and [x for x, _ in g.genres] == genres
    assert g.grounded and grounded(text, HISTORY, TARGET)


@pytest.mark.parametrize("text", [
    # generic: names neither a title nor a shared genre
    "The user will probably not enjoy \"Back to the Future\" due to its similarity to the Liked movies.",
    "The user will probably enjoy it because of its similarities to the Disliked ones.",
    # only the target, or its genres echoed from the prompt's metadata
    'The user will probably enjoy "Back to the Future" (1985; Comedy, Sci-Fi).',
    'The user will probably enjoy "Back to the Future" (Comedy, Sci-Fi) because it is a classic.',
    # a genre the target does not share with the history (Comedy), or the history has but the target not (War)
    "The user will probably enjoy it because it is a comedy.",
    "The user will probably enjoy it because they like war films.",
    # a one-word history title written as a plain word, and a title outside the history
    "The user will probably not enjoy it because of the heat of the action.",
    "The user will probably enjoy it because they liked Die Hard.",
    "",
])
def test_ungrounded_reasons(text):
    assert not grounded(text, HISTORY, TARGET)


def test_grounding_reports_the_side_of_the_history_it_draws_on():
    assert grounding("They liked Schindler's List.", HISTORY, TARGET).sides() == {"liked"}
    assert grounding('They disliked "Heat".', HISTORY, TARGET).sides() == {"disliked"}
    # Sci-Fi is in a liked (The Matrix) and a disliked (Star Wars) item
    assert grounding("A sci-fi film.", HISTORY, TARGET).genres == (("Sci-Fi", "both"),)


def test_mappings_work_like_items_and_the_target_is_never_its_own_ground():
    history = [{"title": "Back to the Future", "year": 1985, "genres": ["Comedy"], "liked": True}]
    assert not grounded('They liked "Back to the Future".', history, {"title": "Back to the Future", "genres": []})
    assert grounded("A comedy.", history, {"title": "Heat", "genres": "Comedy|Crime"})


def test_genre_forms_and_rate():
    assert ("science", "fiction") in genre_forms("Sci-Fi") and ("childrens",) in genre_forms("Children's")
    assert ("noir",) in genre_forms("Film-Noir") and ("comedies",) in genre_forms("Comedy")
    assert genre_forms("") == set()
    rate = grounded_rate(["They liked Heat (1995).", "Nothing here."], [HISTORY, HISTORY], [TARGET, TARGET])
    assert rate == 0.5 and math.isnan(grounded_rate([], [], []))
