"""Faithfulness of explanations: does an explanation name a movie the user's context never showed?

An explanation is *unfaithful* when it names a catalogue title that is neither one of the pair's history
items nor its target (the explainer saw only those). Titles are matched against the whole item catalogue,
robustly and conservatively (a false "hallucination" flag is worse than a missed one):

Normalisation (:func:`tokens`): Unicode accents folded, lower case, apostrophes and quotes dropped
(``Bug's`` -> ``bugs``), ``&`` read as ``and``, every other non-alphanumeric character a word break — so
case, punctuation and whitespace never matter. Each catalogue title yields *keys* (:func:`title_keys`):

- the MovieLens article suffix is undone and the article dropped (``Matrix, The`` / ``The Matrix`` ->
  ``matrix``; also foreign ``, La`` / ``, Les`` / ``, L'`` / ``, Der`` ...); a *leading* English article
  (the / a / an) is dropped too, foreign leading words are kept (``Die Hard``, ``La Bamba``);
- a trailing ``(1999)`` year is ignored; alternative titles in trailing parentheses
  (``Seven (Se7en)``, ``Boat, The (Das Boot)``, ``a.k.a. ...``) and the parts before and after a colon
  (``Star Wars: Episode IV - A New Hope`` -> ``star wars``; ``Homeward Bound: The Incredible Journey`` ->
  ``incredible journey``) are keys of the same item.

Reliability rule (which keys may be matched where):

- **strong** key: at least two words, at least one of them not in :data:`COMMON_WORDS` (English stop
  words, genre names and the words explanations are made of: user, movie, enjoy, ...), and at least four
  letters/digits in all. Matched anywhere in the text as whole words, year optional, when it is quoted,
  followed by its year, or written like a title: at least one of its words capitalised in the text
  (``The Usual Suspects``, ``usual suspects, the (1995)``, ``"the usual suspects"`` — but not a lower-case
  phrase such as "its heavy-metal soundtrack", which is not the film *Heavy Metal*).
- **weak** key: everything else — single words (``Heat``, ``Big``, ``Seven``, ``Titanic``, ``The Game``
  -> ``game``) and titles made only of common words (``Only You``, ``Love Story``). A weak key counts only
  when the explanation marks it as a title: the whole content of a quoted span (``"Heat"``, ``'Heat'``,
  ``“Heat”``) or followed directly by that item's release year (``Heat (1995)``, ``Game, The 1997``).
- keys of fewer than two letters/digits are never matched (``M``, or a title of only punctuation), nor
  keys made only of genre names (``Romance``: the prompt lists genres, so naming one is not a title).

Invented titles: a title that is in no catalogue cannot be recognised in free text, but a *quoted* one can:
:func:`quoted_outside` lists every quoted span (double, curly or back quotes; single quotes around a
capitalised phrase) that names neither a history item nor the target — invented titles ("The Shawshiels"),
catalogue titles outside the pair, and prompt text quoted as if it were a title ("Movies the user rated
recently, oldest first"). A quoted genre name is not a title. :func:`unseen_mentions` still misses an
unquoted invented title, and the whole history of the pair counts as shown even where the prompt had to drop
its oldest items to fit the token budget; both make the metric err on the lenient side.

Overlapping matches: leftmost-longest (``Die Hard 2`` is one mention, not also ``Die Hard``). A mentioned key
is *seen* when any key of any history item or of the target equals it (so another title of the same key,
e.g. a remake, counts as seen: lenient). Titles are data: they are compared as token sequences, never
compiled into regular expressions, so any text in a title (quotes, regex syntax, "ignore previous
instructions") is just words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

_LEADING_ARTICLES = frozenset({"the", "a", "an"})
# MovieLens moves a title's leading article to the end: "Matrix, The", "Grande Illusion, La", "Enfer, L'"
_SUFFIX_ARTICLE_RE = re.compile(
    r"^(?P<main>.+?),\s*(?P<art>the|a|an|la|le|les|l'|il|el|los|las|lo|das|der|die|den|det|un|une|gli)\s*$",
    re.IGNORECASE,
)
_SUFFIX_ARTICLES = frozenset(
    {
        "the",
        "a",
        "an",
        "la",
        "le",
        "les",
        "l",
        "il",
        "el",
        "los",
        "las",
        "lo",
        "das",
        "der",
        "die",
        "den",
        "det",
    }
    | {"un", "une", "gli"}
)
_YEAR_RE = re.compile(r"\s*\(\s*\d{4}\s*\)\s*$")
_PARENS_RE = re.compile(r"^(?P<main>[^()]*?)\s*(?P<groups>(?:\([^()]*\)?\s*)+)$")
_GROUP_RE = re.compile(r"\(([^()]*)\)?")
_AKA_RE = re.compile(r"^\s*a\.?\s*k\.?\s*a\.?\s*", re.IGNORECASE)
_APOSTROPHES = "'\u2019\u2018`\u00b4\u02bc"
_QUOTED_RES = (
    re.compile(r'"([^"\n]{1,160})"'),
    re.compile("\u201c([^\u201d\n]{1,160})\u201d"),
    re.compile("(?<![0-9A-Za-z])['\u2018]([^'\u2018\u2019\n]{1,160})['\u2019](?![0-9A-Za-z])"),
)
_GENRES = {
    "action",
    "adventure",
    "animation",
    "animated",
    "children",
    "childrens",
    "comedy",
    "comedies",
    "crime",
    "documentary",
    "documentaries",
    "drama",
    "dramas",
    "fantasy",
    "film",
    "noir",
    "horror",
    "musical",
    "musicals",
    "mystery",
    "romance",
    "romantic",
    "sci",
    "fi",
    "scifi",
    "thriller",
    "thrillers",
    "war",
    "western",
    "westerns",
    "family",
    "history",
    "biography",
    "sport",
    "sports",
    "music",
}
_DOMAIN = {
    "user",
    "users",
    "movie",
    "movies",
    "films",
    "story",
    "stories",
    "love",
    "loves",
    "loved",
    "like",
    "likes",
    "liked",
    "dislike",
    "dislikes",
    "disliked",
    "enjoy",
    "enjoys",
    "enjoyed",
    "probably",
    "target",
    "genre",
    "genres",
    "similar",
    "good",
    "great",
    "fun",
    "funny",
    "new",
    "old",
    "time",
    "life",
    "day",
    "year",
    "years",
    "real",
    "true",
    "best",
    "just",
    "dont",
    "wont",
    "doesnt",
    "isnt",
    "reason",
    "because",
    "rated",
    "recently",
    "watch",
    "watched",
    "seen",
    "see",
    "also",
}
COMMON_WORDS: frozenset[str] = frozenset(
    {"".join(c for c in w if c not in _APOSTROPHES) for w in ENGLISH_STOP_WORDS} | _GENRES | _DOMAIN
)
MIN_KEY_CHARS = 2  # keys shorter than this (letters/digits) are never matched
MIN_STRONG_CHARS = 4


def word_tokens(text: Any) -> list[str]:
    """Letter/digit runs of `text` with accents and apostrophes dropped, "&" read as "and" (case kept)."""
    s = unicodedata.normalize("NFKD", str(text))
    s = "".join(c for c in s if not unicodedata.combining(c) and c not in _APOSTROPHES).replace("&", " and ")
    return re.findall(r"[A-Za-z0-9]+", s)


def tokens(text: Any) -> list[str]:
    """Lower-case alphanumeric words of `text`: accents folded, apostrophes dropped, `&` -> `and`."""
    return [w.lower() for w in word_tokens(text)]


def _segment_key(segment: str) -> tuple[str, ...]:
    seg = segment.strip()
    m = _SUFFIX_ARTICLE_RE.match(seg)
    if m:
        seg = m.group("main")
    toks = tokens(seg)
    if len(toks) > 1 and toks[0] in _LEADING_ARTICLES:
        toks = toks[1:]
    return tuple(toks)


def _segments(title: Any) -> list[str]:
    """The title without its year, split into the main title and its parenthesised alternative titles."""
    t = _YEAR_RE.sub("", str(title or "")).strip()
    m = _PARENS_RE.match(t)
    if m and m.group("main").strip():  # "Boat, The (Das Boot)": the main title and each alternative title
        return [m.group("main"), *(_AKA_RE.sub("", g) for g in _GROUP_RE.findall(m.group("groups")))]
    return [t]


def primary_key(title: Any) -> tuple[str, ...]:
    """The key of the title itself (main title, article undone), as opposed to its alternative names."""
    return _segment_key(_segments(title)[0])


def title_keys(title: Any) -> set[tuple[str, ...]]:
    """Every key one title can be named by (see the module docstring); empty keys left out."""
    segments = _segments(title)
    for seg in list(segments):
        if ":" in seg:  # "Homeward Bound: The Incredible Journey" is also named by either part
            segments += seg.split(":", 1)
    return {k for k in (_segment_key(s) for s in segments) if k}


def key_chars(key: Sequence[str]) -> int:
    return sum(len(w) for w in key)


def is_strong(key: Sequence[str]) -> bool:
    """A key reliable enough to match anywhere in free text (see the module docstring)."""
    return len(key) >= 2 and key_chars(key) >= MIN_STRONG_CHARS and any(w not in COMMON_WORDS for w in key)


@dataclass(frozen=True)
class Mention:
    """One title named by an explanation: its key, how it was found and the catalogue titles it stands for."""

    key: tuple[str, ...]
    how: str  # "text" (strong key), "quoted" or "year"
    titles: tuple[str, ...]

    @property
    def title(self) -> str:
        return self.titles[0] if self.titles else " ".join(self.key)


@dataclass
class TitleIndex:
    """Catalogue titles by key, for finding the titles a text names."""

    titles: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    years: dict[tuple[str, ...], frozenset[str]] = field(default_factory=dict)
    max_len: int = 0

    @classmethod
    def from_catalogue(cls, titles: Iterable[Any], years: Iterable[Any] | None = None) -> TitleIndex:
        titles = list(titles)
        years = list(years) if years is not None else [None] * len(titles)
        by_key: dict[tuple[str, ...], set[str]] = {}
        by_year: dict[tuple[str, ...], set[str]] = {}
        for title, year in zip(titles, years):
            if title is None:
                continue
            for key in title_keys(title):
                if key_chars(key) < MIN_KEY_CHARS or all(w in _GENRES for w in key):
                    continue  # too short, or a genre name the prompt lists anyway ("Romance")
                by_key.setdefault(key, set()).add(str(title))
                if year is not None and str(year).strip().lstrip("-").isdigit():
                    by_year.setdefault(key, set()).add(str(int(year)))
        # a key's own title first ("Incredible Journey, The" before "Homeward Bound: The Incredible Journey")
        index = cls(
            {k: tuple(sorted(v, key=lambda t, k=k: (primary_key(t) != k, t))) for k, v in by_key.items()},
            {k: frozenset(v) for k, v in by_year.items()},
        )
        index.max_len = max((len(k) for k in index.titles), default=0)
        return index

    def __len__(self) -> int:
        return len(self.titles)

    def mentions(self, text: Any) -> list[Mention]:
        """Titles `text` names, in order of first appearance, each key once."""
        found: dict[tuple[str, ...], Mention] = {}
        spans: list[tuple[int, Mention]] = []
        for rx in _QUOTED_RES:
            for m in rx.finditer(str(text)):
                for key in sorted(title_keys(m.group(1)), key=lambda k: (-len(k), k)):  # fullest first
                    if key in self.titles:
                        spans.append((m.start(), Mention(key, "quoted", self.titles[key])))
                        break
        words = word_tokens(text)
        toks = [w.lower() for w in words]
        capital = [w[:1].isupper() for w in words]
        i, pos = 0, []
        while i < len(toks):
            step = 1
            for n in range(min(self.max_len, len(toks) - i), 0, -1):
                key = tuple(toks[i : i + n])
                if key not in self.titles:
                    continue
                years = self.years.get(key, ())
                j = i + n + (i + n < len(toks) and toks[i + n] in _SUFFIX_ARTICLES)  # "suspects, the (1995)"
                if j < len(toks) and toks[j] in years:
                    how = "year"
                elif is_strong(key) and any(capital[i : i + n]):
                    how = "text"
                else:
                    continue
                pos.append((i, Mention(key, how, self.titles[key])))
                step = n
                break
            i += step
        # quoted spans first (character order), then word matches (word order): stable and deterministic
        for _, mention in sorted(spans, key=lambda s: s[0]) + pos:
            found.setdefault(mention.key, mention)
        return list(found.values())


def allowed_keys(history: Iterable[Any] | None, target: Any | None) -> set:
    """Keys of every title the pair showed: its history items and its target (mappings or Items)."""
    keys: set[tuple[str, ...]] = set()
    items = list(history) if history is not None else []
    for item in [*items, *([target] if target is not None else [])]:
        if item is not None:
            keys |= title_keys(item.get("title") if isinstance(item, Mapping) else getattr(item, "title", None))
    return keys


def unseen_mentions(index: TitleIndex, text: Any, history, target) -> list[Mention]:
    """Catalogue titles `text` names that are neither in `history` nor the `target`."""
    allowed = allowed_keys(history, target)
    return [m for m in index.mentions(text) if m.key not in allowed]


_TITLE_QUOTES = (
    re.compile(r'"([^"\n]{1,160})"'),
    re.compile("\u201c([^\u201d\n]{1,160})\u201d"),
    re.compile(r"`([^`\n]{1,160})`"),
    re.compile("(?<![0-9A-Za-z])['\u2018]([A-Z0-9][^'\u2018\u2019\n]{0,159})['\u2019](?![0-9A-Za-z])"),
)


def quoted_spans(text: Any) -> list[str]:
    """The quoted spans of `text` that stand for titles, in order (see the module docstring)."""
    found = []
    for rx in _TITLE_QUOTES:
        found += [(m.start(), m.group(1)) for m in rx.finditer(str(text))]
    return [s for _, s in sorted(found)]


def quoted_outside(text: Any, history, target) -> list[str]:
    """Quoted spans that name neither an item of `history` nor the `target`: invented titles, catalogue
    titles outside the pair, prompt text quoted as a title. Spans made only of genre names are not titles."""
    allowed = allowed_keys(history, target)
    out = []
    for span in quoted_spans(text):
        words = tokens(span)
        if not words or all(w in _GENRES for w in words) or title_keys(span) & allowed:
            continue
        out.append(span.strip())
    return out
