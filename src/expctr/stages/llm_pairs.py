"""llm_pairs stage: seeded (user, target) samples for the LLM stages, the signals RL reads, the floor to beat.

With `llm.target_stats`, each target carries how many rated it before the pair's time in the training split
and the share who liked it (`expctr.explainer.pairs.target_stats`), which the prompt states; the same number is
reported as a model-free rule ("rule_item_liked_share") beside the history rules, so the report shows what the
LLM adds on top of it.

Writes per split the sampled pairs with their histories rendered as items and `p_id`, the ID model's click
probability (the IC alignment target; it needs no label). For the RL pool (`train`) it also stores the frozen
judge's P(Yes) for the two bare verdict sentences of each pair (`judge_p_yes_pos` / `judge_p_yes_neg`): the
judge is frozen and the sentences are fixed, so these are properties of the pair, read once here and used by
every round's dense verdict step. On the test pairs: the zero-shot judge (no explanation) and the model-free
history rules.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from expctr.config import Params
from expctr.ctr.batch import CTRData
from expctr.ctr.checkpoint import load_id_model
from expctr.ctr.trainer import binary_metrics, predict
from expctr.data.features import SPLITS, FeatureMap
from expctr.explainer.baselines import genre_overlap, share_liked
from expctr.explainer.pairs import attach_items, sample_pairs, target_stats
from expctr.io import atomic_path, write_json
from expctr.llm.base_model import load_model, load_tokenizer
from expctr.llm.judge import judge_p_yes_grouped
from expctr.llm.prompts import (
    as_item,
    fit_history,
    fitted_explainer_history,
    judge_messages,
    verdict_sentence,
)
from expctr.paths import ProjectPaths


def judge_groups(pairs: pl.DataFrame, tokenizer, max_prompt_tokens: int, explanations,
                 explainer_history: bool = False) -> list:
    """Per pair, the judge prompts of each explanation in `explanations[k]` (None = the zero-shot readout).

    The history is the one the explainer sees (`explainer_history=True`: the RL pool, whose readings the rounds'
    rewards look up by prompt), or the one that fits the longest judge prompt in the budget (the test pairs'
    zero-shot readout); either way all of a pair's prompts share it."""
    out = []
    for k, row in enumerate(pairs.select("history", "target").iter_rows(named=True)):
        texts = explanations[k]
        if explainer_history:
            history = fitted_explainer_history(tokenizer, row["history"], row["target"], max_prompt_tokens)
        else:
            longest = max(texts, key=lambda t: len(t or ""))
            history = fit_history(tokenizer, row["history"], row["target"], max_prompt_tokens,
                                  build=lambda h, t, e=longest: judge_messages(h, t, e))
        out.append([judge_messages(history, row["target"], t) for t in texts])
    return out


def verdict_sentences(pairs: pl.DataFrame) -> list[list[str]]:
    """The two bare verdict sentences of each pair: [positive, negative]."""
    return [[verdict_sentence(True, as_item(t)), verdict_sentence(False, as_item(t))] for t in pairs["target"]]


def run(params: Params, paths: ProjectPaths) -> dict:
    started = time.perf_counter()
    frames = {s: pl.read_parquet(paths.features / f"{s}.parquet") for s in SPLITS}
    catalogue = pl.read_parquet(paths.features / "items.parquet")
    sizes = {"train": params.pairs.train, "valid": params.pairs.valid, "test": params.pairs.test}
    sampled = {s: sample_pairs(frames[s], sizes[s], params.seed + i,
                               balance=(s == "train" and params.pairs.balance_train))
               for i, s in enumerate(SPLITS)}
    if params.llm.target_stats:
        sampled = {s: target_stats(df, frames["train"]) for s, df in sampled.items()}
    pairs = {s: attach_items(df, catalogue) for s, df in sampled.items()}
    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    pairs = {s: df.with_columns(pl.Series("p_id", predict(id_model, CTRData.from_frame(df), 4096)))
             for s, df in pairs.items()}

    model = load_model(paths.base_llm, params.llm.dtype, params.llm.device, params.llm.threads)
    tokenizer = load_tokenizer(paths.base_llm)
    budget, batch = params.llm.max_prompt_tokens, params.llm.judge_batch_size
    train = pairs["train"]
    verdict = judge_p_yes_grouped(model, tokenizer, judge_groups(train, tokenizer, budget, verdict_sentences(train), explainer_history=True),
                                  batch_size=batch, progress=True)
    pairs["train"] = train.with_columns(pl.Series("judge_p_yes_pos", [v[0] for v in verdict]),
                                        pl.Series("judge_p_yes_neg", [v[1] for v in verdict]))

    test = pairs["test"]
    labels = test["label"].to_numpy()
    rows = list(test.select("history", "target").iter_rows(named=True))
    rules = {
        "share_liked": [share_liked(r["history"]) for r in rows],
        "genre_overlap": [genre_overlap(r["history"], r["target"]) for r in rows],
    }
    if params.llm.target_stats:
        rules["item_liked_share"] = [float(r["target"]["liked_share"]) for r in rows]
    zero = judge_p_yes_grouped(model, tokenizer, judge_groups(test, tokenizer, budget, [[None]] * test.height),
                               batch_size=batch, progress=True)
    p_yes = np.array([z[0] for z in zero])
    pairs["test"] = test.with_columns(pl.Series("p_yes_zero_shot", p_yes),
                                      *[pl.Series(f"rule_{k}", v) for k, v in rules.items()])
    with atomic_path(paths.llm_pairs) as tmp:
        tmp.mkdir()
        for s, df in pairs.items():
            df.write_parquet(tmp / f"{s}.parquet")
    stance_gap = pairs["train"]["judge_p_yes_pos"] - pairs["train"]["judge_p_yes_neg"]
    metrics = {
        "pairs": {s: df.height for s, df in pairs.items()},
        "label_rate": {s: float(df["label"].mean()) for s, df in pairs.items()},
        "test_zero_shot_judge": binary_metrics(labels, p_yes),
        "test_id_model": binary_metrics(labels, pairs["test"]["p_id"].to_numpy()),
        "test_rules": {k: binary_metrics(labels, _to_prob(v))["auc"] for k, v in rules.items()},
        # how strongly the frozen judge follows a stated verdict on the RL pool (what the dense step can earn)
        "judge_verdict": {"p_yes_pos_mean": float(pairs["train"]["judge_p_yes_pos"].mean()),
                          "p_yes_neg_mean": float(pairs["train"]["judge_p_yes_neg"].mean()),
                          "share_follows_stance": float((stance_gap > 0).mean())},
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(paths.metric("llm_pairs.json"), metrics)
    return metrics


def _to_prob(scores: list[float]):
    s = np.asarray(scores, dtype=float)
    return (s - s.min()) / (s.max() - s.min() + 1e-12) * 0.98 + 0.01
