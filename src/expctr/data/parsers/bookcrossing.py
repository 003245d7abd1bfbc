"""Book-Crossing `BX-*.csv`: ';'-separated, double-quoted fields, cp1252 with backslash-escaped quotes.

cp1252 falls back to latin-1 for its five undefined bytes, so every byte decodes. The quoting of the
real files is irregular enough that a small per-line Python parser reads them, not a CSV reader.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from expctr.data.parsers.reader import BATCH_BYTES, LINE, RAW, blocks, concat, decode, header_only, peeked
from expctr.data.parsers.values import EMPTY_GENRES, stream, typed, year
from expctr.data.schema import RawStream, RawTables
from expctr.errors import DataFormatError

_BX_FIELD = re.compile(
    r'"(?P<quoted>(?:[^"\\]|\\(?!"(?:;|$)).|"")*)\\?"(?=;|$)'  # "...", with \" and "" as escaped quotes
    r"|(?P<bare>[^;]*)"  # unquoted, e.g. Age NULL
)
_BX_IMAGES = ["Image-URL-S", "Image-URL-M", "Image-URL-L"]


def _bx_fields(line: str) -> list[str] | int:
    """Split one Book-Crossing line (see stream_bookcrossing for the quoting rules); for a quote that opens
    and never closes (a cut line), the 0-based position where it opens instead."""
    if "\\" not in line and line.startswith('"') and line.endswith('"'):
        fields = line[1:-1].split('";"')
        if line.count('"') == 2 * len(fields):
            return fields
    fields, pos = [], 0
    while True:
        match = _BX_FIELD.match(line, pos)
        assert match is not None  # the bare branch matches anything, even the empty string
        if match["quoted"] is not None:
            fields.append(match["quoted"].replace('\\"', '"').replace('""', '"'))
        elif match["bare"].startswith('"') and (match["bare"] == '"' or not match["bare"].endswith('"')):
            return pos  # a quote opened and never closed: the line was cut
        else:
            fields.append(match["bare"].strip('"'))
        pos = match.end() + 1
        if pos > len(line):
            return fields


def _bx_batches(path: Path, names: list[str], batch_bytes: int = BATCH_BYTES) -> Iterator[pl.DataFrame]:
    """A Book-Crossing file (cp1252, falling back to latin-1 per byte) whose header must equal `names`,
    block by block."""
    header: tuple[int, str] | None = None
    rows_seen = 0
    shape = f"{len(names)} ';'-separated quoted fields ({', '.join(names)})"
    for first, block in blocks(path, batch_bytes):
        lines, raws, rows = [], [], []
        for number, raw in enumerate(decode(path, block, first, "cp1252").split("\n"), first):
            raw = raw.removesuffix("\r")
            if not raw.strip():
                continue
            fields = _bx_fields(raw)
            if isinstance(fields, int):
                message = (f"unclosed quote: the quoted field that opens at column {fields + 1} does not close; "
                           f"expected {shape}, each closed by '\"' before ';' or the line end; the line is truncated, "
                           "or a quote inside a field is not escaped")
                raise DataFormatError(path, message, row=number, line=raw)
            if header is None:
                if fields != names:
                    missing = [n for n in names if n not in fields]
                    detail = f"; missing {missing}" if missing else ""
                    raise DataFormatError(path, f"unexpected header; expected {names}, found {fields}{detail}",
                                          row=number, line=raw)
                header = number, raw
                continue
            if len(fields) != len(names):
                cause = ("a field too many: an unescaped '\";\"' inside a value, or a stray ';'"
                         if len(fields) > len(names) else "the line is truncated or a field is missing")
                raise DataFormatError(path, f"expected {shape}, found {len(fields)} fields; {cause}",
                                      row=number, line=raw)
            lines.append(number)
            raws.append(raw)
            rows.append(fields)
        rows_seen += len(rows)
        columns = list(zip(*rows)) if rows else [()] * len(names)
        data = {LINE: lines, RAW: raws, **dict(zip(names, columns))}
        yield pl.DataFrame(data, schema={LINE: pl.Int64, RAW: pl.Utf8, **{n: pl.Utf8 for n in names}})
    if header is None:
        raise DataFormatError(path, f"empty file; expected a header with {names}")
    if not rows_seen:
        raise header_only(path, header[1], names, header[0])


def _read_bx(path: Path, names: list[str]) -> pl.DataFrame:
    """A whole Book-Crossing file (the small books and users tables)."""
    return concat(_bx_batches(path, names))


def stream_bookcrossing(directory: str | os.PathLike[str], batch_bytes: int = BATCH_BYTES) -> RawStream:
    """Book-Crossing `BX-Book-Ratings.csv`, `BX-Books.csv`, `BX-Users.csv` (';'-separated, quoted, cp1252).

    The dataset has no timestamps: every interaction gets timestamp 0, so a time split is impossible and
    downstream uses a random split for it. Year 0 becomes null, genres are [], Age NULL becomes null.

    Quoting: fields are double-quoted; inside them the real files escape quotes as \\" (also "" is
    accepted). A \\" directly before ';' or the line end closes the field (a stray backslash, as in the
    known rows '...Readers)\\";Michael Teitelbaum";...'), and a bare field loses stray quotes, so those rows
    keep 8 fields. A line whose field count still differs, or whose last quote never closes, is an error.
    """
    base = Path(directory)
    ratings_path, books_path, users_path = (base / f"BX-{n}.csv" for n in ("Book-Ratings", "Books", "Users"))
    interactions = peeked(
        typed(ratings_path, df, {"User-ID": "id", "Book-Rating": "float"}).select(
            pl.col("User-ID").alias("user_id"),
            pl.col("ISBN").str.strip_chars().alias("item_id"),
            pl.col("Book-Rating").alias("rating"),
            pl.lit(0, pl.Int64).alias("timestamp"),
        )
        for df in _bx_batches(ratings_path, ["User-ID", "ISBN", "Book-Rating"], batch_bytes)
    )
    names = ["ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher", *_BX_IMAGES]
    books = _read_bx(books_path, names)
    items = books.select(
        pl.col("ISBN").str.strip_chars().alias("item_id"),
        pl.col("Book-Title").alias("title"),
        year(pl.col("Year-Of-Publication")).alias("year"),
        EMPTY_GENRES.alias("genres"),
    )
    users = _read_bx(users_path, ["User-ID", "Location", "Age"])
    age = pl.col("Age")
    users = users.with_columns(
        pl.when(age.str.strip_chars().str.to_uppercase() != "NULL").then(age).alias("Age")
    )
    users = typed(users_path, users, {"User-ID": "id", "Age": "int"}, optional=("Age",))
    users = users.select(pl.col("User-ID").alias("user_id"), pl.col("Age").alias("age"))
    return stream(interactions, items, users)


def read_bookcrossing(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_bookcrossing`, collected in memory."""
    return stream_bookcrossing(directory).collect()
