"""MovieLens `ratings.csv` and `movies.csv` (ml-latest, ml-20m, ml-25m): UTF-8 CSV with a header, quoted.

polars' CSV reader parses each block. It does not say where a malformed line is, and a quote left open
makes it read on into the following lines, so quoting is checked line by line first (the block cutting
already assumes no quoted field spans lines; none does in these files), and when polars still fails the
block is re-read with Python's csv module to find the line.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from expctr.data.parsers.reader import (
    BATCH_BYTES,
    LINE,
    RAW,
    blocks,
    concat,
    count_message,
    encoding_error,
    header_only,
    line_text,
    lines_frame,
    peeked,
    require_columns,
    require_file,
    require_rows,
)
from expctr.data.parsers.values import genre_list, stream, title_and_year, typed
from expctr.data.schema import RawStream, RawTables, empty_users
from expctr.errors import DataFormatError


def stream_movielens_csv(directory: str | os.PathLike[str], batch_bytes: int = BATCH_BYTES) -> RawStream:
    """MovieLens `ratings.csv` and `movies.csv` (ml-latest, ml-20m, ml-25m); there is no users file.

    Titles may be quoted and contain commas; the year is split off the title; genres are '|'-separated,
    '(no genres listed)' becomes []. Blocks are cut at line ends, so a quoted field must not span lines
    (none does in these files).
    """
    base = Path(directory)
    ratings_path, movies_path = base / "ratings.csv", base / "movies.csv"
    kinds = {"userId": "id", "movieId": "id", "rating": "float", "timestamp": "int"}
    ratings = peeked(
        typed(ratings_path, df, kinds).rename({"userId": "user_id", "movieId": "item_id"})
        for df in _csv_batches(ratings_path, ["userId", "movieId", "rating", "timestamp"], batch_bytes)
    )
    movies = typed(movies_path, _read_csv(movies_path, ["movieId", "title", "genres"]), {"movieId": "id"})
    title, year = title_and_year(pl.col("title"))
    genres = pl.when(pl.col("genres").str.strip_chars() != "(no genres listed)").then(pl.col("genres"))
    items = movies.select(
        pl.col("movieId").alias("item_id"),
        title.alias("title"),
        year.alias("year"),
        genre_list(genres, r"[^|]+").alias("genres"),
    )
    return stream(ratings, items, empty_users())


def read_movielens_csv(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_movielens_csv`, collected in memory."""
    return stream_movielens_csv(directory).collect()


def _csv_batches(path: Path, names: list[str], batch_bytes: int = BATCH_BYTES) -> Iterator[pl.DataFrame]:
    """A standard quoted CSV with a header, block by block (each block is parsed under the file's header)."""
    if not require_file(path).stat().st_size:
        raise DataFormatError(path, f"empty file; expected a header line {','.join(names)} and data lines")
    return require_rows(_csv_blocks(path, names, batch_bytes), header_only(path, line_text(path, 1), names))


def _csv_blocks(path: Path, names: list[str], batch_bytes: int) -> Iterator[pl.DataFrame]:
    header = b""
    for first, block in blocks(path, batch_bytes):
        if first == 1:
            header = block[: block.find(b"\n") + 1] if b"\n" in block else block
            yield _csv_block(path, b"", block, 1, names)
        else:
            yield _csv_block(path, header, block, first, names)


def _read_csv(path: Path, names: list[str]) -> pl.DataFrame:
    """A whole standard CSV (the small movies table)."""
    return concat(_csv_batches(path, names))


