"""A stage's `meta.dagster.markdown` file (e.g. the evaluation summary.md) becomes `summary` metadata."""

from pathlib import Path

import dagster as dg

from orchestration.assets import markdown_summary, materialization_metadata
from orchestration.dvc_graph import parse_pipeline

SUMMARY = "# ExpCTR evaluation\n\n| predictor | AUC |\n|---|---:|\n| ID-only (din) | 0.712 |\n"


def _stage(**dagster_meta):
    doc = {
        "stages": {
            "evaluation_report": {
                "cmd": "expctr evaluation-report",
                "deps": ["metrics/round_1.json", "src/expctr/evaluation"],
                "outs": ["reports/evaluation"],
                "metrics": [{"metrics/evaluation.json": {"cache": False}}],
                "plots": [{"metrics/evaluation_rounds.csv": {"cache": False}}],
                "meta": {"dagster": dagster_meta},
            }
        }
    }
    return parse_pipeline(doc).stage("evaluation_report")


def _write(root: Path, text: str) -> None:
    (root / "reports" / "evaluation").mkdir(parents=True)
    (root / "reports" / "evaluation" / "summary.md").write_text(text, encoding="utf-8")
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluation.json").write_text('{"final_aug_auc": 0.71, "rounds": 3}')


def test_markdown_file_becomes_summary_metadata(tmp_path: Path):
    stage = _stage(asset="evaluation_report", markdown="reports/evaluation/summary.md")
    _write(tmp_path, SUMMARY)
    md, _ = materialization_metadata(stage, tmp_path)
    assert isinstance(md["summary"], dg.MarkdownMetadataValue)
    assert md["summary"].md_str == SUMMARY
    assert md["evaluation.final_aug_auc"].value == 0.71  # the metrics are still attached


def test_long_markdown_is_truncated_at_a_line_break(tmp_path: Path):
    stage = _stage(markdown="reports/evaluation/summary.md")
    lines = [f"| row {i} | {'x' * 40} |" for i in range(2000)]
    _write(tmp_path, "\n".join(lines) + "\n")
    text = markdown_summary(stage, tmp_path, limit=1000)
    body, note = text.rsplit("\n\n", 1)
    assert len(body) <= 1000 and body.splitlines()[-1] in lines  # whole lines only
    assert "truncated" in note and "reports/evaluation/summary.md" in note
    assert len(materialization_metadata(stage, tmp_path)[0]["summary"].md_str) < 21_000


def test_no_markdown_setting_or_file_no_summary(tmp_path: Path):
    _write(tmp_path, SUMMARY)
    assert "summary" not in materialization_metadata(_stage(), tmp_path)[0]
    assert markdown_summary(_stage(markdown=["not", "a", "path"]), tmp_path) is None
    missing = _stage(markdown="reports/evaluation/missing.md")
    assert markdown_summary(missing, tmp_path) is None
    assert "summary" not in materialization_metadata(missing, tmp_path)[0]
