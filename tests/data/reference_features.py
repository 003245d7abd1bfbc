"""Test oracle: the in-memory features build as it was before streaming (commit fff3912), kept verbatim.

The streamed features stage must write byte-identical files; this is what "today's output" means when the
installed polars differs from the one that recorded the hashes in `ml1m_reference.json`. Not used by the
library; do not edit except to follow a deliberate change of the features' contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from expctr.config import FeatureParams
from expctr.data.features import HIST_CLICK_NO, HIST_CLICK_PAD, HIST_CLICK_YES, OOV, PAD, SPLITS, FeatureMap


def add_labels(inter: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """click = rating >= threshold."""
    return inter.with_columns((pl.col("rating") >= threshold).cast(pl.Int8).alias("label"))


def history_positions(user: np.ndarray, ts: np.ndarray, k: int) -> np.ndarray:
    """For rows sorted by (user, timestamp): (N, k) row positions of each row's k most recent strictly
    earlier interactions of the same user, most recent last; -1 where there are fewer than k."""
    n = len(user)
    idx = np.arange(n, dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    new_block = new_user.copy()
    new_block[1:] |= ts[1:] != ts[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    block_start = np.maximum.accumulate(np.where(new_block, idx, 0))
    pos = block_start[:, None] - np.arange(k, 0, -1, dtype=np.int64)[None, :]
    return np.where(pos >= user_start[:, None], pos, -1)


def add_history(inter: pl.DataFrame, k: int) -> pl.DataFrame:
    """Attach fixed-length history arrays (most recent last, padded at the front).

    hist_item_code: row in the item catalogue (-1 pad); hist_click: 0 pad / 1 disliked / 2 liked;
    hist_last_ts: timestamp of the most recent history item (null if none), kept so validation can
    prove no history item is at or after its target.
    """
    inter = inter.sort(["user_id", "timestamp", "item_id"])
    # Compare users via their codes: equality on integers is much cheaper than on strings.
    user_codes = inter["user_id"].cast(pl.Categorical).to_physical().to_numpy()
    ts = inter["timestamp"].to_numpy()
    pos = history_positions(user_codes, ts, k)
    valid = pos >= 0
    safe = np.where(valid, pos, 0)
    labels = inter["label"].to_numpy()
    item_code = inter["item_code"].to_numpy()
    hist_code = np.where(valid, item_code[safe], -1).astype(np.int32)
    hist_click = np.where(valid, np.where(labels[safe] == 1, HIST_CLICK_YES, HIST_CLICK_NO), HIST_CLICK_PAD)
    last = pos[:, -1]
    hist_last_ts = pl.Series("hist_last_ts", np.where(last >= 0, ts[np.maximum(last, 0)], 0)).set(
        pl.Series(last < 0), None
    )
    return inter.with_columns(
        pl.Series("hist_item_code", hist_code),
        pl.Series("hist_click", hist_click.astype(np.int8)),
        hist_last_ts,
        pl.Series("hist_len", valid.sum(axis=1).astype(np.int16)),
    )


def assign_split(inter: pl.DataFrame, params: FeatureParams, seed: int) -> tuple[pl.DataFrame, dict]:
    """Global time cut-offs (default) or a seeded random split; returns the frame and the cut-offs."""
    train_frac = 1.0 - params.valid_frac - params.test_frac
    if params.split == "time":
        ts = np.sort(inter["timestamp"].to_numpy())
        n = len(ts)
        # The cut-off is the timestamp at the target share's row; ties at it go to the later split.
        t_valid = int(ts[min(int(n * train_frac), n - 1)]) if n else 0
        t_test = int(ts[min(int(n * (train_frac + params.valid_frac)), n - 1)]) if n else 0
        split = (
            pl.when(pl.col("timestamp") < t_valid).then(pl.lit("train"))
            .when(pl.col("timestamp") < t_test).then(pl.lit("valid"))
            .otherwise(pl.lit("test"))
        )
        info = {"kind": "time", "valid_from_ts": t_valid, "test_from_ts": t_test}
    else:
        u = np.random.default_rng(seed).random(inter.height)
        labels = np.where(u < train_frac, "train", np.where(u < train_frac + params.valid_frac, "valid", "test"))
        split = pl.Series("split", labels)
        info = {"kind": "random", "seed": seed}
    return inter.with_columns(split.alias("split")), info


def decade_of(year: pl.Expr) -> pl.Expr:
    return (year // 10 * 10).cast(pl.Utf8)


def build_vocab(values: pl.Series) -> dict[str, int]:
    """Sorted distinct non-null values -> 2.. (PAD=0 and OOV=1 are reserved)."""
    uniq = values.drop_nulls().cast(pl.Utf8).unique().sort().to_list()
    return {v: i + 2 for i, v in enumerate(uniq)}


def encode(values: pl.Series, vocab: dict[str, int]) -> pl.Series:
    """Map values through `vocab`; unknown -> OOV, null -> PAD."""
    s = values.cast(pl.Utf8)
    mapped = s.replace_strict(vocab, default=OOV, return_dtype=pl.Int32)
    return mapped.set(s.is_null(), PAD)


def item_catalogue(items: pl.DataFrame) -> pl.DataFrame:
    """Items sorted by id with a dense `item_code` (their row number): histories point into it."""
    return items.sort("item_id").with_row_index("item_code").with_columns(
        pl.col("item_code").cast(pl.Int32), decade_of(pl.col("year")).alias("decade")
    )


def build_features(
    interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame, params: FeatureParams, seed: int
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, FeatureMap, dict]:
    """Return ({split: frame}, item catalogue, feature map, summary metrics)."""
    catalogue = item_catalogue(items)
    inter = add_labels(interactions, params.click_threshold)
    inter = inter.join(catalogue.select("item_id", "item_code"), on="item_id", how="left")
    code = inter["item_code"]
    if code.null_count():
        missing = inter.filter(code.is_null())["item_id"].head(5).to_list()
        raise ValueError(f"{code.null_count()} interactions refer to items missing from the items table, e.g. {missing}")
    inter, split_info = assign_split(inter, params, seed)
    inter = add_history(inter, params.history_len)

    train = inter.filter(pl.col("split") == "train")
    feat = inter.join(users, on="user_id", how="left").join(
        catalogue.select("item_id", "decade", "genres"), on="item_id", how="left"
    )
    vocabs = {
        "user": build_vocab(train["user_id"]),
        "item": build_vocab(train["item_id"]),
        "gender": build_vocab(users["gender"]),
        "age": build_vocab(users["age"]),
        "occupation": build_vocab(users["occupation"]),
        "decade": build_vocab(catalogue["decade"]),
        "genre": build_vocab(catalogue["genres"].explode()),
    }
    # Item index per catalogue row, so history codes map to model indices in one gather.
    item_idx_by_code = encode(catalogue["item_id"], vocabs["item"]).to_numpy()
    hist_code = np.stack(feat["hist_item_code"].to_numpy()) if feat.height else np.zeros((0, params.history_len), np.int32)
    hist_idx = np.where(hist_code >= 0, item_idx_by_code[np.maximum(hist_code, 0)], PAD).astype(np.int32)
    genre_vocab = vocabs["genre"]
    feat = feat.with_columns(
        encode(feat["user_id"], vocabs["user"]).alias("user_idx"),
        encode(feat["item_id"], vocabs["item"]).alias("item_idx"),
        encode(feat["gender"], vocabs["gender"]).alias("gender_idx"),
        encode(feat["age"], vocabs["age"]).alias("age_idx"),
        encode(feat["occupation"], vocabs["occupation"]).alias("occupation_idx"),
        encode(feat["decade"], vocabs["decade"]).alias("decade_idx"),
        pl.Series("hist_item_idx", hist_idx),
        pl.col("genres")
        .list.head(params.max_genres)
        .list.eval(pl.element().replace_strict(genre_vocab, default=OOV, return_dtype=pl.Int32))
        .list.concat(pl.lit([PAD] * params.max_genres, dtype=pl.List(pl.Int32)))
        .list.head(params.max_genres)
        .list.to_array(params.max_genres)
        .alias("genre_idx"),
    ).drop("genres", "decade", "gender", "age", "occupation")

    fmap = FeatureMap(vocabs, params.history_len, params.max_genres, params.click_threshold,
                      meta={"split": split_info})
    frames = {s: feat.filter(pl.col("split") == s).drop("split") for s in SPLITS}
    summary = {
        "rows": {s: frames[s].height for s in SPLITS},
        "label_rate": {s: _mean(frames[s]["label"]) for s in SPLITS},
        "mean_history_len": {s: _mean(frames[s]["hist_len"]) for s in SPLITS},
        "vocab_size": {k: len(v) for k, v in vocabs.items()},
        "oov_item_rate_test": _mean((frames["test"]["item_idx"] == OOV).cast(pl.Float64)),
        "oov_user_rate_test": _mean((frames["test"]["user_idx"] == OOV).cast(pl.Float64)),
        "split": split_info,
    }
    return frames, catalogue, fmap, summary


def _mean(s: pl.Series) -> float:
    return float(s.cast(pl.Float64).mean() or 0.0) if len(s) else 0.0



def write_reference(raw: Path, params: FeatureParams, seed: int, out: Path) -> None:
    """The reference build's features files (without validation) from a raw_data directory."""
    tables = {name: pl.read_parquet(raw / f"{name}.parquet") for name in ("interactions", "items", "users")}
    frames, catalogue, fmap, _ = build_features(tables["interactions"], tables["items"], tables["users"], params, seed)
    out.mkdir(parents=True)
    for s in SPLITS:
        frames[s].write_parquet(out / f"{s}.parquet")
    catalogue.write_parquet(out / "items.parquet")
    (out / "feature_map.json").write_text(fmap.to_json())
