"""The explainer's prompt dataset: one row per (user, target) pair, the prompt plus the columns rewards read.

TRL forwards every dataset column except `prompt` to each reward function as a keyword list, one entry per
completion; the same rows feed the dense verdict step (their token ids) and generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from expctr.errors import ExpCTRError
from expctr.llm.prompts import as_item, explainer_messages, fitted_history, prompt_facts, rendered_prompt

# ID feature columns the IC reward (text-augmented CTR model) needs, passed through as plain python values.
ID_COLUMNS = ("user_idx", "item_idx", "gender_idx", "age_idx", "occupation_idx", "decade_idx", "genre_idx",
              "hist_item_idx", "hist_click")
# kept when present: the label (LC needs it, IC does not), precomputed signals, readable ids for logs
OPTIONAL_COLUMNS = ("label", "p_id", "judge_p_yes_pos", "judge_p_yes_neg", "user_id", "item_id", "timestamp")
REQUIRED_COLUMNS = ("history", "target", *ID_COLUMNS)



def _item_dict(item) -> dict[str, Any]:
    it = as_item(item)
    out = {"title": it.title, "year": it.year, "genres": list(it.genres), "liked": it.liked}
    if it.viewers is not None:  # a target's reception travels with it: every prompt built from it states it
        out.update(viewers=it.viewers, liked_share=it.liked_share)
    return out


def _plain(value: Any) -> Any:
    """numpy / polars scalars and arrays -> python ints, floats and lists (what reward functions expect)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build_prompt_dataset(pairs, tokenizer, max_prompt_tokens: int,
                         assistant_prefix: str | Sequence[str] | None = None):
    """A `datasets.Dataset` of explainer prompts plus the columns reward functions read.

    `pairs`: a polars frame from `expctr.data.pairs` (`history`, `target`, `label`, ID feature columns;
    `label` may be absent: the IC reward needs none). Columns of the result:
    - `prompt`: `explainer_messages(history, target)` with the history cut (oldest items first) by
      `fitted_history` to the `max_prompt_tokens` budget of the prompt's shared part (TRL has no prompt
      truncation of its own, and cutting tokens would cut the chat template);
    - `history`: the items the explainer SAW (list of {title, year, genres, liked}), so a judge scores the
      explanation against the same context; `n_history_dropped` says how many older items the budget cut;
    - `target` ({title, year, genres, liked=None, and its reception when the pairs carry it}), `label` (int
      0/1, when the pairs have it); `facts`: the numbers the prompt states (`prompt_facts`);
    - `prefix_group`: equal for rows whose prompts share everything before the target line (same user, same
      fitted history), so generation prefills that part once;
    - the ID feature columns (`ID_COLUMNS`), `p_id` / `judge_p_yes_pos` / `judge_p_yes_neg` and `user_id` /
      `item_id` when present.

    `assistant_prefix` (EXPLANATION_PREFIX, or one per row such as a graded `verdict_opening`): the assistant
    turn is opened with this text and the policy continues it; the prompt is then the rendered text (TRL's
    conversational path always opens a fresh assistant turn), completions arrive as plain strings, and an
    `explanation_prefix` column carries the prefix so rewards rebuild the full sentence with
    `completion_text(c, prefix)`.
    """
    import datasets

    missing = [c for c in REQUIRED_COLUMNS if c not in pairs.columns]
    if missing:
        raise ExpCTRError(f"pairs frame lacks column(s) {missing} needed by the RL stage (have {pairs.columns})")
    if pairs.height == 0:
        raise ExpCTRError("no pairs to build RL prompts from")
    if assistant_prefix is None or isinstance(assistant_prefix, str):
        row_prefixes = [assistant_prefix] * pairs.height
    else:
        row_prefixes = list(assistant_prefix)
        if len(row_prefixes) != pairs.height:
            raise ExpCTRError(f"{len(row_prefixes)} assistant prefixes for {pairs.height} pairs")
    keep = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in pairs.columns]

    rows = []
    for row, prefix in zip(pairs.select(keep).iter_rows(named=True), row_prefixes):
        history = row["history"] or []
        target = as_item(row["target"])
        fitted = fitted_history(tokenizer, history, max_prompt_tokens)
        messages = explainer_messages(fitted, target)
        if prefix:
            messages = messages + [{"role": "assistant", "content": prefix}]
        out = {
            "prompt": rendered_prompt(tokenizer, messages) if prefix else messages,
            "history": [_item_dict(h) for h in fitted],
            "n_history_dropped": len(history) - len(fitted),
            "target": _item_dict(target),
            "facts": prompt_facts(fitted, target),
            "prefix_group": "|".join([str(row.get("user_id", ""))] + [f"{h.title}:{h.liked}" for h in fitted]),
        }
        for c in (c for c in keep if c not in ("history", "target")):
            out[c] = int(row[c]) if c == "label" else _plain(row[c])
        if prefix:
            out["explanation_prefix"] = prefix
        rows.append(out)
    return datasets.Dataset.from_list(rows)


def prompt_token_ids(dataset, tokenizer) -> list[list[int]]:
    """Token ids of every (rendered text) prompt of a dataset built with an assistant prefix."""
    return [tokenizer(p)["input_ids"] for p in dataset["prompt"]]
