"""Great Expectations suites for the raw tables and the features, and a result format people can act on.

GX 1.x validates pandas frames (not polars), so each table is handed over with `.to_pandas()` restricted
to the scalar columns the suite reads. `great_expectations` costs seconds to import: it is imported here
only, inside the functions, so the rest of the library stays quick to load.
"""

from __future__ import annotations

import importlib
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
    """Validate each table with its suite; returns the JSON-ready result (see orchestration checks)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx  # slow import, on purpose only here
    from great_expectations.data_context.types.base import ProgressBarsConfig

    started = time.perf_counter()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("expctr")
    out = {"success": True, "suites": []}
    for name, checks in suites.items():
        df = tables[name].select(_columns_of(checks)).to_pandas()
        asset = source.add_dataframe_asset(name=name.replace("/", "_"))
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
        suite = gx.ExpectationSuite(name=f"expctr_{name.replace('/', '_')}")
        for c in checks:
            suite.add_expectation(getattr(gx.expectations, c.expectation)(**c.kwargs))
        res = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": max_examples})
        results = [_result_row(r, checks, max_examples) for r in res.results]
        failed = sum(not r["success"] for r in results)
        out["suites"].append({"table": name, "rows": len(df), "success": failed == 0,
                              "evaluated": len(results), "failed": failed, "results": results})
        out["success"] &= failed == 0
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def _result_row(r: Any, checks: list[Check], max_examples: int) -> dict:
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
