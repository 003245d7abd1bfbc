"""The out-of-core data path: streamed, partitioned raw_data and features write the bytes the in-memory
stages wrote, whatever the chunk size; the building blocks on their own."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from reference_features import write_reference
from support import SHARED_CACHE, make_params, write_ml1m_dat

from expctr.config import FeatureParams, load_params
from expctr.data.features import time_cutoffs
from expctr.data.formats import stream_recbole_atomic
from expctr.data.partitions import PartitionSpill, plan_partitions, user_counts
from expctr.data.spill import ParquetAppender, RowStore
from expctr.data.validation import Check, SuiteRun, run_suites
from expctr.errors import ValidationFailed
from expctr.paths import ProjectPaths
from expctr.stages import features as features_stage
from expctr.stages import raw_data as raw_stage

REFERENCE = json.loads((Path(__file__).with_name("ml1m_reference.json")).read_text())
RECORDED_POLARS = REFERENCE["recorded_with"]["polars"]
FEATURE_FILES = ("train.parquet", "valid.parquet", "test.parquet", "items.parquet", "feature_map.json")
RAW_FILES = ("interactions.parquet", "items.parquet", "users.parquet")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_stages(root: Path) -> None:
    """raw_data then features, in this process (Great Expectations is imported once per test session)."""
    params = load_params(root / "params.yaml")
    raw_stage.run(params, ProjectPaths(root))
    features_stage.run(params, ProjectPaths(root))


def without_timing(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {k: v for k, v in doc.items() if k not in ("seconds", "build_seconds", "validation_seconds")}


# ------------------------------------------------------------------------- ML-1M against today's output


@pytest.fixture(scope="module")
def ml1m_in_partitions(tmp_path_factory) -> Path:
    """Full ML-1M through both stages in chunks of 150k rows: several parse batches and user partitions."""
    root = tmp_path_factory.mktemp("ml1m_partitions")
    make_params(root, **{"data.cache_dir": str(SHARED_CACHE), "data.chunk_rows": 150_000})
    run_stages(root)
    return root


def test_ml1m_in_partitions_writes_the_bytes_of_the_in_memory_stages(ml1m_in_partitions: Path, tmp_path: Path):
    root = ml1m_in_partitions
    raw, feats = root / "data" / "raw", root / "data" / "features"
    inter = pl.read_parquet(raw / "interactions.parquet")
    assert inter.height == 1_000_209
    assert plan_partitions(user_counts([inter]), 150_000).count >= 6  # the partitioned path really ran

    # Oracle 1: the in-memory code on the same input (raw: the whole file parsed at once and written once;
    # features: the pre-streaming build, kept verbatim in tests/data/reference_features.py).
    whole = stream_recbole_atomic(SHARED_CACHE / "datasets" / "ml-1m", "ml-1m").collect()
    (tmp_path / "raw").mkdir()
    for name in RAW_FILES:
        getattr(whole, name.removesuffix(".parquet")).write_parquet(tmp_path / "raw" / name)
        assert (raw / name).read_bytes() == (tmp_path / "raw" / name).read_bytes(), name
    params = load_params(root / "params.yaml")
    write_reference(raw, params.features, params.seed, tmp_path / "features")
    for name in FEATURE_FILES:
        assert (feats / name).read_bytes() == (tmp_path / "features" / name).read_bytes(), name

    # Oracle 2: the files the in-memory stages wrote before this change (those DVC tracks in dvc.lock),
    # recorded with the polars that wrote them; another polars version writes other parquet bytes.
    if pl.__version__ == RECORDED_POLARS:
        got = {f"data/raw/{n}": sha256(raw / n) for n in RAW_FILES} | \
              {f"data/features/{n}": sha256(feats / n) for n in FEATURE_FILES}
        assert got == REFERENCE["ml-1m"]
    metrics = without_timing(root / "metrics" / "features.json")
    assert metrics["rows"] == {"train": 800_164, "valid": 100_024, "test": 100_021}
    assert metrics["label_rate"]["test"] == 0.5444056748082903  # as recorded in metrics/features.json
    summary = json.loads((root / "metrics" / "raw_data.json").read_text())  # accumulated batch by batch
    assert summary["rating_mean"] == 3.581564453029317  # as recorded by the one-pass in-memory summary
    assert summary["rows"] == {"interactions": 1_000_209, "items": 3883, "users": 6040}
    assert (summary["distinct_users"], summary["distinct_items"]) == (6040, 3706)
    assert summary["rating_counts"] == {"1.0": 56174, "2.0": 107557, "3.0": 261197, "4.0": 348971, "5.0": 226310}
    assert (summary["timestamp_min"], summary["timestamp_max"]) == (956703932, 1046454590)


def test_tiny_slice_matches_the_recorded_in_memory_output(tiny_real_project: Path):
    if pl.__version__ != RECORDED_POLARS:
        pytest.skip(f"hashes recorded with polars {RECORDED_POLARS}; installed {pl.__version__}")
    got = {str(f.relative_to(tiny_real_project)): sha256(f)
           for f in sorted((tiny_real_project / "data").rglob("*")) if f.is_file()}
    assert got == REFERENCE["tiny_slice"]


# ----------------------------------------------------------------------------- chunk size is invisible


@pytest.mark.parametrize("split", ["time", "random"])
def test_outputs_and_validation_do_not_depend_on_chunk_rows(tmp_path: Path, split: str):
    roots = {}
    for chunk in (2_000_000, 97):  # one partition vs ~7 partitions, ~20 parse batches, spilled files
        root = tmp_path / f"chunk{chunk}"
        write_ml1m_dat(root / "source", n_users=40, per_user=15)
        make_params(root, **{
            "data.source": "files", "data.format": "ml1m_dat", "data.paths": {"directory": "source"},
            "data.chunk_rows": chunk, "features.split": split, "validation.label_rate_bounds": [0.05, 0.95],
        })
        run_stages(root)
        roots[chunk] = root
    big, small = roots[2_000_000], roots[97]
    for f in sorted((big / "data").rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (small / f.relative_to(big)).read_bytes(), f.relative_to(big)
    for name in ("raw_data", "validation_raw", "features", "validation_features"):
        assert without_timing(big / "metrics" / f"{name}.json") == without_timing(small / "metrics" / f"{name}.json")


def test_bad_row_in_a_later_partition_is_reported_at_its_row_in_the_file(tmp_path: Path):
    write_ml1m_dat(tmp_path / "source", n_users=40, per_user=15)
    lines = (tmp_path / "source" / "ratings.dat").read_text().splitlines()
    u, i, _, t = lines[500].split("::")
    lines[500] = f"{u}::{i}::7::{t}"
    (tmp_path / "source" / "ratings.dat").write_text("\n".join(lines) + "\n")
    make_params(tmp_path, **{"data.source": "files", "data.format": "ml1m_dat",
                             "data.paths": {"directory": "source"}, "data.chunk_rows": 50})
    with pytest.raises(ValidationFailed) as exc:
        raw_stage.run(load_params(tmp_path / "params.yaml"), ProjectPaths(tmp_path))
    message = str(exc.value)
    assert "expect_column_values_to_be_between on rating" in message and "1 of 600 rows" in message
    assert "[7.0] at table rows (0-based) [500]" in message
    assert not (tmp_path / "data" / "raw").exists()


# ------------------------------------------------------------------------------------ building blocks


def frames_of(seed: int, n: int) -> pl.DataFrame:
    """The column types the stages write: strings, numbers with nulls, fixed-size arrays."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "user_id": [f"u{k}" for k in rng.integers(0, 5000, n)],
        "x": rng.integers(0, 100, n).astype(np.int32),
        "maybe": pl.Series(rng.random(n)).set(pl.Series(rng.random(n) < 0.1), None),
        "hist": rng.integers(-1, 50, (n, 4)).astype(np.int32),
    })


