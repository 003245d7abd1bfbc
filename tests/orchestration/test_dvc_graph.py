"""Unit tests of the dvc.yaml reader, the metrics flattening and the GX result check (no subprocess)."""

import json

import pytest
import yaml

from orchestration.assets import check_name, collect_metrics, evaluate_gx_result, headline_table
from orchestration.dvc_graph import DvcYamlError, load_pipeline, parse_pipeline

SAMPLE = """
stages:
  prepare:
    desc: "  Prepare.  "
    cmd: [echo a, echo b]
    outs:
      - data/prepared/
      - data/extra.txt:
          cache: false
    metrics:
      - metrics/prepare.json:
          cache: false
    plots:
      - metrics/curve.csv:
          x: a
          y: b
  split:
    cmd: echo split
    wdir: sub
    deps:
      - ../data/prepared/part-0.parquet
    params:
      - seed
      - other.yaml: [a, b]
    outs: [../data/split]
    meta:
      dagster:
        asset: split_asset
        checks: [../data/split/gx.json]
        headline: [split.auc]
  report:
    cmd: echo report
    deps: [data, metrics/curve.csv]
    outs: [reports/out.html]
  lonely:
    cmd: echo lonely
    deps: [src/x.py, data/prepared_not_really]
"""


def test_parse_shapes_and_paths():
    p = parse_pipeline(yaml.safe_load(SAMPLE), "proj/dvc.yaml")
    prepare, split, report, lonely = p.stages
    assert prepare.desc == "Prepare." and prepare.cmd == "echo a && echo b"
    assert prepare.outs == ("data/prepared", "data/extra.txt")
    assert prepare.metrics == ("metrics/prepare.json",) and prepare.plots == ("metrics/curve.csv",)
    assert split.asset_key == "split_asset" and report.asset_key == "report"
    assert split.deps == ("data/prepared/part-0.parquet",) and split.outs == ("data/split",)
    assert split.checks == ("data/split/gx.json",) and split.headline == ("split.auc",)
    assert split.params == ("seed", "other.yaml:a", "other.yaml:b")
    assert lonely.desc is None


def test_upstream_relation_matches_dvc_rules():
    p = parse_pipeline(yaml.safe_load(SAMPLE))
    assert p.upstream("prepare") == ()
    assert p.upstream("split") == ("prepare",)  # dep lies under an out
    assert p.upstream("report") == ("prepare", "split")  # outs lie under the dep `data`; a plot dep
    assert p.upstream("lonely") == ()  # a shared name prefix is not a path prefix
    assert p.downstream("prepare") == ("split", "report")
    assert p.edges() == {("prepare", "split"), ("prepare", "report"), ("split", "report")}


