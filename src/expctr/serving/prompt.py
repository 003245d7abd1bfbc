"""The explainer prompt a served explanation is written from (shared by the predictor and the trust bench).

Built only from `expctr.llm.prompts`, so a new prompt there is served as trained: the history is the one
training's prompts keep (`fitted_explainer_history`: the longest recent part whose prompt, opened with
EXPLANATION_PREFIX, fits the budget), and the assistant turn is then opened with the verdict the score chose
(`verdict_prefix`), so the explainer writes only the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from expctr.llm.prompts import (
    Item,
    encode_messages,
    explainer_messages,
    fitted_explainer_history,
    verdict_prefix,
)


def served_prompt(tokenizer, history: Sequence[Item], target: Item, positive: bool, max_prompt_tokens: int
                  ) -> tuple[list[int], list[Item]]:
    """(token ids of the prompt, the history in it). The ids are exactly those `rendered_prompt`'s text stands
    for, so the generator takes them as they are.

    Tokenising is a real share of a cold request on a CPU, so the whole history is tried first: when the
    prompt with the (longer) verdict opening fits, the EXPLANATION_PREFIX one fits too and the search is not
    needed. Otherwise the fitted history's prompt may exceed the budget by the verdict's one or two tokens,
    exactly as the prompts the explainer was trained on."""
    opening = [{"role": "assistant", "content": verdict_prefix(positive)}]
    history = list(history)
    ids = encode_messages(tokenizer, explainer_messages(history, target) + opening)
    if len(ids) <= max_prompt_tokens:
        return ids, history
    fitted = fitted_explainer_history(tokenizer, history, target, max_prompt_tokens)
    return encode_messages(tokenizer, explainer_messages(fitted, target) + opening), fitted


__all__ = ["served_prompt"]
