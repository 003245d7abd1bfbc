"""Is an explanation's reason grounded in the user's own context?

An explanation is *grounded* when its reason names something specific the explainer was shown:

- an item of the user's history (matched like `expctr.evaluation.faithfulness` matches titles: case,
  punctuation, articles and a trailing year do not matter; a one-word or common-word title counts only
  when quoted, followed by its year, or written capitalised after the sentence's first word — "as much as
  The Matrix", not "the heat of the action"), or
- a genre that the target shares with the liked or disliked items ("a crime drama like the ones they
  liked", "comedies"), in any usual spelling (plural, "sci-fi" / "science fiction", "romantic").

Naming the target itself, or the target's own genre list echoed from the prompt (`"Heat" (1995; Action,
Crime)`), grounds nothing: the echo is removed before genres are looked for. Generic reasons ("because of its
similarity to the Liked movies") are not grounded. The history is what the explainer saw (after any
trimming to the prompt budget), as Items or mappings with title, year, genres and liked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expctr.evaluation.faithfulness import COMMON_WORDS, TitleIndex, title_keys, tokens, word_tokens
from expctr.llm.prompts import Item, as_item

# Extra spellings of genre names (after `tokens`): the genre's own words, its plural and these are matched.
GENRE_ALIASES: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {
    ("sci", "fi"): (("scifi",), ("science", "fiction")),
    ("childrens",): (("children",), ("childrens",), ("kids",), ("family",)),
    ("film", "noir"): (("noir",),),
    ("animation",): (("animated",), ("cartoon",), ("cartoons",)),
    ("romance",): (("romantic",), ("romances",)),
    ("comedy",): (("comedies",), ("comedic",), ("funny",)),
    ("drama",): (("dramatic",), ("dramas",)),
    ("horror",): (("scary",),),
    ("mystery",): (("mysteries",), ("mysterious",)),
    ("fantasy",): (("fantasies",), ("fantastical",)),
    ("documentary",): (("documentaries",),),
    ("musical",): (("musicals",),),
    ("thriller",): (("thrillers",), ("thrilling",), ("suspense",)),
    ("war",): (("wartime",),),
    ("western",): (("westerns",),),
    ("action",): (("actionpacked",), ("action", "packed")),
    ("adventure",): (("adventures",), ("adventurous",)),
    ("crime",): (("crimes",), ("criminal",), ("gangster",)),
}
# The prompt's own item metadata, echoed: `"Title" (1995; Genre, Genre)`, `(Genre, Genre)` after a quoted
# title, or any parenthesis that opens with a year.
_METADATA_RE = re.compile(r"(?:(?<=[\"\u201d])\s*\([^()]*\)|\(\s*\d{4}\b[^()]*\))")


@dataclass(frozen=True)
class Grounding:
    """What grounds an explanation: history titles it names, and genres it names that the target shares
    with the history (each with the side it comes from: "liked" / "disliked" / "both")."""

    items: tuple[tuple[str, str], ...]
    genres: tuple[tuple[str, str], ...]

    @property
    def grounded(self) -> bool:
        return bool(self.items or self.genres)

    def sides(self) -> set[str]:
        """The history sides the reason draws on ("liked", "disliked")."""
        out: set[str] = set()
        for _, side in (*self.items, *self.genres):
            out |= {"liked", "disliked"} if side == "both" else {side}
        return out


def genre_forms(genre: str) -> set[tuple[str, ...]]:
    """Word sequences that name `genre` in text: its own words, a plural, and the aliases above."""
    key = tuple(tokens(genre))
    if not key:
        return set()
    forms = {key, (*key[:-1], key[-1] + "s")}
    forms |= set(GENRE_ALIASES.get(key, ()))
    return forms


def _contains(words: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return any(tuple(words[i:i + n]) == tuple(phrase) for i in range(len(words) - n + 1))


def _side(liked: Iterable[bool]) -> str:
    flags = set(liked)
    return "both" if flags == {True, False} else ("liked" if True in flags else "disliked")


def _without_target(text: str, target: Item) -> str:
    """The text with the target's quoted title and every parenthesised metadata echo removed."""
    out = _METADATA_RE.sub(" ", text)
    target_keys = title_keys(target.title)
    for quote in ('"', "\u201c", "\u201d"):
        out = out.replace(quote, '"')
    parts = out.split('"')
    # odd parts are quoted spans; drop the ones that name the target
    return " ".join(p for j, p in enumerate(parts) if not (j % 2 and title_keys(p) & target_keys))


def _capitalised_keys(text: str, keys: Mapping[tuple[str, ...], Any]) -> list[tuple[str, ...]]:
    """Keys written with every word capitalised, not as the text's first word and not only common words
    ("Heat", "The Matrix" mid-sentence): a title in a short list of the user's own items."""
    words = word_tokens(text)
    low = [w.lower() for w in words]
    found = []
    for key in keys:
        if all(w in COMMON_WORDS for w in key):
            continue
        n = len(key)
        for i in range(1, len(low) - n + 1):
            if tuple(low[i:i + n]) == key and all(w[:1].isupper() or w[:1].isdigit() for w in words[i:i + n]):
                found.append(key)
                break
    return found


def grounding(explanation: str, history: Sequence[Item | Mapping[str, Any]],
              target: Item | Mapping[str, Any]) -> Grounding:
    """The history titles and shared genres `explanation` names (see the module docstring)."""
    items = [as_item(h) for h in history]
    tgt = as_item(target)
    text = str(explanation or "")
    target_keys = title_keys(tgt.title)
    by_key: dict[tuple[str, ...], list[Item]] = {}
    for it in items:
        for key in title_keys(it.title):
            if key not in target_keys:
                by_key.setdefault(key, []).append(it)
    index = TitleIndex.from_catalogue([it.title for it in items], [it.year for it in items])
    keys = [m.key for m in index.mentions(text)] + _capitalised_keys(text, by_key)
    named = [(by_key[k][0].title, _side(bool(h.liked) for h in by_key[k])) for k in keys if k in by_key]
    reason = tokens(_without_target(text, tgt))
    shared = []
    for genre in dict.fromkeys(tgt.genres):
        sides = [bool(h.liked) for h in items if genre in h.genres]
        if sides and any(_contains(reason, form) for form in genre_forms(genre)):
            shared.append((genre, _side(sides)))
    return Grounding(tuple(dict.fromkeys(named)), tuple(shared))


def grounded(explanation: str, history: Sequence[Item | Mapping[str, Any]],
             target: Item | Mapping[str, Any]) -> bool:
    """True when the explanation names a history item or a genre the target shares with the history."""
    return grounding(explanation, history, target).grounded


def grounded_rate(explanations: Sequence[str], histories: Sequence[Sequence[Any]], targets: Sequence[Any]
                  ) -> float:
    """Share of explanations that are grounded (NaN for none); for the evaluation report, per round."""
    if not explanations:
        return float("nan")
    flags = [grounded(e, h, t) for e, h, t in zip(explanations, histories, targets, strict=True)]
    return sum(flags) / len(flags)


__all__ = ["GENRE_ALIASES", "Grounding", "genre_forms", "grounded", "grounded_rate", "grounding"]
