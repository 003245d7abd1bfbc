"""features stage: labels, histories, splits, vocabularies; validated before anything is written.

Streams: the interactions are read in batches and the features built, validated (GX, chunk by chunk) and
appended one user partition at a time (`data.chunk_rows` rows), so peak memory does not grow with the data.
As in raw_data, a failed run replaces nothing: outputs are swapped in atomically after validation passes.
"""

from __future__ import annotations

import time

import polars as pl
from tqdm.auto import tqdm

from expctr.config import Params
from expctr.data.features import SPLITS, FeatureBuilder, featurize_partitions
from expctr.data.spill import ParquetAppender
from expctr.data.validation import SuiteRun, enforce, feature_suites, prefetch_gx
from expctr.errors import ExpCTRError
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths

TABLES = ("interactions", "items", "users")


def raw_files(paths: ProjectPaths) -> dict[str, object]:
    """The raw_data stage's tables: the small ones read, the interactions as a lazy scan."""
    for name in TABLES:
        f = paths.raw / f"{name}.parquet"
        if not f.exists():
            raise ExpCTRError(f"{f} not found: run the raw_data stage first (`dvc repro raw_data`)")
    return {
        "interactions": pl.scan_parquet(paths.raw / "interactions.parquet"),
        "items": pl.read_parquet(paths.raw / "items.parquet"),
        "users": pl.read_parquet(paths.raw / "users.parquet"),
    }


def run(params: Params, paths: ProjectPaths) -> dict:
    started = time.perf_counter()
    gx_import = prefetch_gx()
    raw = raw_files(paths)
    chunk = params.data.chunk_rows
    inter: pl.LazyFrame = raw["interactions"]
    with atomic_path(paths.features) as out:
        out.mkdir()
        work = out.parent / "work"
        builder = FeatureBuilder(raw["items"], raw["users"], params.features, params.seed)
        fmap, partitions = featurize_partitions(builder, inter, inter.collect_batches(chunk_size=chunk), chunk,
                                                work / "partitions")
        gx_import.join()
        sizes = {"user": fmap.size("user"), "item": fmap.size("item")}
        validation = SuiteRun(feature_suites(SPLITS, params.validation, sizes), params.validation.max_examples)
        appenders = {s: ParquetAppender(out / f"{s}.parquet", builder.split_rows[s], chunk, work / s)
                     for s in SPLITS}
        written = dict.fromkeys(SPLITS, 0)
        empty: dict[str, pl.DataFrame] = {}
        for frames in tqdm(partitions, desc="features", unit="partition", total=builder.partitions.count,
                           disable=builder.partitions.count < 2):
            for s, frame in frames.items():
                if frame.height:  # a chunk is validated where it lands in the split's file
                    validation.validate(f"features/{s}", frame, index=written[s])
                else:
                    empty[s] = frame
                appenders[s].append(frame)
                written[s] += frame.height
        for s in SPLITS:
            if not written[s]:  # an empty split is still validated (as an empty table)
                validation.validate(f"features/{s}", empty[s])
        result = validation.result()
        # A failure raises here, before data/features or a metrics file is replaced.
        enforce(result, "the features built from data/raw", params.validation)
        for appender in appenders.values():
            appender.close()
        builder.catalogue.write_parquet(out / "items.parquet")
        (out / "feature_map.json").write_text(fmap.to_json())
    seconds = time.perf_counter() - started
    metrics = {**builder.summary(), "validation_success": result["success"],
               "build_seconds": round(seconds - result["seconds"], 3),
               "validation_seconds": result["seconds"], "seconds": round(seconds, 3)}
    write_json(paths.metric("validation_features.json"), result)
    write_json(paths.metric("features.json"), metrics)
    return metrics
