"""User partitions: consecutive ranges of the sorted user ids, each with about `chunk_rows` interactions.

Everything that looks across a user's rows (the history build, uniqueness of (user, item, timestamp)) is
complete inside one partition, and the partitions in order are the rows sorted by user. So the features
are built, validated and appended one partition at a time, and peak memory follows `chunk_rows`, not the
data size. A user is never split, so a partition exceeds `chunk_rows` by at most one user's rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from expctr.data.spill import RowStore

PART = "_part"  # bookkeeping column: the row's partition


@dataclass(frozen=True)
class UserPartitions:
    """`starts`: the first user id of partitions 1..n-1 (partition 0 starts at the smallest id)."""

    starts: pl.Series
    rows: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.rows)

    def of(self, user_id: pl.Series) -> pl.Series:
        """The partition of each row, by binary search in the sorted partition starts."""
        if not len(self.starts):
            return pl.repeat(0, len(user_id), dtype=pl.UInt32, eager=True).alias(PART)
        return self.starts.search_sorted(user_id, side="right").cast(pl.UInt32).alias(PART)


def user_counts(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Interactions per user over frames read one at a time: (user_id, n) sorted by user_id."""
    parts = [df.group_by("user_id").agg(pl.len().alias("n")) for df in frames]
    if not parts:
        return pl.DataFrame(schema={"user_id": pl.Utf8, "n": pl.UInt32})
    return pl.concat(parts).group_by("user_id").agg(pl.col("n").sum()).sort("user_id")


def plan_partitions(counts: pl.DataFrame, chunk_rows: int) -> UserPartitions:
    """Cut the sorted users into consecutive ranges of about `chunk_rows` interactions each."""
    before = counts["n"].cast(pl.Int64).cum_sum() - counts["n"].cast(pl.Int64)
    part = (before // chunk_rows).rle_id()  # users whose earlier rows fill the same chunk share a partition
    frame = counts.with_columns(part.alias(PART))
    firsts = frame.group_by(PART, maintain_order=True).agg(pl.col("user_id").first(), pl.col("n").sum())
    return UserPartitions(starts=firsts["user_id"].slice(1), rows=tuple(int(n) for n in firsts["n"]))


class PartitionSpill:
    """Rows routed to their partition; read back one partition at a time, each in arrival order.

    With one partition nothing goes to disk. With several, at most about `chunk_rows` rows are buffered
    in memory in all (each partition's buffer is written out as a piece once it holds its share)."""

    def __init__(self, directory: Path, partitions: UserPartitions, chunk_rows: int):
        self.partitions = partitions
        n = partitions.count
        if n <= 1:
            self._stores = [RowStore(Path(directory) / "p0", memory_rows=2**62)]
        else:
            piece = max(chunk_rows // n, 10_000)
            self._stores = [RowStore(Path(directory) / f"p{i:05d}", memory_rows=0, piece_rows=piece)
                            for i in range(n)]

    def add(self, df: pl.DataFrame) -> None:
        """Route `df`'s rows to their partitions (by `user_id`)."""
        if len(self._stores) == 1:
            self._stores[0].add(df)
            return
        tagged = df.with_columns(self.partitions.of(df["user_id"]))
        for (part,), rows in tagged.partition_by(PART, as_dict=True, maintain_order=True).items():
            self._stores[part].add(rows.drop(PART))

    def __iter__(self) -> Iterator[pl.DataFrame]:
        """Each partition's rows as one frame, partition by partition; its pieces are removed once read."""
        for store in self._stores:
            frame = store.collect()
            store.remove()
            yield frame
