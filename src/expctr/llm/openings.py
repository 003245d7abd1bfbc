"""How an explanation's assistant turn is opened before the explainer writes its reason, in every path.

The pipeline (RL reason steps, the rounds' explanations that ExpCTR-LLM and the report read) and the service
open the explainer's turn the same way, so what is trained, evaluated and served is one kind of sentence:

- `verdict`:  the graded verdict (`expctr.llm.verdicts.verdict_opening`: "The user will surely enjoy "Heat"");
  the explainer writes the rest;
- `anchored`: that verdict, `because` and a history item on the verdict's side (`reason_anchor`: liked for
  "enjoy", disliked for "not enjoy", the one sharing most genres with the target): `, like "That Item",` (or
  `, as with "That Item",` when none shares a genre); the explainer writes the reason from there.

Why anchored: left to itself the 135M explainer named a history item or a shared genre in about half of its
reasons (36 % grounded in the pipeline's round 3) and often quoted a history title where the target belongs;
opened at the anchor, the reason starts from an item the user actually rated.

The reason itself is written without quotation marks (`quote_token_ids`, banned while decoding after the
opening): the only quoted titles of an explanation are the target and the anchor, which are written from the
user's own data, so a reason cannot quote a title the user never saw. Unquoted catalogue titles are still
caught by the faithfulness check (`expctr.evaluation.faithfulness.unseen_mentions`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Literal

from expctr.llm.prompts import MAX_TITLE_CHARS, Item, sanitize_text
from expctr.llm.verdicts import verdict_opening

Opening = Literal["verdict", "anchored"]
QUOTE_CHARS = ('"', "\u201c", "\u201d", "`")  # what `quoted_spans` reads as title quotes (bar single quotes)


def reason_anchor(history: Sequence[Item], target: Item, positive: bool) -> Item | None:
    """The history item a reason for this verdict starts from: on the verdict's side (liked for "enjoy",
    disliked for "not enjoy"), sharing the most genres with the target, the most recent on a tie (so the most
    recent of that side when none shares a genre); None when the user has no item on that side."""
    wanted = set(target.genres)
    best, best_shared = None, -1
    for item in history:  # oldest first: a later item wins a tie
        shared = len(set(item.genres) & wanted)
        if item.liked == positive and shared >= best_shared:
            best, best_shared = item, shared
    return best


def opened_explanation(p: float, target: Item, anchor: Item | None, opening: Opening = "anchored") -> str:
    """The whole assistant opening the explainer continues (see the module docstring): the verdict worded by
    the confidence `p`, then for `anchored` `because, like "X",` when the anchor shares a genre with the target,
    `because, as with "X",` when it shares none, and a bare `because` without an anchor."""
    text = verdict_opening(p, target)
    if opening == "verdict":
        return text
    text += " because"
    if anchor is not None:
        link = "like" if set(anchor.genres) & set(target.genres) else "as with"
        text += f', {link} "{sanitize_text(anchor.title, MAX_TITLE_CHARS) or "untitled"}",'
    return text


def opening_for(p: float, history: Sequence[Item], target: Item, opening: Opening = "anchored"
                ) -> tuple[str, Item | None]:
    """(the opening at confidence p, its anchor): the anchor chosen from the history the explainer saw."""
    anchor = reason_anchor(history, target, p >= 0.5) if opening == "anchored" else None
    return opened_explanation(p, target, anchor, opening), anchor


_QUOTE_IDS: weakref.WeakKeyDictionary[object, tuple[int, ...]] = weakref.WeakKeyDictionary()


def quote_token_ids(tokenizer) -> list[int]:
    """Every token id whose text contains a title quote (`QUOTE_CHARS`): banned in the free reason (computed
    once per tokenizer)."""
    if tokenizer not in _QUOTE_IDS:
        ids = sorted(tokenizer.get_vocab().values())
        texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
        _QUOTE_IDS[tokenizer] = tuple(i for i, t in zip(ids, texts) if any(q in t for q in QUOTE_CHARS))
    return list(_QUOTE_IDS[tokenizer])


__all__ = ["QUOTE_CHARS", "Opening", "opened_explanation", "opening_for", "quote_token_ids", "reason_anchor"]