@pytest.mark.parametrize(
    ("doc", "stage", "fragment"),
    [
        ({"stages": {"a": {"cmd": "x", "outs": [{"p": 1}]}}}, "a", "'outs' entry"),
        ({"stages": {"a": {"cmd": "x", "outs": [{"p": {}, "q": {}}]}}}, "a", "'outs' entry"),
        ({"stages": {"a": {"cmd": "x", "metrics": "m.json"}}}, "a", "'metrics' must be a list"),
        ({"stages": {"a": {"outs": ["o"]}}}, "a", "'cmd'"),
        ({"stages": {"a": ["cmd"]}}, "a", "expected a mapping"),
        ({"stages": {"a": {"foreach": [1], "do": {"cmd": "x"}}}}, "a", "foreach"),
        (
            {"stages": {"a": {"cmd": "x", "meta": {"dagster": {"asset": "bad key"}}}}},
            "a",
            "meta.dagster.asset",
        ),
        ({"stages": {"a": {"cmd": "x", "meta": {"dagster": {"checks": ["gx.json"]}}}}}, "a", "gx.json"),
        (
            {"stages": {"a": {"cmd": "x"}, "b": {"cmd": "y", "meta": {"dagster": {"asset": "a"}}}}},
            "b",
            "already",
        ),
        ({"stages": {"a": {"cmd": "x", "deps": ["${item}/x"]}}}, "a", "templating"),
    ],
)
def test_malformed_stage_errors_name_file_and_stage(doc, stage, fragment):
    with pytest.raises(DvcYamlError) as err:
        parse_pipeline(doc, "dvc.yaml")
    assert str(err.value).startswith(f"dvc.yaml: stage {stage!r}: ")
    assert fragment in str(err.value)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(DvcYamlError, match="dvc.yaml: not found"):
        load_pipeline(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: [a")
    with pytest.raises(DvcYamlError, match="not valid YAML"):
        load_pipeline(tmp_path)
    (tmp_path / "dvc.yaml").write_text("plots: []\n")
    with pytest.raises(DvcYamlError, match="top-level 'stages:'"):
        load_pipeline(tmp_path)


def test_collect_metrics_caps_and_prefers_top_level(tmp_path):
    (tmp_path / "m").mkdir()
    deep = {f"k{i}": {"x": i, "y": i / 2} for i in range(30)}
    (tmp_path / "m" / "big.json").write_text(json.dumps({"deep": deep, "top": 1, "flag": True, "s": "x"}))
    (tmp_path / "m" / "small.yaml").write_text("auc: 0.5\nnested: {n: 3}\n")
    stage = parse_pipeline(
        {
            "stages": {
                "s": {"cmd": "x", "metrics": ["m/big.json", {"m/small.yaml": {"cache": False}}, "m/no.json"]}
            }
        }
    ).stages[0]
    metrics, left_out = collect_metrics(stage, tmp_path)
    assert len(metrics) == 40 and left_out == 60 + 3 - 40
    assert metrics["big.top"] == 1 and metrics["small.auc"] == 0.5 and metrics["small.nested.n"] == 3
    assert "big.flag" not in metrics
    table = headline_table(stage, metrics)
    assert table.splitlines()[2] == "| `big.top` | 1 |"


def _gx(success, results):
    return {
        "success": success,
        "suites": [
            {
                "table": "items",
                "success": success,
                "evaluated": len(results),
                "failed": sum(not r["success"] for r in results),
                "results": results,
            }
        ],
    }


def test_gx_check_results(tmp_path):
    path = tmp_path / "gx.json"
    missing = evaluate_gx_result(path, "raw_data", "metrics/gx.json")
    assert not missing.passed and "has not written it" in missing.description
    assert "raw_data" in missing.description and "metrics/gx.json" in missing.description

    ok = {
        "expectation": "expect_column_to_exist",
        "column": "title",
        "kwargs": {},
        "success": True,
        "unexpected_count": None,
        "unexpected_percent": None,
        "examples": [],
    }
    bad = {
        "expectation": "expect_column_values_to_be_unique",
        "column": None,
        "kwargs": {},
        "success": False,
        "unexpected_count": 2,
        "unexpected_percent": 1.0,
        "examples": [{"item_id": "i1"}, {"item_id": "i1"}],
    }
    path.write_text(json.dumps(_gx(True, [ok])))
    passed = evaluate_gx_result(path, "raw_data")
    assert passed.passed and "failed_expectations" not in passed.metadata
    assert passed.metadata["evaluated"].value == 1

    path.write_text(json.dumps(_gx(False, [ok, bad])))
    failed = evaluate_gx_result(path, "raw_data")
    assert not failed.passed and "1 of 2 expectations failed" in failed.description
    (row,) = failed.metadata["failed_expectations"].value.records
    assert row.data["table"] == "items" and row.data["column"] is None and row.data["unexpected_count"] == 2
    assert json.loads(row.data["examples"]) == [{"item_id": "i1"}, {"item_id": "i1"}]

    path.write_text("{not json")
    assert not evaluate_gx_result(path, "raw_data").passed


def test_check_names():
    assert check_name("metrics/validation_raw.json") == "gx_validation_raw"
    assert check_name("metrics/gx-a.json") == "gx_a"
