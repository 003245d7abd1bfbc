"""Great Expectations suites for the raw tables and the features, and a result format people can act on.

GX 1.x validates pandas frames (not polars), so each table is handed over with `.to_pandas()` restricted
to the scalar columns the suite reads. `great_expectations` costs seconds to import: it is imported here
only, inside the functions, so the rest of the library stays quick to load.

Large tables are validated in chunks (`SuiteRun`), never as one pandas frame. Each chunk holds whole users
(a user partition, see `partitions.py`), and its pandas index is the rows' positions in the written table,
so example rows still point into the file. Merging the chunks' GX results is exact for every expectation
used here: row-wise ones (not null, between, in set, A > B) add their counts; uniqueness of a key that
contains the partition column cannot be broken across chunks; a column mean is the count-weighted mean of
the chunk means, checked against the same bounds. A table validated in one chunk keeps GX's result as is.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import polars as pl

from expctr.config import DataParams, ValidationParams
from expctr.errors import ValidationFailed


def prefetch_gx() -> threading.Thread:
    """Import Great Expectations in a background thread (seconds of imports) while the caller computes;
    polars releases the GIL, so on 2 cores the import mostly hides behind the feature build."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    thread = threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True)
    thread.start()
    return thread


@dataclass
class Check:
    """One expectation: GX class name + kwargs (kept declarative so the report can show them)."""

    expectation: str
    kwargs: dict[str, Any]


# How the results of one expectation over several chunks combine into the table's result (module docstring).
ROW_WISE = {
    "ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeBetween", "ExpectColumnValuesToBeInSet",
    "ExpectColumnPairValuesAToBeGreaterThanB",
}
UNIQUE_WITHIN_PARTITION = {"ExpectCompoundColumnsToBeUnique", "ExpectColumnValuesToBeUnique"}
MEAN = {"ExpectColumnMeanToBeBetween"}


def raw_suites(tables: dict[str, pl.DataFrame], data: DataParams) -> dict[str, list[Check]]:
    """Expectations on the normalised raw tables."""
    lo, hi = data.rating_range
    item_ids = tables["items"]["item_id"].unique().to_list()
    suites = {
        "interactions": [
            *[Check("ExpectColumnValuesToNotBeNull", {"column": c}) for c in ("user_id", "item_id", "rating", "timestamp")],
            Check("ExpectColumnValuesToBeBetween", {"column": "rating", "min_value": lo, "max_value": hi}),
            Check("ExpectColumnValuesToBeBetween", {"column": "timestamp", "min_value": 0}),
            Check("ExpectCompoundColumnsToBeUnique", {"column_list": ["user_id", "item_id", "timestamp"]}),
            Check("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": item_ids}),
        ],
        "items": [
            Check("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
            Check("ExpectColumnValuesToBeUnique", {"column": "item_id"}),
            Check("ExpectColumnValuesToNotBeNull", {"column": "title"}),
            Check("ExpectColumnValuesToBeBetween", {"column": "year", "min_value": 1800, "max_value": 2100}),
        ],
    }
    if tables["users"].height:
        suites["users"] = [
            Check("ExpectColumnValuesToNotBeNull", {"column": "user_id"}),
            Check("ExpectColumnValuesToBeUnique", {"column": "user_id"}),
        ]
    return suites


def feature_suites(frames: dict[str, pl.DataFrame], vparams: ValidationParams, sizes: dict[str, int]) -> dict[str, list[Check]]:
    """Expectations on each split's features, including the no-future-history guarantee."""
    lo, hi = vparams.label_rate_bounds
    suites = {}
    for split in frames:
        checks = [
            *[Check("ExpectColumnValuesToNotBeNull", {"column": c}) for c in ("user_idx", "item_idx", "label", "timestamp")],
            Check("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": [0, 1]}),
            Check("ExpectColumnMeanToBeBetween", {"column": "label", "min_value": lo, "max_value": hi}),
            # No history item at or after its target's timestamp (hist_last_ts is the latest one).
            Check("ExpectColumnPairValuesAToBeGreaterThanB",
                  {"column_A": "timestamp", "column_B": "hist_last_ts", "or_equal": False,
                   "ignore_row_if": "either_value_is_missing"}),
            Check("ExpectCompoundColumnsToBeUnique", {"column_list": ["user_id", "item_id", "timestamp"]}),
            *[Check("ExpectColumnValuesToBeBetween", {"column": f"{f}_idx", "min_value": 0, "max_value": sizes[f] - 1})
              for f in ("user", "item")],
        ]
        suites[f"features/{split}"] = checks
    return suites


