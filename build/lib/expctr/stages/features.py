"""features stage: labels, histories, splits, vocabularies; validated before anything is written."""

from __future__ import annotations

import time

import polars as pl

from expctr.config import Params
from expctr.data.features import SPLITS, build_features
from expctr.data.validation import enforce, feature_suites, prefetch_gx, run_suites
from expctr.errors import ExpCTRError
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths


def read_raw(paths: ProjectPaths) -> dict[str, pl.DataFrame]:
    out = {}
    for name in ("interactions", "items", "users"):
        f = paths.raw / f"{name}.parquet"
        if not f.exists():
            raise ExpCTRError(f"{f} not found: run the raw_data stage first (`dvc repro raw_data`)")
        out[name] = pl.read_parquet(f)
    return out


def run(params: Params, paths: ProjectPaths) -> dict:
    started = time.perf_counter()
    gx_import = prefetch_gx()
    raw = read_raw(paths)
    frames, catalogue, fmap, summary = build_features(raw["interactions"], raw["items"], raw["users"],
                                                      params.features, params.seed)
    build_seconds = time.perf_counter() - started
    sizes = {"user": fmap.size("user"), "item": fmap.size("item")}
    gx_import.join()
    result = run_suites({f"features/{s}": frames[s] for s in SPLITS},
                        feature_suites(frames, params.validation, sizes), params.validation.max_examples)
    write_json(paths.metric("validation_features.json"), result)
    enforce(result, "the features built from data/raw", params.validation)
    with atomic_path(paths.features) as tmp:
        tmp.mkdir()
        for s in SPLITS:
            frames[s].write_parquet(tmp / f"{s}.parquet")
        catalogue.write_parquet(tmp / "items.parquet")
        (tmp / "feature_map.json").write_text(fmap.to_json())
    metrics = {**summary, "validation_success": result["success"], "build_seconds": round(build_seconds, 3),
               "validation_seconds": result["seconds"], "seconds": round(time.perf_counter() - started, 3)}
    write_json(paths.metric("features.json"), metrics)
    return metrics
