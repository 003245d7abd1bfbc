"""Reading source files in bounded memory, with every fault tied to its file and line.

Files are read in blocks of whole lines (`BATCH_BYTES` of text each), so a parser's memory is bounded by
the block, not by the file. Each block becomes a frame with one row per non-blank line, carrying the
line's 1-based number and text (`LINE`, `RAW`), so a check on any later column can still say which line
of which file is wrong and show it. Formats without quoting are split line by line with polars string
operations: unlike a CSV reader, that tells a truncated line from an empty field and keeps the exact line
number.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from expctr.errors import DataFormatError

LINE, RAW = "_line", "_raw"  # bookkeeping columns: 1-based line number and the line's text
BATCH_BYTES = 64 << 20  # text per parsed batch; a batch's frames take a few times this in memory


def _latin1_fallback(exc: UnicodeError) -> tuple[str, int]:
    """cp1252 leaves five bytes undefined; Book-Crossing files contain them, and latin-1 maps every byte."""
    assert isinstance(exc, UnicodeDecodeError)
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error("expctr-latin1", _latin1_fallback)


def require_file(path: Path) -> Path:
    """Fail early with the path a person has to provide, not with a bare FileNotFoundError."""
    if not path.is_file():
        raise DataFormatError(path, "file not found (missing or not a regular file)")
    return path


def blocks(path: Path, batch_bytes: int) -> Iterator[tuple[int, bytes]]:
    """The file as blocks of whole lines, about `batch_bytes` each, with the 1-based number of each block's
    first line. Cutting after a newline never splits a character in UTF-8 or a single-byte encoding."""
    with require_file(path).open("rb") as fh:
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


def encoding_error(path: Path, data: bytes, first: int, encoding: str, exc: UnicodeDecodeError) -> DataFormatError:
    """The error for an undecodable byte of `data` (whose first line is line `first`): its line and column."""
    start = data.rfind(b"\n", 0, exc.start) + 1
    end = data.find(b"\n", exc.start)
    line = data[start : end if end >= 0 else len(data)].rstrip(b"\r").decode(encoding, errors="replace")
    message = (f"expected {encoding} text, found byte 0x{data[exc.start]:02x} at column {exc.start - start + 1} "
               f"({exc.reason}); re-export the file as {encoding} or fix that byte")
    return DataFormatError(path, message, row=first + data.count(b"\n", 0, exc.start), line=line)


def decode(path: Path, block: bytes, first: int, encoding: str) -> str:
    """Decode one block; an undecodable byte is reported with its line instead of a UnicodeDecodeError."""
    errors = "expctr-latin1" if encoding == "cp1252" else "strict"
    try:
        text = block.decode(encoding, errors=errors)
    except UnicodeDecodeError as exc:
        raise encoding_error(path, block, first, encoding, exc) from None
    return text.removeprefix("\ufeff") if first == 1 else text


def line_text(path: Path, row: int) -> str | None:
    """The text of line `row`, for error messages about frames that polars' CSV reader produced."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        for number, line in enumerate(fh, 1):
            if number == row:
                return line.rstrip("\r\n")
    return None


def fail(path: Path, message: str, row: Any, raw: str | None) -> DataFormatError:
    """Build the error for one bad line, looking its text up in the file when the frame did not keep it."""
    row = int(row) if row is not None else None
    if raw is None and row is not None:
        raw = line_text(path, row)
    return DataFormatError(path, message, row=row, line=raw)


def lines_frame(text: str, first: int = 1) -> pl.DataFrame:
    """One row per non-blank line with its 1-based number, so every later check can point at the line."""
    raw = pl.Series(RAW, [text]).str.split("\n").explode().str.strip_suffix("\r")
    df = raw.to_frame().with_row_index(LINE, offset=first)
    return df.filter(pl.col(RAW).str.strip_chars() != "")


def text_batches(path: Path, encoding: str, batch_bytes: int) -> Iterator[pl.DataFrame]:
    """`lines_frame` of each block; an empty file gives one empty batch, so callers always see the columns."""
    empty = True
    for first, block in blocks(path, batch_bytes):
        empty = False
        yield lines_frame(decode(path, block, first, encoding), first)
    if empty:
        yield lines_frame("")


def require_rows(batches: Iterable[pl.DataFrame], error: DataFormatError) -> Iterator[pl.DataFrame]:
    """Pass the batches through; raise `error` after the last one when none held a row (an empty file, or
    a header and nothing after it: an export that was cut off, never a usable table)."""
    rows = 0
    for batch in batches:
        rows += batch.height
        yield batch
    if not rows:
        raise error


def peeked(batches: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Parse the first batch now, so a missing file or a bad header fails when the source is opened."""
    head = next(batches, None)
    return itertools.chain([] if head is None else [head], batches)


def concat(batches: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """A small table's batches as one frame (every batch iterator yields at least one frame)."""
    return pl.concat(list(batches), rechunk=True)


def count_message(names: list[str], found: int, sep: str) -> str:
    """Say what a whole line should contain and what the usual cause of the difference is."""
    cause = ("a field too many: a value containing the separator, or a stray separator"
             if found > len(names) else "the line is truncated or a field is missing")
    return f"expected {len(names)} fields separated by {sep!r} ({', '.join(names)}), found {found}; {cause}"


def split_fields(path: Path, lines: pl.DataFrame, sep: str, names: list[str]) -> pl.DataFrame:
    """Split unquoted lines on `sep`; a different field count means the line is truncated or malformed."""
    df = lines.with_columns(pl.col(RAW).str.split(sep).alias("_fields"))
    bad = df.filter(pl.col("_fields").list.len() != len(names))
    if not bad.is_empty():
        row = bad.row(0, named=True)
        raise fail(path, count_message(names, len(row["_fields"]), sep), row[LINE], row[RAW])
    fields = (pl.col("_fields").list.get(i).alias(name) for i, name in enumerate(names))
    return df.select(LINE, RAW, *fields)


def delimited_batches(
    path: Path, sep: str, names: list[str], encoding: str = "utf-8", batch_bytes: int = BATCH_BYTES
) -> Iterator[pl.DataFrame]:
    """A header-less file without quoting, batch by batch: every non-blank line holds exactly `names`."""
    empty = DataFormatError(path, f"empty file; expected lines of {sep.join(names)} (this format has no header)")
    return require_rows((split_fields(path, lines, sep, names)
                         for lines in text_batches(path, encoding, batch_bytes)), empty)


def read_delimited(path: Path, sep: str, names: list[str], encoding: str = "utf-8") -> pl.DataFrame:
    """A whole header-less file without quoting (the small item and user tables)."""
    return concat(delimited_batches(path, sep, names, encoding))


def require_columns(path: Path, have: list[str], need: list[str], header: str | None) -> None:
    """A header without the needed columns means a wrong or mislabelled file: say which are missing."""
    missing = [name for name in need if name not in have]
    if missing:
        raise DataFormatError(
            path, f"header lacks column(s) {missing}; expected {need}, found {have}", row=1, line=header
        )


def header_only(path: Path, header: str | None, need: list[str], row: int = 1) -> DataFormatError:
    """The error for a file whose header (line `row`) is its only line."""
    return DataFormatError(path, f"no data lines after the header; expected at least one line of {', '.join(need)}",
                           row=row, line=header)