def _columns_of(checks: list[Check]) -> list[str]:
    cols: list[str] = []
    for c in checks:
        for key in ("column", "column_A", "column_B"):
            if key in c.kwargs:
                cols.append(c.kwargs[key])
        cols.extend(c.kwargs.get("column_list", []))
    return list(dict.fromkeys(cols))


def run_suites(tables: dict[str, pl.DataFrame], suites: dict[str, list[Check]], max_examples: int) -> dict:
    """Validate each (small) table whole with its suite; returns the JSON-ready result (see orchestration
    checks)."""
    run = SuiteRun(suites, max_examples)
    for name in suites:
        run.validate(name, tables[name])
    return run.result()


class SuiteRun:
    """GX validation of tables that arrive in chunks; `result()` merges the chunks per table (module
    docstring). A table given in several chunks must be chunked by user partition (`partition_column`)."""

    def __init__(self, suites: dict[str, list[Check]], max_examples: int, partition_column: str = "user_id"):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx  # slow import, on purpose only here
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx, self.suites, self.max_examples = gx, suites, max_examples
        self.partition_column = partition_column
        self.seconds = 0.0
        started = time.perf_counter()
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._source = context.data_sources.add_pandas("expctr")
        self._batches: dict[str, Any] = {}
        self._chunks: dict[str, list[tuple[int, list[dict]]]] = {name: [] for name in suites}
        self.seconds += time.perf_counter() - started

    def validate(self, name: str, df: pl.DataFrame, index: Any = None) -> None:
        """Validate one chunk of table `name`; `index` (default: row 0, 1, ...) labels its rows in examples:
        an int is the position of the chunk's first row, an array gives each row's position."""
        started = time.perf_counter()
        gx, checks = self._gx, self.suites[name]
        pdf = _widened(df.select(_columns_of(checks))).to_pandas()
        if isinstance(index, int) and index:
            pdf.index = range(index, index + len(pdf))
        elif index is not None and not isinstance(index, int):
            pdf.index = list(index)
        if name not in self._batches:
            asset = self._source.add_dataframe_asset(name=name.replace("/", "_"))
            suite = gx.ExpectationSuite(name=f"expctr_{name.replace('/', '_')}")
            for c in checks:
                suite.add_expectation(getattr(gx.expectations, c.expectation)(**c.kwargs))
            self._batches[name] = (asset.add_batch_definition_whole_dataframe("all"), suite)
        definition, suite = self._batches[name]
        batch = definition.get_batch(batch_parameters={"dataframe": pdf})
        res = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                   "partial_unexpected_count": self.max_examples})
        rows = [_result_row(r, self.max_examples) for r in res.results]
        for row, r in zip(rows, res.results):
            row["_raw"] = dict(r.result or {})
            row["_raw"]["raised"] = bool(r.exception_info and r.exception_info.get("raised_exception"))
            if row["expectation"] == "expect_column_mean_to_be_between":
                row["_raw"]["non_null"] = int(df[row["column"]].drop_nulls().len())
        self._chunks[name].append((len(pdf), rows))
        self.seconds += time.perf_counter() - started

    def result(self) -> dict:
        """The JSON-ready result, one suite per table, in the order of `suites`."""
        started = time.perf_counter()
        out = {"success": True, "suites": []}
        for name in self.suites:
            chunks = self._chunks[name]
            if not chunks:
                raise ValueError(f"table {name!r} was never validated")
            if len(chunks) == 1:
                results = chunks[0][1]
            else:
                by_key = [{_key(r): r for r in rows} for _, rows in chunks]
                results = [_merge(name, [rows[_key(r)] for rows in by_key], self.partition_column, self.max_examples)
                           for r in chunks[0][1]]
            results = [{k: v for k, v in r.items() if k != "_raw"} for r in results]
            failed = sum(not r["success"] for r in results)
            out["suites"].append({"table": name, "rows": sum(c[0] for c in chunks), "success": failed == 0,
                                  "evaluated": len(results), "failed": failed, "results": results})
            out["success"] &= failed == 0
        self.seconds += time.perf_counter() - started
        out["seconds"] = round(self.seconds, 3)
        return out


def _widened(df: pl.DataFrame) -> pl.DataFrame:
    """Numeric columns as 64-bit: GX's pandas `between` check is vectorised only for int64/float64 columns
    and calls Python once per row for any other dtype (Int32 ids, Float32 ratings): seconds per million rows.
    The values, and so every result, are the same."""
    casts = [pl.col(name).cast(pl.Int64) if dtype.is_integer() else pl.col(name).cast(pl.Float64)
             for name, dtype in df.schema.items()
             if (dtype.is_integer() and dtype not in (pl.Int64, pl.UInt64)) or (dtype.is_float() and dtype != pl.Float64)]
    return df.with_columns(casts) if casts else df


