"""Typing parsed text columns into the contract's values, and conforming the small tables.

Every parser keeps ids as strings, ratings as Float32 and timestamps as Int64 seconds, and de-duplicates
nothing: validation happens later, on the normalised tables. The first value that is missing or not a
number is reported with its file, line and the line's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from expctr.data.parsers.reader import LINE, RAW, fail
from expctr.data.schema import INTERACTIONS_SCHEMA, RawStream, RawTables, conform

EMPTY_GENRES = pl.lit([], dtype=pl.List(pl.Utf8))
_TITLE_YEAR = r"^(.*?)\s*\((\d{4})\)\s*$"  # "Toy Story (1995)" -> "Toy Story", "1995"


def number(text: pl.Expr, kind: str) -> pl.Expr:
    """Parse text as `float`, `int` (integral floats such as '978300760.0' accepted) or numeric `id`."""
    text = text.str.strip_chars()
    as_float = text.cast(pl.Float64, strict=False).fill_nan(None)
    if kind == "float":
        return as_float
    if kind == "int":
        return pl.coalesce(text.cast(pl.Int64, strict=False), as_float.floor().cast(pl.Int64, strict=False))
    return pl.when(text.str.contains(r"^\d+$")).then(text)  # "id": digits only, kept as a string


def typed(
    path: Path, df: pl.DataFrame, kinds: dict[str, str], optional: tuple[str, ...] = (), headerless: bool = False
) -> pl.DataFrame:
    """Cast text columns; the first value that is missing (unless optional) or not a number is reported.

    `headerless`: the format has no header line, so a bad first line is often a header someone added."""
    for col, kind in kinds.items():
        text = pl.col(col).str.strip_chars()
        value = number(pl.col(col), kind)
        empty = text.is_null() | (text == "")
        bad = df.filter((value.is_null() & ~empty) if col in optional else value.is_null())
        if not bad.is_empty():
            row = bad.row(0, named=True)
            expected = "a numeric id" if kind == "id" else "an integer" if kind == "int" else "a number"
            found = repr(row[col]) if row[col] not in (None, "") else "an empty field"
            hint = "; this format has no header line" if headerless and row[LINE] == 1 else ""
            raise fail(path, f"column {col!r}: expected {expected}, found {found}{hint}", row[LINE], row.get(RAW))
        df = df.with_columns(value.alias(col))
    return df


def year(text: pl.Expr) -> pl.Expr:
    """A year is optional metadata: empty, unparseable or 0 (Book-Crossing's 'unknown') become null."""
    value = number(text, "int")
    return pl.when(value.is_between(1, 9999)).then(value)


def int_token(text: pl.Expr) -> pl.Expr:
    """RecBole stores some codes as floats ('10.0'); as a category the integral ones read better as '10'."""
    value = text.str.strip_chars().cast(pl.Float64, strict=False)
    integral = value.is_not_null() & value.is_finite() & (value == value.floor())
    return pl.when(integral).then(value.cast(pl.Int64).cast(pl.Utf8)).otherwise(text.str.strip_chars())


def title_and_year(text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """MovieLens titles carry the year, 'Toy Story (1995)': split it off so `title` is the bare name."""
    text = text.str.strip_chars()
    title = pl.coalesce(text.str.extract(_TITLE_YEAR, 1), text)
    return title, year(text.str.extract(_TITLE_YEAR, 2))


def genre_list(text: pl.Expr, pattern: str) -> pl.Expr:
    """Split a genre field into a list (`pattern` matches one genre); a missing field gives []."""
    return text.str.extract_all(pattern).fill_null(EMPTY_GENRES)


def small_tables(items: pl.DataFrame, users: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Conform to the contract; an item without a usable title is titled with its id (title is non-null)."""
    title = pl.col("title").str.strip_chars()
    usable = title.is_not_null() & (title != "")
    items = items.with_columns(
        pl.when(usable).then(pl.col("title")).otherwise(pl.col("item_id")).alias("title")
    )
    tables = RawTables(pl.DataFrame(schema=INTERACTIONS_SCHEMA), items, users).conformed()
    return tables.items, tables.users


def stream(batches: Iterator[pl.DataFrame], items: pl.DataFrame, users: pl.DataFrame) -> RawStream:
    """Interaction batches conformed one by one, with the small tables conformed now."""
    small = small_tables(items, users)
    return RawStream((conform(b, INTERACTIONS_SCHEMA) for b in batches), lambda: small)
