"""The source formats by name (as `data.format` in params.yaml names them), and dispatch to their parsers.

Each parser (package `expctr.data.parsers`) reads its files in bounded memory: `stream_*` returns the
interactions as a `RawStream` of batches (the raw_data stage writes them out one by one), `read_*`
collects them for small data. A missing, truncated or malformed file raises `DataFormatError` naming the
file, the 1-based line where the fault starts, what was expected there, and the line itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from expctr.data.parsers.amazon import read_amazon, stream_amazon
from expctr.data.parsers.bookcrossing import read_bookcrossing, stream_bookcrossing
from expctr.data.parsers.grouplens import (
    ML100K_GENRES,
    read_ml1m_dat,
    read_ml100k,
    stream_ml1m_dat,
    stream_ml100k,
)
from expctr.data.parsers.movielens_csv import read_movielens_csv, stream_movielens_csv
from expctr.data.parsers.reader import BATCH_BYTES
from expctr.data.parsers.recbole import read_recbole_atomic, stream_recbole_atomic
from expctr.data.schema import RawStream, RawTables

__all__ = [
    "BATCH_BYTES",
    "FORMATS",
    "ML100K_GENRES",
    "STREAMS",
    "read_amazon",
    "read_bookcrossing",
    "read_ml1m_dat",
    "read_ml100k",
    "read_movielens_csv",
    "read_recbole_atomic",
    "read_source",
    "stream_amazon",
    "stream_bookcrossing",
    "stream_ml1m_dat",
    "stream_ml100k",
    "stream_movielens_csv",
    "stream_recbole_atomic",
    "stream_source",
]

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