@pytest.mark.parametrize("n", [0, 5, 163_840, 300_001])
def test_appender_writes_the_bytes_of_one_in_memory_write(tmp_path: Path, n: int):
    df = frames_of(n, n)
    df.write_parquet(tmp_path / "whole.parquet")
    cuts = sorted({0, n, *np.random.default_rng(1).integers(0, n + 1, 9).tolist()})
    for spill_rows in (n + 1, 1_000):  # held in memory / cut into row groups on disk
        out = tmp_path / f"appended{spill_rows}.parquet"
        appender = ParquetAppender(out, n, spill_rows, tmp_path / "groups")
        for a, b in itertools.pairwise(cuts):
            appender.append(df.slice(a, b - a))
        if len(cuts) < 2:
            appender.append(df)
        appender.close()
        assert out.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
        assert not (tmp_path / "groups").exists()


def test_appender_refuses_a_wrong_row_count(tmp_path: Path):
    appender = ParquetAppender(tmp_path / "x.parquet", 10, 2, tmp_path / "g")
    appender.append(pl.DataFrame({"a": range(4)}))
    with pytest.raises(ValueError, match="4 rows appended, 10 announced"):
        appender.close()


def test_row_store_spills_and_keeps_order(tmp_path: Path):
    store = RowStore(tmp_path / "store", memory_rows=25, piece_rows=10)
    parts = [pl.DataFrame({"a": range(k * 7, k * 7 + 7)}) for k in range(10)]
    for p in parts:
        store.add(p)
    assert store.spilled and store.height == 70
    assert store.collect()["a"].to_list() == list(range(70))


def test_partitions_keep_users_whole_and_follow_the_user_order(tmp_path: Path):
    df = frames_of(3, 20_000).with_row_index("arrival")
    counts = user_counts(df.iter_slices(3_000))
    parts = plan_partitions(counts, 2_500)
    assert parts.count >= 7 and sum(parts.rows) == 20_000
    assert max(parts.rows) <= 2_500 + int(counts["n"].max())
    spill = PartitionSpill(tmp_path / "spill", parts, 2_500)
    for chunk in df.iter_slices(3_000):
        spill.add(chunk)
    got = list(spill)
    assert [p.height for p in got] == list(parts.rows)
    users = [set(p["user_id"]) for p in got]
    assert all(a.isdisjoint(b) for k, a in enumerate(users) for b in users[k + 1:])
    assert all(max(a) < min(b) for a, b in itertools.pairwise(users))  # partition order = user order
    assert all(p["arrival"].is_sorted() for p in got)  # rows keep their arrival order
    assert pl.concat(got).sort("arrival").drop("arrival").equals(df.drop("arrival"))