def _csv_block(path: Path, header: bytes, block: bytes, first: int, names: list[str]) -> pl.DataFrame:
    """The lines of `block` (the first is line `first`; line 1 is the header) read as text under `header`
    (empty when the block starts with it); every field of `names` must be present."""
    if b'"' in block:
        _check_quotes(path, block, first)
    try:
        df = pl.read_csv(io.BytesIO(header + block), infer_schema=False)
    except pl.exceptions.NoDataError:  # only blank lines
        raise DataFormatError(path, f"empty file; expected a header line {','.join(names)} and data lines") from None
    except pl.exceptions.PolarsError as exc:  # a line with too many fields, or bytes that are not UTF-8
        raise _diagnose_csv(path, header, block, first, exc) from None
    columns = df.columns
    if first == 1:
        require_columns(path, columns, names, line_text(path, 1))
    blank = pl.all_horizontal(pl.col(columns).is_null())  # polars yields an all-null row for a blank line
    df = df.with_row_index(LINE, offset=first + 1 if first == 1 else first).filter(~blank)
    incomplete = df.filter(pl.any_horizontal(pl.col(names).is_null()))
    if not incomplete.is_empty():
        row = incomplete.row(0, named=True)
        line = line_text(path, row[LINE]) or ""
        found = len(next(csv.reader([line]), []))
        empty = [name for name in names if row[name] is None]
        message = count_message(columns, found, ",") if found != len(columns) else f"empty value in {empty}"
        raise DataFormatError(path, message, row=row[LINE], line=line)
    return df


def quote_fault(line: str) -> tuple[int, str] | None:
    """Where a line breaks CSV quoting and how, as (1-based column, message), or None when it does not.

    A field is either quoted, "..." with "" for a quote inside, and followed by a comma or the line end;
    or unquoted and free of quotes."""
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == '"':
            opened, j = i, i + 1
            while True:
                k = line.find('"', j)
                if k < 0:
                    return opened + 1, (
                        f"unclosed quote: the quoted field that opens at column {opened + 1} does not close on "
                        "this line; expected a closing '\"' before the end of the line (a quote inside a quoted "
                        "field is written \"\", and a field may not span lines)")
                if line.startswith('""', k):
                    j = k + 2
                    continue
                break
            i = k + 1
            if i < n and line[i] != ",":
                return i + 1, f"text after the closing quote at column {i}; expected ',' or the end of the line"
        else:
            end = line.find(",", i)
            end = n if end < 0 else end
            quote = line.find('"', i, end)
            if quote >= 0:
                return quote + 1, (f"a '\"' at column {quote + 1} inside an unquoted field; expected the field "
                                   "quoted, with \"\" for each quote inside it")
            i = end
        if i >= n:
            return None
        i += 1  # past the comma


def _check_quotes(path: Path, block: bytes, first: int) -> None:
    """Raise for the first line of the block whose quotes are unbalanced (the line where a quote opens and
    never closes), before polars reads on past it. An even number of quotes is left to polars."""
    lines = lines_frame(block.decode("utf-8", errors="replace"), first)
    odd = lines.filter(pl.col(RAW).str.count_matches('"', literal=True) % 2 == 1)
    for number, raw in odd.select(LINE, RAW).iter_rows():
        fault = quote_fault(raw)
        if fault is not None:
            raise DataFormatError(path, fault[1], row=number, line=raw)


def _diagnose_csv(path: Path, header: bytes, block: bytes, first: int, exc: Exception) -> DataFormatError:
    """polars stops at a malformed CSV line without naming it: find the line with Python's csv module."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as bad:
        return encoding_error(path, block, first, "utf-8", bad)
    columns = next(csv.reader([header.decode("utf-8", errors="replace")]), []) if header else None
    number = first
    for number, raw in enumerate(text.split("\n"), first):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        fault = quote_fault(raw)
        if fault is not None:
            return DataFormatError(path, fault[1], row=number, line=raw)
        fields = next(csv.reader([raw]), [])
        if columns is None:
            columns = fields
        elif len(fields) != len(columns):
            return DataFormatError(path, count_message(columns, len(fields), ","), row=number, line=raw)
    return DataFormatError(path, f"cannot be read as CSV: {str(exc).splitlines()[0]}", row=number)
