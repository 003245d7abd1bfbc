"""llm_pairs stage: seeded (user, target) samples for the LLM stages, the signals RL reads, the floor to beat.

Per split (`expctr.data.pairs`): the RL pool (`train`, uniform over the training period), ExpCTR-Aug's pairs
(`valid`, slates of same-time pairs of one user from the valid period: after the ID model's training data,
before the test period), the test pairs (`test`, uniform), and `donors` (one more test-period pair for each
user with a single test pair: where the shuffled-explanation control takes its explanation from). Each pair
carries its history and target rendered as items (with the target's reception so far, `target_stats`, when
`llm.target_stats`) and `p_id`, the ID model's click probability.

The RL pool is drawn as slates of same-time pairs of one user with `pairs.train_slate` (the verdict step runs
a slate's shared prefix once), ExpCTR-Aug's pairs with the test period's share of users the ID model knows
(`pairs.valid_known_share`).
On the RL pool, the frozen judge's P(Yes) after each plain verdict sentence (`expctr.llm.verdicts`): the dense
verdict step's rewards (`judge_p_yes_pos` / `judge_p_yes_neg`, read once here since the judge is frozen); on the
first GRADE_CHECK_PAIRS pool pairs, its reading of every graded verdict: whether the judge reads the grades in
order (metrics `judge_grades`).
On the test pairs: the zero-shot judge and the model-free history rules.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from expctr.config import Params
from expctr.ctr.batch import CTRData
from expctr.ctr.checkpoint import load_id_model
from expctr.ctr.trainer import binary_metrics, predict
from expctr.data.features import FeatureMap
from expctr.data.pairs import (
    attach_items,
    donor_pairs,
    known_user_share,
    sample_pairs,
    sample_slates,
    target_stats,
)
from expctr.explainer.baselines import genre_overlap, share_liked
from expctr.io import atomic_path, write_json
from expctr.llm.base_model import load_model, load_tokenizer, reading_params
from expctr.llm.judge import judge_p_yes_side_by_side
from expctr.llm.prompts import fitted_history, judge_messages
from expctr.llm.side_by_side import ModelLoader, SideBySide
from expctr.llm.verdicts import VERDICT_GRADES, verdict_sentence
from expctr.paths import ProjectPaths

OUTPUTS = ("train", "valid", "test", "donors")
GRADE_CHECK_PAIRS = 100  # pool pairs on which every grade's reading is measured (the ladder's order check)


def judge_groups(pairs: pl.DataFrame, tokenizer, max_prompt_tokens: int, explanations,
                 show_history: bool = True) -> list:
    """Per pair, the judge prompts of each explanation in `explanations[k]` (None = the zero-shot readout, which
    always shows the history), on the history the explainer sees (`fitted_history`), so the rounds' rewards find
    these readings by prompt."""
    out = []
    for k, row in enumerate(pairs.select("history", "target").iter_rows(named=True)):
        history = fitted_history(tokenizer, row["history"], max_prompt_tokens)
        out.append([judge_messages(history, row["target"], t, show_history=show_history or t is None)
                    for t in explanations[k]])
    return out


def slate_labels(pairs: pl.DataFrame) -> list[tuple]:
    """(user, timestamp) per pair: pairs with the same label have the same history, so their judge prompts
    share everything before the target line."""
    return list(zip(pairs["user_id"].to_list(), pairs["timestamp"].to_list()))


def grade_sentences(pairs: pl.DataFrame) -> list[list[str]]:
    """The bare verdict sentence of every grade, highest first, for each pair."""
    return [[verdict_sentence(g.min_p, t) for g in VERDICT_GRADES] for t in pairs["target"]]


def sample_all(params: Params, frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    p, seed = params.pairs, params.seed
    test = sample_pairs(frames["test"], p.test, seed + 2)
    known = known_user_share(frames["test"]) if p.valid_known_share == "test" else p.valid_known_share
    train = sample_slates(frames["train"], p.train, p.train_slate, seed) if p.train_slate \
        else sample_pairs(frames["train"], p.train, seed, balance=p.balance_train)
    return {
        "train": train,
        "valid": sample_slates(frames["valid"], p.valid, p.valid_slate, seed + 1, known_share=known),
        "test": test,
        "donors": donor_pairs(test, frames["test"], seed + 3),
    }


def _grade_metrics(readings: np.ndarray) -> dict:
    """Mean P(Yes) per grade and how often, per pair, each grade reads above the next lower one."""
    names = [f"{g.words}{g.hedge}" for g in VERDICT_GRADES]
    return {"mean_p_yes": dict(zip(names, readings.mean(0).round(4).tolist())),
            "share_ordered_with_next": dict(zip(names[:-1], (readings[:, :-1] > readings[:, 1:]).mean(0).round(4).tolist()))}


def run(params: Params, paths: ProjectPaths) -> dict:
    started = time.perf_counter()
    frames = {s: pl.read_parquet(paths.features / f"{s}.parquet") for s in ("train", "valid", "test")}
    catalogue = pl.read_parquet(paths.features / "items.parquet")
    sampled = sample_all(params, frames)
    if params.llm.target_stats:
        sampled = {s: target_stats(df, frames["train"]) for s, df in sampled.items()}
    pairs = {s: attach_items(df, catalogue) for s, df in sampled.items()}
    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    pairs = {s: df.with_columns(pl.Series("p_id", predict(id_model, CTRData.from_frame(df), 4096)
                                          if df.height else [], dtype=pl.Float32))
             for s, df in pairs.items()}

    with SideBySide.for_llm(params.llm) as pool:  # its workers import while the judge loads
        return _read_and_write(params, paths, pairs, pool, started)


def _read_and_write(params: Params, paths: ProjectPaths, pairs: dict[str, pl.DataFrame], pool: SideBySide,
                    started: float) -> dict:
    """The frozen judge's readings (split over `pool`'s processes), then the outputs and metrics."""
    llm = reading_params(params.llm)
    model = load_model(paths.base_llm, llm.dtype, llm.device, llm.threads)
    tokenizer = load_tokenizer(paths.base_llm)
    base = ModelLoader(paths.base_llm, None, llm)
    budget, batch = params.llm.max_prompt_tokens, params.llm.judge_batch_size
    train = pairs["train"]
    plain = [[verdict_sentence(True, t), verdict_sentence(False, t)] for t in train["target"]]
    # a slate's pairs share the context before their target lines: the judge runs it once per slate (`outer`),
    # each pair's target line once, each sentence's suffix alone
    shown = params.llm.judge_reads_history
    verdict = np.array(judge_p_yes_side_by_side(pool, model, tokenizer, base,
                                                judge_groups(train, tokenizer, budget, plain, shown),
                                                batch_size=batch, progress=True, outer=slate_labels(train)))
    pairs["train"] = train.with_columns(pl.Series("judge_p_yes_pos", verdict[:, 0]),
                                        pl.Series("judge_p_yes_neg", verdict[:, 1]))
    ladder = train.head(GRADE_CHECK_PAIRS)
    readings = np.array(judge_p_yes_side_by_side(pool, model, tokenizer, base,
                                                 judge_groups(ladder, tokenizer, budget, grade_sentences(ladder), shown),
                                                 batch_size=batch, progress=True, outer=slate_labels(ladder)))

    test = pairs["test"]
    labels = test["label"].to_numpy()
    rows = list(test.select("history", "target").iter_rows(named=True))
    rules = {
        "share_liked": [share_liked(r["history"]) for r in rows],
        "genre_overlap": [genre_overlap(r["history"], r["target"]) for r in rows],
    }
    if params.llm.target_stats:
        rules["item_liked_share"] = [float(r["target"]["liked_share"]) for r in rows]
    zero = judge_p_yes_side_by_side(pool, model, tokenizer, base,
                                    judge_groups(test, tokenizer, budget, [[None]] * test.height),
                                    batch_size=batch, progress=True)
    p_yes = np.array([z[0] for z in zero])
    pairs["test"] = test.with_columns(pl.Series("p_yes_zero_shot", p_yes),
                                      *[pl.Series(f"rule_{k}", v) for k, v in rules.items()])
    with atomic_path(paths.llm_pairs) as tmp:
        tmp.mkdir()
        for s in OUTPUTS:
            pairs[s].write_parquet(tmp / f"{s}.parquet")
    stance_gap = pairs["train"]["judge_p_yes_pos"] - pairs["train"]["judge_p_yes_neg"]
    metrics = {
        "pairs": {s: df.height for s, df in pairs.items()},
        "users": {s: df["user_id"].n_unique() for s, df in pairs.items()},
        "label_rate": {s: float(df["label"].mean()) for s, df in pairs.items() if df.height},
        # share of pairs from users the ID model knows (ExpCTR-Aug's valid pairs are drawn at the test period's)
        "known_user_share": {s: known_user_share(df) for s, df in pairs.items() if df.height},
        "test_zero_shot_judge": binary_metrics(labels, p_yes),
        "test_id_model": binary_metrics(labels, pairs["test"]["p_id"].to_numpy()),
        "valid_id_model": binary_metrics(pairs["valid"]["label"].to_numpy(), pairs["valid"]["p_id"].to_numpy()),
        "test_rules": {k: binary_metrics(labels, _to_prob(v))["auc"] for k, v in rules.items()},
        # how the frozen judge reads each graded verdict on the RL pool (what the verdict words can carry)
        "judge_grades": _grade_metrics(readings),
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