def _key(row: dict) -> str:
    """Identifies one expectation across chunks (GX does not promise the order of its results)."""
    return json.dumps([row["expectation"], row["kwargs"]], sort_keys=True, default=str)


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def _merge(table: str, parts: list[dict], partition_column: str, max_examples: int) -> dict:
    """One expectation's result over all chunks of a table (the rules are in the module docstring)."""
    first = parts[0]
    kind = _camel(first["expectation"])
    merged = {**first, "success": all(p["success"] for p in parts)}
    raws = [p["_raw"] for p in parts]
    raised = [p for p in parts if p["_raw"]["raised"]]
    if raised:  # GX raised on a chunk: report its exception as it would for the whole table
        return {**raised[0], "success": False}
    if kind in UNIQUE_WITHIN_PARTITION:
        key = first["kwargs"].get("column_list") or [first["kwargs"].get("column")]
        if partition_column not in key:
            raise ValueError(f"table {table}: {kind} on {key} cannot be checked chunk by chunk: chunks are "
                             f"user partitions, so the key must contain {partition_column!r}")
    if kind in ROW_WISE or kind in UNIQUE_WITHIN_PARTITION:
        unexpected = sum(r.get("unexpected_count") or 0 for r in raws)
        checked = sum((r.get("element_count") or 0) - (r.get("missing_count") or 0) for r in raws)
        merged["unexpected_count"] = unexpected
        merged["unexpected_percent"] = unexpected / checked * 100 if checked else None
        merged["examples"] = [e for p in parts for e in p["examples"]][:max_examples]
        merged["example_rows"] = [e for p in parts for e in p["example_rows"]][:max_examples]
    elif kind in MEAN:
        counted = [(p["observed_value"], r["non_null"]) for p, r in zip(parts, raws) if r["non_null"]]
        n = sum(c for _, c in counted)
        mean = sum(m * c for m, c in counted) / n if n else None
        kwargs = first["kwargs"]
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        merged["observed_value"] = mean
        merged["success"] = mean is not None and (lo is None or mean >= lo) and (hi is None or mean <= hi)
    else:
        raise ValueError(f"table {table}: no rule to merge {kind} over chunks; validate it in one chunk")
    return merged


def _result_row(r: Any, max_examples: int) -> dict:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k not in ("batch_id", "value_set")}
    result = dict(r.result or {})
    examples = result.get("partial_unexpected_list") or []
    rows = result.get("partial_unexpected_index_list") or []
    if r.exception_info and r.exception_info.get("raised_exception"):
        examples = [r.exception_info.get("exception_message")]
    return {
        "expectation": cfg.type,
        "column": kwargs.get("column"),
        "kwargs": kwargs,
        "success": bool(r.success),
        "observed_value": result.get("observed_value"),
        "unexpected_count": result.get("unexpected_count"),
        "unexpected_percent": result.get("unexpected_percent"),
        "examples": examples[:max_examples],
        "example_rows": [int(i) if isinstance(i, int) else i for i in rows[:max_examples]],
    }


def failure_message(result: dict, source: str) -> str:
    """Human summary of failed expectations: table, expectation, column, counts and example values."""
    lines = [f"data validation failed for {source}:"]
    for suite in result["suites"]:
        for r in suite["results"]:
            if r["success"]:
                continue
            what = r["column"] or ", ".join(r["kwargs"].get("column_list", [])) or \
                f"{r['kwargs'].get('column_A')} > {r['kwargs'].get('column_B')}"
            count = "" if r["unexpected_count"] is None else f" {r['unexpected_count']} of {suite['rows']} rows,"
            observed = "" if r["observed_value"] is None else f" observed {r['observed_value']!r},"
            lines.append(f"  table {suite['table']}: {r['expectation']} on {what} ({_bounds(r['kwargs'])}) "
                         f"failed:{count}{observed} e.g. {r['examples']}"
                         + (f" at table rows (0-based) {r['example_rows']}" if r.get("example_rows") else ""))
    return "\n".join(lines)


def _bounds(kwargs: dict) -> str:
    keep = {k: v for k, v in kwargs.items() if k in ("min_value", "max_value", "or_equal", "mostly")}
    return ", ".join(f"{k}={v}" for k, v in keep.items()) or "as declared"


def enforce(result: dict, source: str, vparams: ValidationParams) -> None:
    """Raise ValidationFailed when the result failed and fail_on_error is set."""
    if not result["success"] and vparams.fail_on_error:
        raise ValidationFailed(failure_message(result, source))
