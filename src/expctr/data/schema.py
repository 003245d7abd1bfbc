"""The normalised data contract every source is parsed into.

Parsers return a `RawStream` (interactions in batches, so a file of any size is read in bounded memory) or,
collected, a `RawTables`; everything downstream relies only on these columns and dtypes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "rating": pl.Float32,
    "timestamp": pl.Int64,  # seconds since epoch; 0 where the source has no time
}
ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "year": pl.Int32,  # null where unknown
    "genres": pl.List(pl.Utf8),  # empty list where unknown (books: [], Amazon: categories)
}
USERS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "gender": pl.Utf8,  # null where unknown
    "age": pl.Int32,  # null where unknown
    "occupation": pl.Utf8,  # null where unknown
}


@dataclass
class RawTables:
    """Interactions, items and (possibly empty) users, in the normalised schema."""

    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame

    def conformed(self) -> RawTables:
        """Select and cast to the contract's columns, in order (missing user columns become null)."""
        return RawTables(
            interactions=conform(self.interactions, INTERACTIONS_SCHEMA),
            items=conform(self.items, ITEMS_SCHEMA),
            users=conform(self.users, USERS_SCHEMA),
        )


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Return `df` with exactly `schema`'s columns, cast; absent columns are added as nulls."""
    cols = []
    for name, dtype in schema.items():
        if name in df.columns:
            cols.append(pl.col(name).cast(dtype, strict=True))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(cols)


def empty_users() -> pl.DataFrame:
    return pl.DataFrame(schema=USERS_SCHEMA)


@dataclass
class RawStream:
    """A parsed source whose interactions arrive as conformed batches in file order.

    Items and users are bounded by the catalogue, not by the interaction count, so they are whole frames;
    `finish()` returns them once every batch has been read (Amazon adds the reviewed items that have no
    metadata, which are only known then).
    """

    batches: Iterator[pl.DataFrame]
    finish: Callable[[], tuple[pl.DataFrame, pl.DataFrame]]

    def collect(self) -> RawTables:
        """Everything in memory: for small data and tests; the stages stream instead."""
        frames = list(self.batches)
        inter = pl.concat(frames, rechunk=True) if frames else pl.DataFrame(schema=INTERACTIONS_SCHEMA)
        items, users = self.finish()
        return RawTables(inter, items, users)
