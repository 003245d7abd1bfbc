"""LLM pairs: a seeded sample of (user, target) rows with their history and target rendered as items.

Explaining a million pairs is not possible on a CPU, so the LLM stages work on a sample per split. Each
pair keeps every ID feature column (so the text-augmented CTR model trains on exactly these rows) plus
`history` (list of {title, year, genres, liked}, most recent last, strictly before the target) and
`target` ({title, year, genres}).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from expctr.data.features import HIST_CLICK_PAD, HIST_CLICK_YES, OOV

ITEM_FIELDS = ("title", "year", "genres")


def sample_pairs(frame: pl.DataFrame, n: int, seed: int, balance: bool = False) -> pl.DataFrame:
    """`n` rows drawn without replacement (seeded); with `balance`, half clicks and half non-clicks."""
    if n >= frame.height:
        return frame
    if not balance:
        return frame.sample(n, seed=seed, shuffle=True)
    pos = frame.filter(pl.col("label") == 1)
    neg = frame.filter(pl.col("label") == 0)
    n_pos = min(n // 2, pos.height)
    n_neg = min(n - n_pos, neg.height)
    return pl.concat([pos.sample(n_pos, seed=seed), neg.sample(n_neg, seed=seed + 1)]).sample(
        fraction=1.0, seed=seed + 2, shuffle=True
    )


def sample_slates(frame: pl.DataFrame, n: int, slate: int, seed: int, known_share: float | None = None
                  ) -> pl.DataFrame:
    """About `n` rows drawn as slates: groups of `slate` rows of one user with the same timestamp (rated
    together, so they share their history). Groups with at least `slate` rows are drawn with probability
    proportional to their size, and `slate` rows uniformly within each, so every row of such a group is equally
    likely to be drawn. Why slates: each pair then has another pair of its user (the shuffled-explanation
    control needs one), and a slate's prompts share everything before the target line (one prefill, in
    generation, judging and the RL verdict step alike).

    `known_share`: the share of slates drawn from users the ID model knows (`user_idx` not OOV), each part
    drawn as above; None draws from all groups alike (the period's own mix)."""
    if slate < 2:
        raise ValueError(f"a slate needs at least 2 pairs, got {slate}")
    keyed = frame.with_row_index("_row")
    known_flag = [(pl.col("user_idx").first() != OOV).alias("_known")] if known_share is not None else []
    groups = (keyed.group_by("user_id", "timestamp", maintain_order=True)
              .agg(pl.col("_row"), *known_flag)
              .filter(pl.col("_row").list.len() >= slate))
    if groups.height == 0:
        raise ValueError(f"no user has {slate} pairs with the same timestamp to draw slates from")
    rng = np.random.default_rng(seed)
    k = min(groups.height, max(1, n // slate))
    if known_share is None:
        parts = [(np.arange(groups.height), k)]
    else:
        if not 0.0 <= known_share <= 1.0:
            raise ValueError(f"known_share must be in [0, 1], got {known_share}")
        known = groups["_known"].to_numpy()
        idx_known, idx_new = np.flatnonzero(known), np.flatnonzero(~known)
        k_known = min(len(idx_known), round(k * known_share))
        parts = [(idx_known, k_known), (idx_new, min(len(idx_new), k - k_known))]
    sizes = groups["_row"].list.len().to_numpy().astype(float)
    picked = []
    for idx, m in parts:
        if m > 0:
            picked += rng.choice(idx, size=m, replace=False, p=sizes[idx] / sizes[idx].sum()).tolist()
    rows = groups["_row"].to_list()
    chosen = [r for g in picked for r in rng.choice(rows[g], size=slate, replace=False).tolist()]
    return keyed[chosen].drop("_row")


def known_user_share(frame: pl.DataFrame) -> float:
    """Share of `frame`'s rows whose user the ID model knows (`user_idx` not OOV): e.g. the test period's, the
    population ExpCTR-Aug then serves."""
    return float((frame["user_idx"] != OOV).mean()) if frame.height else 0.0


def donor_pairs(pairs: pl.DataFrame, split: pl.DataFrame, seed: int) -> pl.DataFrame:
    """For every user with a single pair in `pairs`, one more row of that user from `split` (another item,
    seeded): where the shuffled-explanation control of that pair takes its explanation from. Users with no
    other row get none."""
    counts = pairs.group_by("user_id").len()
    single = counts.filter(pl.col("len") == 1)["user_id"]
    mine = pairs.filter(pl.col("user_id").is_in(single.implode())).select("user_id", "item_id")
    candidates = (split.filter(pl.col("user_id").is_in(single.implode()))
                  .join(mine, on=["user_id", "item_id"], how="anti"))
    if candidates.height == 0:
        return candidates
    return (candidates.sample(fraction=1.0, shuffle=True, seed=seed)
            .group_by("user_id", maintain_order=True).head(1).sort("user_id"))


def target_stats(pairs: pl.DataFrame, train: pl.DataFrame, prior_weight: float = 10.0) -> pl.DataFrame:
    """`viewers` and `liked_share` of each pair's target, from the TRAINING ratings of that item strictly
    before the pair's timestamp (so no pair sees its own or a later rating): liked_share = (clicks + w * g) /
    (viewers + w), g = the training click rate (shrinks rarely rated items towards it). `train` needs
    item_code, timestamp, label."""
    g = float(train["label"].mean()) if train.height else 0.5
    cum = (train.select("item_code", "timestamp", "label").sort("item_code", "timestamp")
           .with_columns(pl.col("label").cum_sum().over("item_code").alias("_clicks"),
                         pl.int_range(1, pl.len() + 1).over("item_code").alias("_viewers"))
           # several ratings in the same second: the last one carries the count up to and including that second
           .group_by("item_code", "timestamp", maintain_order=True).last()
           .select("item_code", "timestamp", "_clicks", "_viewers"))
    keyed = pairs.with_row_index("_row").sort("timestamp")
    joined = keyed.join_asof(cum.sort("timestamp"), on="timestamp", by="item_code", strategy="backward",
                             allow_exact_matches=False, check_sortedness=False)  # both sorted above
    viewers = pl.col("_viewers").fill_null(0)
    return (joined.sort("_row")
            .with_columns(viewers.alias("viewers"),
                          ((pl.col("_clicks").fill_null(0) + prior_weight * g) / (viewers + prior_weight))
                          .alias("liked_share"))
            .drop("_row", "_clicks", "_viewers"))


def attach_items(pairs: pl.DataFrame, catalogue: pl.DataFrame) -> pl.DataFrame:
    """Add `history` (list of item structs with `liked`) and `target` (item struct) columns; the target
    carries `viewers` / `liked_share` when the pairs have them (`target_stats`)."""
    items = catalogue.select("item_code", *ITEM_FIELDS)
    target = pairs.select("item_code").join(items, on="item_code", how="left", maintain_order="left")
    long = (
        pairs.with_row_index("_pair")
        .select("_pair", pl.col("hist_item_code").arr.to_list(), pl.col("hist_click").arr.to_list())
        .explode("hist_item_code", "hist_click")
        .with_row_index("_order")
        .filter(pl.col("hist_click") != HIST_CLICK_PAD)
        .join(items, left_on="hist_item_code", right_on="item_code", how="left")
        .sort("_order")
        .group_by("_pair", maintain_order=True)
        .agg(pl.struct(*ITEM_FIELDS, (pl.col("hist_click") == HIST_CLICK_YES).alias("liked")).alias("history"))
    )
    out = pairs.with_row_index("_pair").join(long, on="_pair", how="left").sort("_pair").drop("_pair")
    empty = pl.lit([], dtype=out.schema["history"])
    return out.with_columns(
        pl.col("history").fill_null(empty),
        pl.struct([target[c] for c in ITEM_FIELDS]
                  + [pairs[c] for c in ("viewers", "liked_share") if c in pairs.columns]).alias("target"),
    )
