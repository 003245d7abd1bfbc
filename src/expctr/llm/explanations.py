"""What an explanation is, as text: the completion a policy wrote, the sentence that is shipped, its stance.

Shared by the RL rewards, the round evaluation and serving's checks: TRL hands completions over as strings,
message dicts or lists of messages; every consumer reads them through `completion_text`, ships the first
sentence (`explanation_of`), and reads the verdict a sentence states with `stance`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from expctr.llm.generation import first_sentence

# --- completions and prompts as TRL passes them -------------------------------------------------------------

def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content blocks: [{"type": "text", "text": ...}, ...]
        return "".join(str(b.get("text") or "") if isinstance(b, Mapping) else str(b) for b in content)
    return str(content)


def completion_text(completion: Any, prefix: str | None = None) -> str:
    """The text of one completion: a string, a message dict, or a list of messages (assistant turns).

    With `prefix` (the dataset's `explanation_prefix`: the assistant text the policy continued, e.g.
    "The user will probably"), the prefix is put back so the explanation reads as one sentence."""
    if isinstance(completion, str):
        text = completion
    elif isinstance(completion, Mapping):
        text = _content_text(completion.get("content"))
    elif isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        text = ("".join(str(m) for m in completion) if not msgs else
                "".join(_content_text(m.get("content")) for m in msgs if m.get("role", "assistant") == "assistant"))
    else:
        text = "" if completion is None else str(completion)
    if prefix:
        text = prefix + text if text[:1].isspace() or text[:1] in ".,;:!?" else f"{prefix} {text}"
    return text


def prefixes(kwargs: Mapping[str, Any], n: int) -> list[str | None]:
    """The per-completion `explanation_prefix` column (None each when the dataset has no prefix)."""
    col = kwargs.get("explanation_prefix")
    return [None] * n if col is None else list(col)


def prompt_text(prompt: Any) -> str:
    """The text of one prompt: a rendered string, or a list of chat messages (contents joined by newlines)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        return _content_text(prompt.get("content"))
    if isinstance(prompt, Sequence):
        return "\n".join(_content_text(m.get("content")) if isinstance(m, Mapping) else str(m)
                         for m in prompt)
    return "" if prompt is None else str(prompt)


def explanation_of(completion: Any, prefix: str | None = None) -> str:
    """What the explainer ships for a completion: its first sentence (prefix put back)."""
    return first_sentence(completion_text(completion, prefix))



# --- stance ------------------------------------------------------------------------------------------------

_VERB = r"(?:enjoy|like|love|appreciate|be\s+(?:interested|drawn|a\s+fan|into))"
_ADV = (r"(?:(?:probably|likely|most\s+likely|very\s+likely|definitely|almost\s+certainly|certainly|surely|really|"
        r"also|still|much|somewhat|mildly|maybe|perhaps)\s+)*")
_NEG_PATTERNS = (
    rf"\b(?:will|would|does|do|did|could|can|may|might|should|is\s+going\s+to)\s+{_ADV}not\s+{_ADV}{_VERB}\b",
    rf"\b(?:won't|wouldn't|doesn't|don't|can't|cannot|shouldn't|isn't\s+going\s+to)\s+{_ADV}{_VERB}\b",
    rf"\b(?:unlikely|not\s+likely|not\s+going)\s+to\s+{_ADV}{_VERB}\b",
    r"\b(?:will|would)\s+(?:probably\s+|likely\s+|most\s+likely\s+)?(?:dislike|hate)\b",
)
_POS_PATTERNS = (
    rf"\b(?:will|would|should|is\s+going\s+to|likely\s+to|bound\s+to|sure\s+to)\s+{_ADV}{_VERB}\b",
)
_NEG_RE = re.compile("|".join(_NEG_PATTERNS), re.IGNORECASE)
_POS_RE = re.compile("|".join(_POS_PATTERNS), re.IGNORECASE)


def stance(text: str) -> int:
    """+1 if `text` states the user will like/enjoy the target, -1 if it states they will not, 0 if neither.

    A verdict is a modal + liking verb ("will probably enjoy", "would love", "is likely to like") or its
    negation ("will probably not enjoy", "won't like", "unlikely to enjoy", "will dislike"). The EARLIEST
    verdict in the text decides (the explainer is asked to open with it), so a reason that mentions the
    past ("... although they didn't like Heat") does not flip it; at the same position the negation wins.
    Bare "like" (as in "movies like Heat") and statements about the past are not verdicts.
    """
    t = str(text).replace("\u2019", "'").replace("\u2018", "'")
    neg, pos = _NEG_RE.search(t), _POS_RE.search(t)
    if neg is None and pos is None:
        return 0
    if pos is None:
        return -1
    if neg is None:
        return 1
    return -1 if neg.start() <= pos.start() else 1


__all__ = ["completion_text", "explanation_of", "prefixes", "prompt_text", "stance"]
