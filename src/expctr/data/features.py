"""Features: click labels, leakage-free histories, time-based splits, ID vocabularies and a feature map.

History contract: for each interaction, the K most recent interactions of the same user
with a timestamp *strictly before* the target's. Interactions sharing the target's second are never
history (MovieLens users rate in bursts within one second). Histories may reach into earlier splits;
that is the past, not a leak.

Out of core (`FeatureBuilder`): everything global is small or an aggregate (the item catalogue, the split
cut-offs from a timestamp histogram, the vocabularies from the distinct training ids), and everything per
row needs only the row's own user. So the rows are read once in batches (labels, item codes, split) and
routed to user partitions, and each partition is then sorted, given its histories and encoded alone. The
partitions in order are the rows sorted by user, exactly the rows and order the in-memory build produced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from expctr.config import FeatureParams
from expctr.data.partitions import PartitionSpill, UserPartitions, plan_partitions

PAD, OOV = 0, 1
SPLITS = ("train", "valid", "test")
# Categorical fields of the CTR models, in the order of the shared embedding table.
SCALAR_FIELDS = ("user", "item", "gender", "age", "occupation", "decade")
HIST_CLICK_PAD, HIST_CLICK_NO, HIST_CLICK_YES = 0, 1, 2


@dataclass
class FeatureMap:
    """Vocabularies (value -> index, PAD=0, OOV=1) per field plus the shapes the models need."""

    vocabs: dict[str, dict[str, int]]
    history_len: int
    max_genres: int
    click_threshold: float
    meta: dict = field(default_factory=dict)

    def size(self, name: str) -> int:
        return len(self.vocabs[name]) + 2

    def to_json(self) -> str:
        return json.dumps(
            {"vocabs": self.vocabs, "history_len": self.history_len, "max_genres": self.max_genres,
             "click_threshold": self.click_threshold, "meta": self.meta, "pad": PAD, "oov": OOV},
            indent=1, sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureMap:
        d = json.loads(text)
        return cls(d["vocabs"], d["history_len"], d["max_genres"], d["click_threshold"], d.get("meta", {}))

    @classmethod
    def load(cls, path: str | Path) -> FeatureMap:
        return cls.from_json(Path(path).read_text())


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
    # Compare users via run ids of the sorted column: equality on integers is much cheaper than on strings.
    user_codes = inter["user_id"].rle_id().to_numpy()
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


def time_cutoffs(ts_counts: pl.DataFrame, params: FeatureParams) -> dict:
    """Global time cut-offs from a histogram (timestamp, n) sorted by timestamp.

    The cut-off is the timestamp at the target share's row of the sorted timestamps; ties at it go to the
    later split. The histogram stands for the sorted column: row k is the first timestamp whose running
    count exceeds k."""
    train_frac = 1.0 - params.valid_frac - params.test_frac
    cum = ts_counts["n"].cast(pl.Int64).cum_sum().to_numpy()
    values = ts_counts["timestamp"].to_numpy()
    n = int(cum[-1]) if len(cum) else 0

    def at(row: int) -> int:
        return int(values[np.searchsorted(cum, row, side="right")])

    t_valid = at(min(int(n * train_frac), n - 1)) if n else 0
    t_test = at(min(int(n * (train_frac + params.valid_frac)), n - 1)) if n else 0
    return {"kind": "time", "valid_from_ts": t_valid, "test_from_ts": t_test}


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


class FeatureBuilder:
    """Builds the features in three passes with memory bounded by one partition (module docstring):

    1. `plan(interactions)`: streaming aggregates: the item check, the split cut-offs, users' row counts;
    2. `prepare(batch)` on every batch in file order: label, item code, split (a random split draws from
       one seeded generator in file order, as the in-memory build did); the training ids are collected;
    3. `featurize(partition)` on each user partition in order: histories, joins and encoding.
    """

    def __init__(self, items: pl.DataFrame, users: pl.DataFrame, params: FeatureParams, seed: int):
        self.params, self.seed, self.users = params, seed, users
        self.catalogue = item_catalogue(items)
        self.split_info: dict = {}
        self.partitions = UserPartitions(pl.Series("user_id", [], pl.Utf8), ())
        self.split_rows = dict.fromkeys(SPLITS, 0)
        self._train_ids: dict[str, list[pl.Series]] = {"user_id": [], "item_id": []}
        self._rng = np.random.default_rng(seed)
        self._vocabs: dict[str, dict[str, int]] | None = None
        self._codes: dict[str, tuple[pl.Series, pl.Series]] = {}
        self._sums = {s: {"label": 0, "hist_len": 0, "oov_item": 0, "oov_user": 0} for s in SPLITS}

    # ---------------------------------------------------------------------------------- pass 1
    def plan(self, interactions: pl.LazyFrame, chunk_rows: int) -> UserPartitions:
        """One streaming pass of aggregates; fails early when interactions name unknown items."""
        known = self.catalogue["item_id"].implode()
        missing = interactions.filter(pl.col("item_id").is_null() | ~pl.col("item_id").is_in(known))
        queries = [
            missing.select(pl.len()),
            missing.select("item_id").head(5),
            interactions.group_by("user_id").agg(pl.len().alias("n")).sort("user_id"),
        ]
        if self.params.split == "time":
            queries.append(interactions.group_by("timestamp").agg(pl.len().alias("n")).sort("timestamp"))
        n_missing, examples, counts, *ts_counts = pl.collect_all(queries, engine="streaming")
        if n_missing.item():
            raise ValueError(f"{n_missing.item()} interactions refer to items missing from the items table, "
                             f"e.g. {examples['item_id'].to_list()}")
        self.split_info = (time_cutoffs(ts_counts[0], self.params) if ts_counts
                           else {"kind": "random", "seed": self.seed})
        self.partitions = plan_partitions(counts, chunk_rows)
        return self.partitions

    # ---------------------------------------------------------------------------------- pass 2
    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Label, item code and split of one batch of interactions (batches in file order)."""
        codes = self.catalogue.select("item_id", "item_code")
        inter = add_labels(batch, self.params.click_threshold)
        inter = inter.join(codes, on="item_id", how="left", maintain_order="left")
        inter = inter.with_columns(self._split(inter.height))
        for name, rows in inter.group_by("split").len().iter_rows():
            self.split_rows[name] += rows
        train = inter.filter(pl.col("split") == "train")
        for column, seen in self._train_ids.items():
            seen.append(train[column].unique())
        return inter

    def _split(self, height: int) -> pl.Expr | pl.Series:
        train_frac = 1.0 - self.params.valid_frac - self.params.test_frac
        if self.split_info["kind"] == "time":
            return (
                pl.when(pl.col("timestamp") < self.split_info["valid_from_ts"]).then(pl.lit("train"))
                .when(pl.col("timestamp") < self.split_info["test_from_ts"]).then(pl.lit("valid"))
                .otherwise(pl.lit("test"))
            ).alias("split")
        u = self._rng.random(height)
        labels = np.where(u < train_frac, "train", np.where(u < train_frac + self.params.valid_frac, "valid", "test"))
        return pl.Series("split", labels, dtype=pl.Utf8)

    def feature_map(self) -> FeatureMap:
        """Vocabularies (training ids, users table, catalogue) once every batch went through `prepare`."""
        catalogue, users = self.catalogue, self.users
        train = {c: pl.concat(v) if v else pl.Series(c, [], pl.Utf8) for c, v in self._train_ids.items()}
        self._vocabs = {
            "user": build_vocab(train["user_id"]),
            "item": build_vocab(train["item_id"]),
            "gender": build_vocab(users["gender"]),
            "age": build_vocab(users["age"]),
            "occupation": build_vocab(users["occupation"]),
            "decade": build_vocab(catalogue["decade"]),
            "genre": build_vocab(catalogue["genres"].explode()),
        }
        self._codes = {k: (pl.Series(list(v), dtype=pl.Utf8), pl.Series(list(v.values()), dtype=pl.Int32))
                       for k, v in self._vocabs.items()}
        self._item_idx_by_code = self._encode(catalogue["item_id"], "item").to_numpy()
        return FeatureMap(self._vocabs, self.params.history_len, self.params.max_genres,
                          self.params.click_threshold, meta={"split": self.split_info})

    # ---------------------------------------------------------------------------------- pass 3
    def _encode(self, values: pl.Series, field_name: str) -> pl.Series:
        """`encode` with the vocabulary as prepared series (a dict would be converted on every call)."""
        old, new = self._codes[field_name]
        s = values.cast(pl.Utf8)
        return s.replace_strict(old, new, default=OOV, return_dtype=pl.Int32).set(s.is_null(), PAD)

    def featurize(self, part: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """The finished rows of one user partition, per split, sorted by (user, timestamp, item)."""
        params, catalogue = self.params, self.catalogue
        inter = add_history(part, params.history_len)
        feat = inter.join(self.users, on="user_id", how="left", maintain_order="left").join(
            catalogue.select("item_id", "decade", "genres"), on="item_id", how="left", maintain_order="left"
        )
        # an Array column: to_numpy() is already (N, k); np.stack would copy it row by row
        hist_code = (feat["hist_item_code"].to_numpy().reshape(-1, params.history_len) if feat.height
                     else np.zeros((0, params.history_len), np.int32))
        hist_idx = np.where(hist_code >= 0, self._item_idx_by_code[np.maximum(hist_code, 0)], PAD).astype(np.int32)
        old, new = self._codes["genre"]
        feat = feat.with_columns(
            self._encode(feat["user_id"], "user").alias("user_idx"),
            self._encode(feat["item_id"], "item").alias("item_idx"),
            self._encode(feat["gender"], "gender").alias("gender_idx"),
            self._encode(feat["age"], "age").alias("age_idx"),
            self._encode(feat["occupation"], "occupation").alias("occupation_idx"),
            self._encode(feat["decade"], "decade").alias("decade_idx"),
            pl.Series("hist_item_idx", hist_idx),
            pl.col("genres")
            .list.head(params.max_genres)
            .list.eval(pl.element().replace_strict(old, new, default=OOV, return_dtype=pl.Int32))
            .list.concat(pl.lit([PAD] * params.max_genres, dtype=pl.List(pl.Int32)))
            .list.head(params.max_genres)
            .list.to_array(params.max_genres)
            .alias("genre_idx"),
        ).drop("genres", "decade", "gender", "age", "occupation")
        frames = {s: feat.filter(pl.col("split") == s).drop("split") for s in SPLITS}
        for s, frame in frames.items():
            sums = self._sums[s]
            sums["label"] += int(frame["label"].cast(pl.Int64).sum())
            sums["hist_len"] += int(frame["hist_len"].cast(pl.Int64).sum())
            sums["oov_item"] += int((frame["item_idx"] == OOV).sum())
            sums["oov_user"] += int((frame["user_idx"] == OOV).sum())
        return frames

    def summary(self) -> dict:
        """Summary metrics, from exact integer sums over all partitions."""
        rows = self.split_rows

        def rate(s: str, key: str) -> float:
            return self._sums[s][key] / rows[s] if rows[s] else 0.0

        assert self._vocabs is not None, "feature_map() first"
        return {
            "rows": dict(rows),
            "label_rate": {s: rate(s, "label") for s in SPLITS},
            "mean_history_len": {s: rate(s, "hist_len") for s in SPLITS},
            "vocab_size": {k: len(v) for k, v in self._vocabs.items()},
            "oov_item_rate_test": rate("test", "oov_item"),
            "oov_user_rate_test": rate("test", "oov_user"),
            "split": self.split_info,
        }


def featurize_partitions(
    builder: FeatureBuilder, interactions: pl.LazyFrame, batches: Iterable[pl.DataFrame], chunk_rows: int,
    work_dir: Path,
) -> tuple[FeatureMap, Iterator[dict[str, pl.DataFrame]]]:
    """Passes 1 and 2 now (the feature map and `builder.split_rows` are then final); pass 3 as an iterator
    of each partition's frames per split, in order. `batches` are the interactions in file order."""
    spill = PartitionSpill(work_dir, builder.plan(interactions, chunk_rows), chunk_rows)
    seen = False
    for batch in batches:
        spill.add(builder.prepare(batch))
        seen = True
    if not seen:  # no rows at all: one empty partition still gives every split its (empty) frame
        spill.add(builder.prepare(interactions.head(0).collect()))
    fmap = builder.feature_map()
    return fmap, (builder.featurize(part) for part in spill)


def build_features(
    interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame, params: FeatureParams, seed: int
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, FeatureMap, dict]:
    """In memory, as one partition: returns ({split: frame}, item catalogue, feature map, summary metrics)."""
    builder = FeatureBuilder(items, users, params, seed)
    fmap, parts = featurize_partitions(builder, interactions.lazy(), [interactions], 2**62, Path("unused"))
    (frames,) = list(parts)  # one partition: nothing was written to the work directory
    return frames, builder.catalogue, fmap, builder.summary()


def _mean(s: pl.Series) -> float:
    return float(s.cast(pl.Float64).mean() or 0.0) if len(s) else 0.0


def split_history(hist_item_code: np.ndarray, hist_click: np.ndarray) -> tuple[list[int], list[int]]:
    """(liked codes, disliked codes) of one row's history, most recent last."""
    liked = [int(c) for c, k in zip(hist_item_code, hist_click) if k == HIST_CLICK_YES]
    disliked = [int(c) for c, k in zip(hist_item_code, hist_click) if k == HIST_CLICK_NO]
    return liked, disliked
