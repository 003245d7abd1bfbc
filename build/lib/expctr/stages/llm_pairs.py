"""llm_pairs stage: seeded (user, target) samples for the LLM stages, and the baselines they must beat.

Writes the pairs per split with their histories rendered as items, and on the test pairs the AUC of the
zero-shot judge (no explanation) and of the model-free history rules.
"""

from __future__ import annotations

import polars as pl

from expctr.config import Params
from expctr.ctr.trainer import binary_metrics
from expctr.data.features import SPLITS
from expctr.explainer.baselines import genre_overlap, share_liked
from expctr.explainer.pairs import attach_items, sample_pairs
from expctr.io import atomic_path, write_json
from expctr.llm.base_model import load_model, load_tokenizer
from expctr.llm.judge import judge_p_yes
from expctr.llm.prompts import fit_history, judge_messages
from expctr.paths import ProjectPaths


def judge_messages_for(pairs: pl.DataFrame, tokenizer, max_prompt_tokens: int, explanations=None) -> list:
    """Judge prompts for each pair (history trimmed to the token budget), optionally with explanations."""
    out = []
    for k, row in enumerate(pairs.select("history", "target").iter_rows(named=True)):
        expl = None if explanations is None else explanations[k]
        history = fit_history(tokenizer, row["history"], row["target"], max_prompt_tokens,
                              build=lambda h, t, e=expl: judge_messages(h, t, e))
        out.append(judge_messages(history, row["target"], expl))
    return out


def run(params: Params, paths: ProjectPaths) -> dict:
    frames = {s: pl.read_parquet(paths.features / f"{s}.parquet") for s in SPLITS}
    catalogue = pl.read_parquet(paths.features / "items.parquet")
    sizes = {"train": params.pairs.train, "valid": params.pairs.valid, "test": params.pairs.test}
    pairs = {
        s: attach_items(sample_pairs(frames[s], sizes[s], params.seed + i,
                                     balance=(s == "train" and params.pairs.balance_train)), catalogue)
        for i, s in enumerate(SPLITS)
    }
    test = pairs["test"]
    labels = test["label"].to_numpy()
    rows = list(test.select("history", "target").iter_rows(named=True))
    rules = {
        "share_liked": [share_liked(r["history"]) for r in rows],
        "genre_overlap": [genre_overlap(r["history"], r["target"]) for r in rows],
    }
    model = load_model(paths.base_llm, params.llm.dtype, params.llm.device, params.llm.threads)
    tokenizer = load_tokenizer(paths.base_llm)
    p_yes = judge_p_yes(model, tokenizer, judge_messages_for(test, tokenizer, params.llm.max_prompt_tokens),
                        batch_size=params.llm.judge_batch_size, progress=True)
    pairs["test"] = test.with_columns(pl.Series("p_yes_zero_shot", p_yes),
                                      *[pl.Series(f"rule_{k}", v) for k, v in rules.items()])
    with atomic_path(paths.llm_pairs) as tmp:
        tmp.mkdir()
        for s, df in pairs.items():
            df.write_parquet(tmp / f"{s}.parquet")
    metrics = {
        "pairs": {s: df.height for s, df in pairs.items()},
        "label_rate": {s: float(df["label"].mean()) for s, df in pairs.items()},
        "test_zero_shot_judge": binary_metrics(labels, p_yes),
        "test_rules": {k: binary_metrics(labels, _to_prob(v))["auc"] for k, v in rules.items()},
    }
    write_json(paths.metric("llm_pairs.json"), metrics)
    return metrics


def _to_prob(scores: list[float]):
    import numpy as np

    s = np.asarray(scores, dtype=float)
    return (s - s.min()) / (s.max() - s.min() + 1e-12) * 0.98 + 0.01
