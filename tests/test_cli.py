"""Stage CLI: --help explains, and the three stages run end to end into a temporary project."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from support import make_params, run_cli
from typer.testing import CliRunner

from expctr.cli import app


def test_help_lists_every_stage_with_its_purpose():
    out = CliRunner().invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("raw-data", "features", "ctr-model"):
        assert cmd in out.output
    sub = CliRunner().invoke(app, ["features", "--help"])
    assert "leakage-free histories" in sub.output and "--params" in sub.output


def test_bad_params_key_is_named(tmp_path: Path):
    make_params(tmp_path, **{"ctr.epochz": 3})
    proc = run_cli(tmp_path, "raw-data", check=False)
    assert proc.returncode == 2
    assert "params.yaml: invalid parameters" in proc.stderr and "ctr.epochz" in proc.stderr


def test_missing_upstream_output_says_which_stage_to_run(tmp_path: Path):
    make_params(tmp_path)
    proc = run_cli(tmp_path, "ctr-model", check=False)
    assert proc.returncode == 2 and "run the features stage first" in proc.stderr


def test_stages_run_end_to_end_into_tmp(built_dat_project: Path, tmp_path: Path):
    import shutil

    root = tmp_path / "p"
    shutil.copytree(built_dat_project, root)
    run_cli(root, "ctr-model")
    metrics = json.loads((root / "metrics" / "ctr.json").read_text())
    assert set(metrics["models"]) == {"popularity", "lr", "deepfm", "dcnv2", "din"}
    for m in metrics["models"].values():
        assert 0.0 <= m["test_auc"] <= 1.0 and m["test_logloss"] > 0
    assert (root / "models" / "ctr" / "din.pt").exists()
    assert json.loads((root / "models" / "ctr" / "primary.json").read_text())["model"] == "din"
    roc = pl.read_csv(root / "metrics" / "ctr_roc" / "din.csv")
    assert roc.columns == ["fpr", "tpr"] and roc["fpr"].is_sorted()
    curve = pl.read_csv(root / "metrics" / "ctr_training" / "din.csv")
    assert curve["epoch"].to_list()[0] == 1
    raw = json.loads((root / "metrics" / "raw_data.json").read_text())
    assert raw["rows"]["interactions"] == 600 and raw["provenance"]["format"] == "ml1m_dat"
    # nothing half-written: no temporary siblings left behind
    assert not list(root.rglob("*.tmp"))
