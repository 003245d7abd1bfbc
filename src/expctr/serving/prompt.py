"""The explainer prompt a served explanation is written from (shared by the predictor and the trust bench).

Built only from `expctr.llm.prompts`, `expctr.llm.verdicts` and `expctr.llm.openings`, so the served prompt is the trained one token
for token: the history is the one training keeps (`fitted_history`, which never depends on the target, so
one user's candidates share everything before the target line and it is prefilled once), the prompt ends with
EXPLANATION_PREFIX (where the explainer's verdict logit is read, as in training), and the assistant turn then
goes on with the opening the service chose: the verdict the score chose, worded by that score, and for
`anchored` a history item on the verdict's side (`expctr.llm.openings`, the same openings the pipeline trains
and evaluates with; there the verdict is the explainer's own). Measured on the served pair
(bench/trust_bench.py, bench/opening_bench.py, README): the small explainer left to itself names a history item
or a shared genre in about half of its reasons; opened at the anchor it names an item the user actually rated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from expctr.llm.openings import Opening, opening_for
from expctr.llm.prompts import Item, encode_messages, explainer_messages, fitted_history
from expctr.llm.verdicts import EXPLANATION_PREFIX


class ServedPrompt(NamedTuple):
    """What the explainer is given for one served explanation."""

    ids: list[int]  # the trained prompt up to EXPLANATION_PREFIX (where the verdict logit is read)
    history: list[Item]  # the part of the history in the prompt
    opening: str  # the whole assistant opening (`expctr.llm.openings`), starting with EXPLANATION_PREFIX
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
    text, anchor = opening_for(p, items, target, opening)
    ids = encode_messages(tokenizer, explainer_messages(items, target) + [{"role": "assistant",
                                                                           "content": EXPLANATION_PREFIX}])
    return ServedPrompt(ids, items, text, anchor)


__all__ = ["ServedPrompt", "served_prompt"]
