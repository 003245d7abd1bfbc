"""Amazon reviews and metadata, JSON lines (2014, 2018, 2023 layouts; plain or `.gz`).

One record per line, so every fault is on the line it names. The 2014 metadata is Python dict literals
(single quotes), read with `ast.literal_eval` where JSON fails.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from expctr.data.parsers.reader import BATCH_BYTES, concat, encoding_error, peeked, require_file
from expctr.data.parsers.values import EMPTY_GENRES, small_tables
from expctr.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, RawStream, RawTables, conform, empty_users
from expctr.errors import DataFormatError

_YEAR_IN_TEXT = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_REVIEW_SCHEMA = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64, "timestamp": pl.Int64}


def _json_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield (line number, line, record) from JSON lines, plain or `.gz`; Python dict literals also work.

    Lines are read as bytes and decoded one by one, so an undecodable byte is reported on its own line."""
    opener = gzip.open if require_file(path).suffix == ".gz" else open
    number, records = 0, 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise encoding_error(path, raw, number, "utf-8", exc) from None
                if line.endswith("\r\n"):
                    line = line[:-2] + "\n"
                if line.strip():
                    records += 1
                    yield number, line, _record(path, number, line)
    except (OSError, EOFError) as exc:  # truncated/corrupt gzip
        raise DataFormatError(path, f"cannot be read past this line ({exc})", row=number + 1) from None
    if not records:
        raise DataFormatError(path, "empty file; expected one JSON object per line")


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    """Parse one line as JSON, else as a Python literal (the 2014 metadata uses single quotes)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            quotes = line.count('"') - line.count('\\"')
            hint = "; the line has an odd number of '\"': a string is not closed" if quotes % 2 else ""
            raise DataFormatError(
                path, f"not valid JSON ({exc.msg} at column {exc.colno}){hint}; expected one JSON object per line",
                number, line.rstrip("\r\n"),
            ) from None
    if not isinstance(record, dict):
        raise DataFormatError(path, f"expected a JSON object, found {type(record).__name__}", number,
                              line.rstrip("\r\n"))
    return record


def _get(path: Path, number: int, line: str, record: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` present with a value: the 2014/2018 and 2023 layouts name fields differently."""
    for key in keys:
        if record.get(key) not in (None, ""):
            return record[key]
    raise DataFormatError(path, f"missing key {' or '.join(map(repr, keys))}", number, line.rstrip("\r\n"))


def _as_number(path: Path, number: int, line: str, value: Any, key: str) -> float:
    """A rating or time must be numeric (numeric strings are tolerated); booleans are not numbers."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise DataFormatError(
            path, f"key {key!r}: expected a number, found {value!r}", number, line.rstrip("\r\n")
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
    key = "overall" if rec.get("overall") not in (None, "") else "rating"
    rating = _as_number(path, number, line, _get(path, number, line, rec, "overall", "rating"), key)
    key = "unixReviewTime" if rec.get("unixReviewTime") not in (None, "") else "timestamp"
    seconds = _as_number(path, number, line, _get(path, number, line, rec, "unixReviewTime", "timestamp"), key)
    return user, item, rating, int(seconds // 1000 if key == "timestamp" else seconds)


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
    reviews = peeked(_json_batches(Path(reviews_path), _amazon_review, _REVIEW_SCHEMA, batch_bytes))
    meta = (
        concat(_json_batches(Path(meta_path), _amazon_item, ITEMS_SCHEMA, batch_bytes))
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
            title=pl.col("item_id"), year=pl.lit(None, pl.Int32), genres=EMPTY_GENRES
        )
        return small_tables(pl.concat([meta, missing]), empty_users())

    return RawStream((note_items(b) for b in reviews), finish)


def read_amazon(
    reviews_path: str | os.PathLike[str], meta_path: str | os.PathLike[str] | None = None
) -> RawTables:
    """`stream_amazon`, collected in memory."""
    return stream_amazon(reviews_path, meta_path).collect()
