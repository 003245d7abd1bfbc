"""The guarantees every served explanation is checked against (and flagged by, when it still fails).

- complete: exactly one sentence, ended by its own punctuation — never a fragment cut at the token cap;
- faithful: every title it names or quotes is the user's history or the target — a catalogue title outside
  the pair (`unseen_mentions`), an invented title or prompt text in quotes (`quoted_outside`) all fail;
- grounded: its reason names a history item or a genre the target shares with the history
  (`expctr.evaluation.grounding`).

The trust benchmark recomputes the same checks from the served text, so a flag and a measurement mean the
same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expctr.evaluation.faithfulness import TitleIndex, quoted_outside, unseen_mentions
from expctr.evaluation.grounding import grounded
from expctr.llm.explanations import explanation_of
from expctr.llm.generation import sentence_end
from expctr.llm.prompts import Item

_ENDS_SENTENCE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*$")


def is_one_complete_sentence(text: str) -> bool:
    """One sentence that ends with . ! or ? (closing quotes allowed), nothing after it, and every quoted
    title closed (`enjoy "L.A.` is a fragment, not a sentence)."""
    t = str(text or "").strip()
    closed = t.count('"') % 2 == 0 and t.count("\u201c") == t.count("\u201d")
    return (bool(t) and "\n" not in t and closed and bool(_ENDS_SENTENCE.search(t))
            and sentence_end(t, final=True) == len(t))


def finished_text(raw: str, prefix: str, stopped_by_itself: bool) -> str:
    """The explanation a generation row ships: the prefix put back, its first sentence, and a full stop added
    when the model ended the sentence itself (eos or a line break) without one. A row cut at the token cap
    keeps its fragment, so the `complete` check fails and the guard retries it."""
    text = explanation_of(raw, prefix)
    if stopped_by_itself and text and not _ENDS_SENTENCE.search(text):
        text = text.rstrip(" ,;:-") + "."
    return text


@dataclass(frozen=True)
class ExplanationChecks:
    complete: bool
    faithful: bool
    grounded: bool

    @property
    def passed(self) -> bool:
        return self.complete and self.faithful and self.grounded

    @property
    def score(self) -> int:
        """How many checks pass (the better of two tries is the one with more)."""
        return int(self.complete) + int(self.faithful) + int(self.grounded)


def check_explanation(text: str, history: Sequence[Item | Mapping[str, Any]], target: Item | Mapping[str, Any],
                      index: TitleIndex) -> ExplanationChecks:
    """All three guarantees for one explanation of (history the explainer saw, target)."""
    return ExplanationChecks(
        complete=is_one_complete_sentence(text),
        faithful=not unseen_mentions(index, text, history, target) and not quoted_outside(text, history, target),
        grounded=grounded(text, history, target),
    )


__all__ = ["ExplanationChecks", "check_explanation", "finished_text", "is_one_complete_sentence"]
