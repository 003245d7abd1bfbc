"""The format reward: penalties for what makes an explanation a bad one, judged without a model."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from expctr.llm.explanations import completion_text, prefixes, prompt_text, stance
from expctr.llm.generation import first_sentence

_WORD_RE = re.compile(r"[a-z0-9]+")
# A rendered item: "Title" optionally followed by its "(year; genres)" - data the explanation may cite.
_ITEM_RE = re.compile(r'"[^"\n]*"(?:\s*\([^()\n]*\))?')


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def copied_ngram(completion: str, prompt: str, n: int = 8) -> bool:
    """True if `completion` contains a run of `n` words of the prompt's own text (items excluded).

    Item titles and their "(year; genres)" are cut out of the prompt first (quoted data the explanation
    may legitimately name); a run never spans a cut.
    """
    prompt_grams: set[tuple[str, ...]] = set()
    for segment in _ITEM_RE.split(prompt):
        prompt_grams |= _ngrams(_words(segment), n)
    return bool(prompt_grams) and not prompt_grams.isdisjoint(_ngrams(_words(completion), n))


class FormatReward:
    """0 for a good one-sentence verdict with a grounded reason, else the sum of the penalties that apply
    (DEFAULT_PENALTIES).

    empty: no letters or digits at all (alone: the other checks are skipped); multi_sentence: anything with a
    letter or digit after the first sentence; no_verdict: `stance(first sentence) == 0`; copy: the whole
    completion shares a `copy_ngram`-word run with the prompt's own text (`copied_ngram`); too_long: the
    first sentence has more than `max_words` words. With the pair's `history` and `target` (TRL passes them as
    columns): ungrounded: the reason names no history item and no genre the target shares with the history
    (`expctr.evaluation.grounding`); outside_title: a quoted span names neither a history item nor the target
    (an invented title, or prompt text quoted as one; `faithfulness.quoted_outside`).
    """

    DEFAULT_PENALTIES: ClassVar[dict[str, float]] = {
        "empty": -2.0, "multi_sentence": -0.5, "no_verdict": -1.0, "copy": -1.0, "too_long": -0.5,
        "ungrounded": -0.5, "outside_title": -1.0}

    def __init__(self, penalties: Mapping[str, float] | None = None, copy_ngram: int = 8, max_words: int = 50,
                 name: str = "format_reward"):
        unknown = set(penalties or {}) - set(self.DEFAULT_PENALTIES)
        if unknown:
            raise ValueError(f"unknown format penalties {sorted(unknown)}")
        self.penalties = {**self.DEFAULT_PENALTIES, **(penalties or {})}
        self.copy_ngram, self.max_words, self.__name__ = int(copy_ngram), int(max_words), name

    def violations(self, completion: Any, prompt: Any = "", prefix: str | None = None, history=None,
                   target=None) -> list[str]:
        """The names of the checks a completion fails (empty list = a good explanation)."""
        text = completion_text(completion, prefix).strip()
        if not _words(text):
            return ["empty"]
        sentence = first_sentence(text)
        out = []
        if _words(text[len(sentence):]):
            out.append("multi_sentence")
        if stance(sentence) == 0:
            out.append("no_verdict")
        if copied_ngram(text, prompt_text(prompt), self.copy_ngram):
            out.append("copy")
        if len(sentence.split()) > self.max_words:
            out.append("too_long")
        if target is not None:
            from expctr.evaluation.faithfulness import quoted_outside
            from expctr.evaluation.grounding import grounded

            if not grounded(sentence, history or [], target):
                out.append("ungrounded")
            if quoted_outside(sentence, history or [], target):
                out.append("outside_title")
        return out

    def score(self, completion: Any, prompt: Any = "", prefix: str | None = None, history=None,
              target=None) -> float:
        return float(sum(self.penalties[v] for v in self.violations(completion, prompt, prefix, history, target)))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        history = kwargs.get("history") or [None] * n
        target = kwargs.get("target") or [None] * n
        return [self.score(c, p, pre, h, t)
                for p, c, pre, h, t in zip(prompts, completions, prefixes(kwargs, n), history, target)]
