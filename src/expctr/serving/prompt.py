"""The explainer prompt a served explanation is written from (shared by the predictor and the trust bench).

Built only from `expctr.llm.prompts`, so a new prompt there is served as trained: the history is the one
training's prompts keep (`fitted_explainer_history`: the longest recent part whose prompt, opened with
EXPLANATION_PREFIX, fits the budget), and the assistant turn is then opened by the service (`served_opening`):

- `verdict`:  the verdict the score chose, `The user will probably enjoy`; the explainer writes the rest.
- `anchored`: the verdict, the target's title, `because` and a history item on the verdict's side
  (`reason_anchor`: the one sharing most genres with the target): `, like "That Item",` (or `, as with
  "That Item",` when none shares a genre); the explainer writes the reason from there. Measured on the
  served pair (bench/trust_bench.py, bench/opening_bench.py, README): the small explainer left to itself
  names a history item or a shared genre in about half of its reasons and often writes a history title where
  the target belongs; opened at the anchor it names the item the user actually rated, and most reasons pass
  the checks at the first try, so the guard's second generation pass is mostly skipped.

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
    fitted_explainer_history,
    sanitize_text,
    verdict_prefix,
)

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


def served_opening(positive: bool, target: Item, anchor: Item | None, opening: Opening = "anchored") -> str:
    """The assistant turn's opening the explainer continues (see the module docstring): `, like "X",` when
    the anchor shares a genre with the target, else the weaker `, as with "X",`."""
    if opening == "verdict":
        return verdict_prefix(positive)
    title = sanitize_text(target.title, MAX_TITLE_CHARS) or "untitled"
    text = f'{verdict_prefix(positive)} "{title}" because'
    if anchor is not None:
        link = "like" if set(anchor.genres) & set(target.genres) else "as with"
        text += f', {link} "{sanitize_text(anchor.title, MAX_TITLE_CHARS) or "untitled"}",'
    return text


class ServedPrompt(NamedTuple):
    """What the explainer is given for one served explanation."""

    ids: list[int]  # exactly the tokens `rendered_prompt`'s text stands for: the generator takes them as they are
    history: list[Item]  # the part of the history in the prompt
    opening: str  # the assistant turn's opening (`served_opening`)
    anchor: Item | None  # the history item the opening names (None: the explainer chooses the whole reason)


def served_prompt(tokenizer, history: Sequence[Item], target: Item, positive: bool, max_prompt_tokens: int,
                  opening: Opening = "anchored") -> ServedPrompt:
    """The prompt for one served explanation; the anchor is chosen from the history in the prompt.

    Tokenising is a real share of a cold request on a CPU, so the whole history is tried first: when the
    prompt with the (longer) served opening fits, the EXPLANATION_PREFIX one fits too and the search is not
    needed. Otherwise the fitted history's prompt may exceed the budget by the opening's extra tokens, as the
    prompts the explainer was trained on may by the verdict's."""

    def build(items: list[Item]) -> ServedPrompt:
        anchor = reason_anchor(items, target, positive) if opening == "anchored" else None
        text = served_opening(positive, target, anchor, opening)
        ids = encode_messages(tokenizer, explainer_messages(items, target) + [{"role": "assistant", "content": text}])
        return ServedPrompt(ids, items, text, anchor)

    whole = build(list(history))
    if len(whole.ids) <= max_prompt_tokens:
        return whole
    return build(fitted_explainer_history(tokenizer, whole.history, target, max_prompt_tokens))


__all__ = ["Opening", "ServedPrompt", "reason_anchor", "served_opening", "served_prompt"]
