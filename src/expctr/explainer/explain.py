"""Explain (user, target) pairs with an explainer: the sentence it ships, and what it read and thought.

For every pair: the prompt opened with EXPLANATION_PREFIX is prefilled once (one user's pairs with the same
history share that prefill, `expctr.llm.prefix_generation.generate_opened`); the explainer's verdict logit z is
read at its end; the opening is then its verdict worded by its own confidence pi = sigmoid(z)
(`expctr.llm.verdicts.verdict_opening`: "The user will surely enjoy "Heat"", ...), with `llm.reason_opening:
anchored` followed by a history item on the verdict's side (`expctr.llm.openings`: `because, like "Speed",`,
the opening the service writes too), and the explainer writes the reason after it, greedily and, with
`llm.quote_free_reason`, without quotation marks, until the sentence ends. The result frame keeps, per pair, the explanation, z,
the grade, the facts the prompt stated (`fact_*`), the history it saw (for the judge), and optionally the mean
last-layer state over the explanation (`hidden`), so every reader - the judge (ExpCTR-LLM), ExpCTR-Aug and the
report - reads the same thing.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from expctr.config import Params
from expctr.ctr.aug_inputs import fact_columns
from expctr.explainer.dataset import build_prompt_dataset, prompt_token_ids
from expctr.llm.explanations import explanation_of, stance
from expctr.llm.openings import opening_for, quote_token_ids
from expctr.llm.prefix_generation import generate_opened
from expctr.llm.prompts import FACT_NAMES, as_item
from expctr.llm.side_by_side import ModelLoader, SideBySide
from expctr.llm.verdicts import EXPLANATION_PREFIX, grade_of, verdict_opening, verdict_token_ids

KEEP = ("user_id", "item_id", "timestamp", "label", "p_id")


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def explain_pairs(model, tokenizer, pairs: pl.DataFrame, params: Params, desc: str = "explain",
                  pool_hidden: bool = False, write: bool = True, read_states: bool = False) -> pl.DataFrame:
    """One explanation per pair (in row order) with its verdict logit, grade, facts and context. With
    `write=False` only the verdict is read (one prefill, no decoding): `explanation` is then its bare graded
    verdict sentence, which is all a reader that takes the verdict logit needs."""
    dataset = build_prompt_dataset(pairs, tokenizer, params.llm.max_prompt_tokens, EXPLANATION_PREFIX)
    tokens = verdict_token_ids(tokenizer)
    targets = [as_item(t) for t in dataset["target"]]
    histories = [[as_item(h) for h in hist] for hist in dataset["history"]]
    anchors: dict[int, str | None] = {}

    def opening(i: int, logits: list[float]) -> str:
        text, anchor = opening_for(_sigmoid(logits[0] - logits[1]), histories[i], targets[i],
                                   params.llm.reason_opening)
        anchors[i] = anchor.title if anchor is not None else None
        return text[len(EXPLANATION_PREFIX):]

    res = generate_opened(model, tokenizer, prompt_token_ids(dataset, tokenizer), opening if write else None,
                          [tokens.positive, tokens.negative], groups=dataset["prefix_group"],
                          max_new_tokens=params.llm.max_new_tokens if write else 0,
                          pool_hidden=pool_hidden and write, batch_size=params.llm.gen_batch_size,
                          decode_batch_size=params.llm.decode_batch_size, progress=True,
                          desc=desc, banned_token_ids=quote_token_ids(tokenizer) if params.llm.quote_free_reason
                          else None, read_states=read_states)
    z = [a - b for a, b in res.first_logits]
    if write:
        prefixes = [EXPLANATION_PREFIX + o for o in res.openings]
        texts = [explanation_of(raw, pre) for raw, pre in zip(res.generation.raw_texts, prefixes)]
    else:
        prefixes = [verdict_opening(_sigmoid(v), t) for v, t in zip(z, targets)]
        texts = [f"{pre}." for pre in prefixes]
    facts = dataset["facts"]
    cols = [pl.Series(c, pairs[c]) for c in KEEP if c in pairs.columns]
    frame = pl.DataFrame(cols + [
        pl.Series("explanation", texts, dtype=pl.String),
        pl.Series("opening", prefixes, dtype=pl.String),
        pl.Series("anchor", [anchors.get(i) for i in range(pairs.height)], dtype=pl.String),
        pl.Series("clause", [verdict_opening(_sigmoid(v), t) + "." for v, t in zip(z, targets)], dtype=pl.String),
        pl.Series("grade", [grade_of(_sigmoid(v)).min_p for v in z], dtype=pl.Float64),
        pl.Series("verdict_logit", z, dtype=pl.Float64),
        pl.Series("stance", [stance(t) for t in texts], dtype=pl.Int8),
        pl.Series("n_tokens", res.generation.n_new_tokens, dtype=pl.Int32),
        pl.Series("complete", res.generation.complete, dtype=pl.Boolean),
        pl.Series("history", dataset["history"]),
        pl.Series("target", dataset["target"]),
        *[pl.Series(c, [float(f[n]) for f in facts], dtype=pl.Float64) for c, n in zip(fact_columns(), FACT_NAMES)],
    ])
    if res.states is not None:
        frame = frame.with_columns(pl.Series("state", np.asarray(res.states, dtype=np.float32).tolist(),
                                             dtype=pl.List(pl.Float32)))
    if res.hidden is not None:
        frame = frame.with_columns(pl.Series("hidden", np.asarray(res.hidden, dtype=np.float32).tolist(),
                                             dtype=pl.List(pl.Float32)))
    return frame


def _explain_part(model, tokenizer, pairs: pl.DataFrame, params: Params, desc: str, kwargs: dict) -> pl.DataFrame:
    return explain_pairs(model, tokenizer, pairs, params, desc, **kwargs)


def explain_side_by_side(pool: SideBySide | None, model, tokenizer, load: ModelLoader, pairs: pl.DataFrame,
                         params: Params, desc: str = "explain", **kwargs) -> pl.DataFrame:
    """`explain_pairs` with its rows cut into contiguous parts (never inside one user's slate) that run side by
    side in `pool`'s processes (`expctr.llm.side_by_side`): the first here with `model`, the others on workers
    holding the model `load` gives (the same one). Rows come back in order. No pool, or an inactive one, runs
    `explain_pairs` as it is."""
    slates = list(zip(*(pairs[c].to_list() for c in ("user_id", "timestamp")))) \
        if {"user_id", "timestamp"} <= set(pairs.columns) else list(range(pairs.height))
    ranges = pool.ranges(slates) if pool is not None else []
    if len(ranges) < 2:
        return explain_pairs(model, tokenizer, pairs, params, desc, **kwargs)
    parts = [pairs[a:b] for a, b in ranges]
    return pl.concat(pool.run(_explain_part, parts, model, tokenizer, load, params, desc, kwargs), how="vertical")


def explanation_stats(frame: pl.DataFrame) -> dict[str, float]:
    """Shares of one-sentence / positive / negative / verdict-less explanations, their length, the grades."""
    if frame.height == 0:
        return {"n": 0}
    texts = frame["explanation"].to_list()
    stances = frame["stance"].to_numpy()
    return {
        "n": frame.height,
        "mean_words": float(np.mean([len(t.split()) for t in texts])),
        "mean_new_tokens": float(frame["n_tokens"].mean()),
        # a complete sentence within the token cap (the generator stops at the first sentence end)
        "share_one_sentence": float(np.mean([bool(c) and bool(t.strip()) for c, t in zip(frame["complete"], texts)])),
        "share_positive_stance": float(np.mean(stances > 0)),
        "share_negative_stance": float(np.mean(stances < 0)),
        "share_no_stance": float(np.mean(stances == 0)),
        "grades": {f"{g:g}": float(np.mean(frame["grade"].to_numpy() == g)) for g in sorted(set(frame["grade"]))},
    }


__all__ = ["explain_pairs", "explain_side_by_side", "explanation_stats"]
