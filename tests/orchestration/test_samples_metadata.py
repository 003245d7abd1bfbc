"""Sample explanations in a stage's metrics JSON become a markdown table in the Dagster metadata."""

import json
from pathlib import Path

from orchestration.assets import samples_table
from orchestration.dvc_graph import load_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_round_samples_become_a_markdown_table(tmp_path: Path):
    stage = load_pipeline(REPO_ROOT).stage("explainer_round_1")
    (tmp_path / "metrics").mkdir()
    rows = [{"user_id": "1m_5", "label": 1, "explanation": "The user will | probably enjoy\nit."}] * 7
    (tmp_path / "metrics" / "round_1.json").write_text(json.dumps({"lc_auc": 0.7, "samples": rows}))
    table = samples_table(stage, tmp_path).splitlines()
    assert table[0] == "| user_id | label | explanation |"
    assert len(table) == 2 + 5  # header, rule, at most five rows
    assert table[2] == "| 1m_5 | 1 | The user will \\| probably enjoy it. |"


def test_no_samples_no_table(tmp_path: Path):
    stage = load_pipeline(REPO_ROOT).stage("ctr_model")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "ctr.json").write_text(json.dumps({"models": {}}))
    assert samples_table(stage, tmp_path) is None