def test_time_cutoffs_from_a_histogram_equal_the_sorted_column():
    ts = np.random.default_rng(0).integers(0, 50, 1_001)  # many ties
    hist = pl.DataFrame({"timestamp": ts}).group_by("timestamp").agg(pl.len().alias("n")).sort("timestamp")
    params = FeatureParams(valid_frac=0.15, test_frac=0.2)
    s = np.sort(ts)
    n = len(s)
    expected = {"kind": "time", "valid_from_ts": int(s[int(n * 0.65)]), "test_from_ts": int(s[int(n * 0.8)])}
    assert time_cutoffs(hist, params) == expected


def test_gx_results_merged_over_user_partitions_equal_one_run_over_the_table():
    rng = np.random.default_rng(5)
    n = 3_000
    df = pl.DataFrame({
        "user_id": [f"u{k:03d}" for k in np.sort(rng.integers(0, 300, n))],
        "item_id": [f"i{k}" for k in rng.integers(0, 40, n)],
        "rating": rng.integers(1, 6, n).astype(np.float64),
        "label": rng.integers(0, 2, n),
    })
    df = df.with_columns(
        df["rating"].set(pl.Series(rng.random(n) < 0.01), 9.0),  # out of range
        df["item_id"].set(pl.Series(np.arange(n) % 997 == 3), None),  # nulls
    )
    suites = {"t": [
        Check("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        Check("ExpectColumnValuesToBeBetween", {"column": "rating", "min_value": 1, "max_value": 5}),
        Check("ExpectCompoundColumnsToBeUnique", {"column_list": ["user_id", "item_id"]}),
        Check("ExpectColumnMeanToBeBetween", {"column": "label", "min_value": 0.2, "max_value": 0.8}),
    ]}
    whole = run_suites({"t": df}, suites, max_examples=5)
    parts = plan_partitions(user_counts([df]), 700)
    run = SuiteRun(suites, max_examples=5)
    offset = 0
    for k in range(parts.count):  # df is sorted by user, so each partition is a row range
        chunk = df.slice(offset, parts.rows[k])
        run.validate("t", chunk, index=offset)
        offset += chunk.height
    merged = run.result()
    assert parts.count >= 4 and merged["success"] is whole["success"] is False
    by_kind = {r["expectation"]: r for r in merged["suites"][0]["results"]}
    for r in whole["suites"][0]["results"]:
        m = by_kind[r["expectation"]]
        assert (m["success"], m["unexpected_count"], m["example_rows"]) == \
               (r["success"], r["unexpected_count"], r["example_rows"])
        assert json.dumps(m["examples"], default=str) == json.dumps(r["examples"], default=str)
        assert m["unexpected_percent"] == pytest.approx(r["unexpected_percent"])
        assert m["observed_value"] == pytest.approx(r["observed_value"])
    assert merged["suites"][0]["rows"] == n


@pytest.mark.parametrize("dtype", [pl.Int8, pl.Int16, pl.Int32, pl.UInt32, pl.Int64, pl.Float32, pl.Float64])
def test_between_check_reports_the_same_rows_and_values_whatever_the_column_width(dtype):
    # Narrow columns are widened to 64 bits for GX (its vectorised path); what it finds must not change.
    values = [3, 0, 120, 7, None, 121, 5]
    suites = {"t": [Check("ExpectColumnValuesToBeBetween", {"column": "x", "min_value": 1, "max_value": 100})]}
    result = run_suites({"t": pl.DataFrame({"x": pl.Series(values, dtype=dtype)})}, suites, max_examples=5)
    row = result["suites"][0]["results"][0]
    assert (row["success"], row["unexpected_count"], row["example_rows"]) == (False, 3, [1, 2, 5])
    assert [float(v) for v in row["examples"]] == [0.0, 120.0, 121.0]


def test_gx_refuses_to_merge_a_uniqueness_check_that_chunks_could_break():
    suites = {"t": [Check("ExpectColumnValuesToBeUnique", {"column": "item_id"})]}
    run = SuiteRun(suites, max_examples=5)
    run.validate("t", pl.DataFrame({"user_id": ["a"], "item_id": ["x"]}))
    run.validate("t", pl.DataFrame({"user_id": ["b"], "item_id": ["x"]}), index=1)
    with pytest.raises(ValueError, match="cannot be checked chunk by chunk"):
        run.result()


def test_stages_leave_no_work_files_behind(tiny_real_project: Path):
    assert sorted(p.name for p in (tiny_real_project / "data").iterdir()) == ["features", "raw"]
    assert sorted(p.name for p in (tiny_real_project / "data" / "raw").iterdir()) == sorted(RAW_FILES)
    assert sorted(p.name for p in (tiny_real_project / "data" / "features").iterdir()) == sorted(FEATURE_FILES)
