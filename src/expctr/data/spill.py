"""Bounded-memory building blocks of the streamed stages: an ordered frame store that spills to disk, and
a parquet writer that appends frames in order yet writes the bytes an in-memory write would.

Why the bytes matter: DVC versions `data/` by content hash, so the streamed stages must write the same
files as the in-memory code did, or a re-run would invalidate every downstream stage for no change.

How `ParquetAppender` gets them: polars writes a DataFrame through its streaming sink, which cuts the rows
into row groups by a rule of its own that depends only on the row count. `row_group_layout` reads that
rule off a probe frame of the same height (one byte per row); the appender cuts the arriving rows at
exactly those boundaries into one-row-group files and streams those through the same sink into the final
file. Up to `spill_rows` rows are simply held and written in one go, as before. Checked for the column
types the stages write (strings, numbers with nulls, fixed-size arrays); a variable-length list column read
back from disk is encoded into different (equivalent) bytes, so none goes through the spill path.
"""

from __future__ import annotations

import functools
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

SPILL_COMPRESSION = "lz4"  # temporary files: fast to write and read back; the final files keep zstd


@functools.lru_cache(maxsize=32)
def row_group_layout(n_rows: int) -> tuple[int, ...]:
    """Row-group sizes polars gives a single-chunk frame of `n_rows` rows (probe: n_rows bytes in memory)."""
    buf = io.BytesIO()
    pl.DataFrame({"probe": np.zeros(n_rows, dtype=np.int8)}).write_parquet(buf)
    meta = pq.ParquetFile(buf).metadata
    return tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))


class RowStore:
    """Frames kept in arrival order: in memory while they total at most `memory_rows` rows, then on disk
    as parquet pieces of about `piece_rows` rows (everything buffered goes to disk at that point)."""

    def __init__(self, directory: Path, memory_rows: int, piece_rows: int | None = None):
        self.directory, self.memory_rows = Path(directory), memory_rows
        self.piece_rows = piece_rows or max(memory_rows, 1)
        self.height = 0
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._pieces: list[Path] = []
        self._schema: pl.Schema | None = None

    @property
    def spilled(self) -> bool:
        return bool(self._pieces)

    def add(self, df: pl.DataFrame) -> None:
        self._schema = self._schema or df.schema
        self.height += df.height
        self._buffer.append(df)
        self._buffered += df.height
        limit = self.piece_rows if self.spilled else self.memory_rows
        if self._buffered > limit:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{len(self._pieces):06d}.parquet"
        pl.concat(self._buffer).write_parquet(path, compression=SPILL_COMPRESSION, statistics=False)
        self._pieces.append(path)
        self._buffer, self._buffered = [], 0

    def __iter__(self) -> Iterator[pl.DataFrame]:
        """The frames in arrival order (pieces are read back one at a time)."""
        for path in self._pieces:
            yield pl.read_parquet(path)
        yield from self._buffer

    def collect(self) -> pl.DataFrame:
        """Everything as one frame (a caller that knows the store is small)."""
        frames = list(self)
        return pl.concat(frames, rechunk=True) if frames else pl.DataFrame(schema=self._schema)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self._pieces, self._buffer, self._buffered = [], [], 0


class ParquetAppender:
    """Writes `path` from frames appended in order, as `pl.concat(frames).write_parquet(path)` would.

    `total_rows` must be known in advance when it exceeds `spill_rows` (the row groups are cut for it).
    """

    def __init__(self, path: Path, total_rows: int, spill_rows: int, work_dir: Path):
        self.path, self.total_rows = Path(path), total_rows
        self.work_dir = Path(work_dir)
        self._layout = row_group_layout(total_rows) if total_rows > spill_rows else None
        self._pending: pl.DataFrame | None = None
        self._groups: list[Path] = []
        self._seen = 0

    def append(self, df: pl.DataFrame) -> None:
        self._seen += df.height
        if self._layout is not None and self._seen > self.total_rows:
            raise ValueError(f"{self.path}: more than the announced {self.total_rows} rows were appended")
        self._pending = df if self._pending is None else pl.concat([self._pending, df], rechunk=False)
        if self._layout is None:
            return
        while len(self._groups) < len(self._layout) and self._pending.height >= self._layout[len(self._groups)]:
            size = self._layout[len(self._groups)]
            self.work_dir.mkdir(parents=True, exist_ok=True)
            group = self.work_dir / f"{len(self._groups):06d}.parquet"
            # One chunk per group file, so the sink sees each group as one unit.
            self._pending.slice(0, size).rechunk().write_parquet(group, compression=SPILL_COMPRESSION,
                                                                 statistics=False)
            self._groups.append(group)
            self._pending = self._pending.slice(size)

    def close(self) -> None:
        """Write the file (or stream the group files into it) and remove the group files."""
        if self._pending is None:
            raise ValueError(f"{self.path}: nothing was appended (append an empty frame to write no rows)")
        if self._layout is None:
            self._pending.rechunk().write_parquet(self.path)
        else:
            if self._seen != self.total_rows or self._pending.height:
                raise ValueError(f"{self.path}: {self._seen} rows appended, {self.total_rows} announced")
            pl.scan_parquet(self._groups).sink_parquet(self.path)
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self._pending = None
