"""The explainer prompt a served explanation is written from (shared by the predictor and the trust bench).

Built only from `expctr.llm.prompts` and `expctr.llm.verdicts`, so the served prompt is the trained one token
for token: the history is the one training keeps (`fitted_history`, which never depends on the target, so
one user's candidates share everything before the target line and it is prefilled once), the prompt ends with
EXPLANATION_PREFIX (where the explainer's verdict logit is read, as in training), and the assistant turn then
goes on with the opening the service chose (`served_opening`):

- `verdict`:  the verdict the score chose, worded by that score (`verdict_opening`: "The user will surely enjoy
  "Heat""); the explainer writes the rest.
- `anchored`: that verdict, `because` and a history item on the verdict's side (`reason_anchor`: the one
  sharing most genres with the target): `, like "That Item",` (or `, as with "That Item",` when none shares
  a genre); the explainer writes the reason from there. Measured on the served pair (bench/trust_bench.py,
  bench/opening_bench.py, README): the small explainer left to itself names a history item or a shared genre
  in about half of its reasons and often writes a history title where the target belongs; opened at the anchor
  it names the item the user actually rated, and most reasons pass the checks at the first try.

Neither opening changes training or the ExpCTR-LLM evaluation, which read the explainer's own verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from expctr.llm.prompts import (
    MAX_TITLE_CHARS,
    Item,
    encode_messages,
    explainer_messages,
    fitted_history,
    sanitize_text,
)
from expctr.llm.verdicts import EXPLANATION_PREFIX, verdict_opening

Opening = Literal["verdict", "anchored"]


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


def served_opening(p: float, target: Item, anchor: Item | None, opening: Opening = "anchored") -> str:
    """The whole assistant opening the explainer continues (see the module docstring): the verdict worded by
    the score `p`, then for `anchored` `because, like "X",` when the anchor shares a genre with the target,
    else the weaker `because, as with "X",`."""
    text = verdict_opening(p, target)
    if opening == "verdict":
        return text
    text += " because"
    if anchor is not None:
        link = "like" if set(anchor.genres) & set(target.genres) else "as with"
        text += f', {link} "{sanitize_text(anchor.title, MAX_TITLE_CHARS) or "untitled"}",'
    return text


class ServedPrompt(NamedTuple):
    """What the explainer is given for one served explanation."""

    ids: list[int]  # the trained prompt up to EXPLANATION_PREFIX (where the verdict logit is read)
    history: list[Item]  # the part of the history in the prompt
    opening: str  # the whole assistant opening (`served_opening`), starting with EXPLANATION_PREFIX
    anchor: Item | None  # the history item the opening names (None: the explainer chooses the whole reason)

    @property
    def continuation(self) -> str:
        """What is fed after the prompt: the opening past EXPLANATION_PREFIX."""
        return self.opening[len(EXPLANATION_PREFIX):]


def served_prompt(tokenizer, history: Sequence[Item], target: Item, p: float, max_prompt_tokens: int,
                  opening: Opening = "anchored", fitted: Sequence[Item] | None = None) -> ServedPrompt:
    """The prompt for one served explanation at score `p`; the anchor is chosen from the history in the prompt.
    `fitted`: the user's history already fitted to the budget (one fit serves all of a user's candidates)."""
    items = list(fitted) if fitted is not None else fitted_history(tokenizer, history, max_prompt_tokens)
    positive = p >= 0.5
    anchor = reason_anchor(items, target, positive) if opening == "anchored" else None
    text = served_opening(p, target, anchor, opening)
    ids = encode_messages(tokenizer, explainer_messages(items, target) + [{"role": "assistant",
                                                                           "content": EXPLANATION_PREFIX}])
    return ServedPrompt(ids, items, text, anchor)


__all__ = ["Opening", "ServedPrompt", "reason_anchor", "served_opening", "served_prompt"]
