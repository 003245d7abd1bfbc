"""`data.source: files` with RecBole atomic files: `data.paths.name` is the files' name prefix, not a path.

The raw_data stage resolves every `data.paths` entry against the project root; resolving `name` too made it
an absolute path and the stage looked for `<root>/<name>.inter` instead of `<directory>/<name>.inter`
(bench/features_bench.py reads its synthetic sources this way).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from support import make_params, run_cli


def write_atomic(directory: Path, name: str, n_users: int = 30, n_items: int = 20, per_user: int = 10) -> int:
    """A small dataset in the RecBole atomic format of the embedded ML-1M (typed TSV headers)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    items = [f"Movie {i} ({1980 + i})\tMovie {i}\t{1980 + i}\t{genres[i % 4]} {genres[(i + 1) % 4]}"
             for i in range(n_items)]
    (directory / f"{name}.item").write_text(
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n" + "\n".join(items) + "\n")
    users = [f"u{u}\t{[18, 25, 35][u % 3]}\t{'FM'[u % 2]}\t{u % 21}\t{10000 + u}" for u in range(n_users)]
    (directory / f"{name}.user").write_text(
        "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\n" + "\n".join(users) + "\n")
    rows = [f"u{u}\tMovie {i} ({1980 + i})\t{int(rng.integers(1, 6))}\t{978300000 + 100 * t + u}"
            for u in range(n_users) for t, i in enumerate(rng.choice(n_items, per_user, replace=False))]
    (directory / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    return len(rows)


def test_raw_data_reads_atomic_files_by_name_prefix(tmp_path):
    n = write_atomic(tmp_path / "source", "mini")
    make_params(tmp_path, **{"data.source": "files", "data.format": "recbole_atomic",
                             "data.paths": {"directory": "source", "name": "mini"}})
    run_cli(tmp_path, "raw-data")
    assert pl.read_parquet(tmp_path / "data" / "raw" / "interactions.parquet").height == n
    record = json.loads((tmp_path / "metrics" / "raw_data.json").read_text())
    assert sorted(record["provenance"]["files_sha256"]) == [f"source/mini.{ext}" for ext in ("inter", "item", "user")]
