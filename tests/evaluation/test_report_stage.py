"""The evaluation_report stage: on a hand-built project (exact numbers, escaping, determinism, errors) and
once on the tiny real two-round run (through the CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from support import make_params, run_cli

from expctr.config import load_params
from expctr.errors import ExpCTRError
from expctr.paths import ProjectPaths
from expctr.stages.evaluation_report import CSV_COLUMNS
from expctr.stages.evaluation_report import run as run_stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script> & \"Heat\""


def _hist(*titles: str) -> list[dict]:
    return [
        {"title": t, "year": 1995, "genres": ["Drama"], "liked": i % 2 == 0} for i, t in enumerate(titles)
    ]


def build_project(root: Path, rounds: int = 2) -> Path:
    """Every artifact the stage reads, by hand: 4 test pairs, known scores and explanations."""
    root.mkdir(parents=True)
    make_params(root, rounds=rounds)
    items = pl.DataFrame(
        {
            "item_code": [0, 1, 2, 3, 4],
            "title": ["Usual Suspects, The", "Die Hard", "Heat", "Fargo", EVIL],
            "year": [1995, 1988, 1995, 1996, 2000],
        }
    )
    (root / "data" / "features").mkdir(parents=True)
    items.write_parquet(root / "data" / "features" / "items.parquet")
    labels = [1, 0, 1, 0]
    pairs = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "item_id": ["i1", "i2", "i3", "i4"],
            "label": labels,
            "history": [_hist("Usual Suspects, The"), _hist("Heat"), _hist("Fargo"), _hist()],
            "target": [
                {"title": "Fargo", "year": 1996, "genres": ["Crime"]},
                {"title": EVIL, "year": 2000, "genres": []},
                {"title": "Heat", "year": 1995, "genres": []},
                {"title": "Fargo", "year": 1996, "genres": []},
            ],
            "p_yes_zero_shot": [
                0.6,
                0.4,
                0.5,
                0.5,
            ],  # AUC (1 + 1 + 1 + 0.5) / 4: pos {.6, .5} vs neg {.4, .5}
            "rule_share_liked": [1.0, 0.0, 1.0, 0.5],
            "rule_genre_overlap": [0.0, 0.0, 0.0, 0.0],
        }
    )
    (root / "data" / "llm_pairs").mkdir(parents=True)
    pairs.write_parquet(root / "data" / "llm_pairs" / "test.parquet")
    (root / "metrics").mkdir()
    (root / "metrics" / "ctr.json").write_text(
        json.dumps(
            {
                "primary": "din",
                "test_rows": 1000,
                "test_label_rate": 0.55,
                "models": {
                    "popularity": {"test_auc": 0.7, "test_logloss": 0.65},
                    "din": {"test_auc": 0.78, "test_logloss": 0.6},
                },
            }
        )
    )
    texts = {
        1: [
            "The user will probably enjoy it because they liked The Usual Suspects.",  # in history: fine
            "The user will probably not enjoy it, unlike Die Hard.",  # unseen -> unfaithful
            "The user will probably enjoy it.",
            EVIL,
        ],  # names the injected title (unseen) and carries markup
        2: [
            "The user will probably enjoy Fargo.",
            EVIL,  # pair 2: EVIL is its target, "Heat" its history
            "The user will probably enjoy it like 'Heat'.",
            EVIL,
        ],  # pair 4: neither -> unfaithful
    }
    for k in range(1, rounds + 1):
        expl = texts[1 + (k - 1) % 2]
        stance = [1, -1, 1, 0] if k % 2 else [1, -1, 1, -1]
        df = pairs.select("user_id", "item_id", "label").with_columns(
            pl.Series("explanation", expl),
            pl.Series("n_tokens", [10] * 4, dtype=pl.Int32),
            pl.Series("stance", stance, dtype=pl.Int8),
            pl.Series("p_yes_judge", [0.9, 0.1, 0.8, 0.3]),  # AUC 1
            pl.Series("p_click_aug", [0.4, 0.6, 0.7, 0.2]),  # AUC 0.75
            pl.Series("p_click_id", [0.7, 0.6, 0.3, 0.4]),  # AUC 0.5
            pl.Series("lc_reward", [-0.1] * 4),
            pl.Series("ic_reward", [-0.2] * 4),
        )
        (root / "data" / "explanations" / f"round_{k}").mkdir(parents=True)
        df.write_parquet(root / "data" / "explanations" / f"round_{k}" / "test.parquet")
        (root / "metrics" / f"round_{k}.json").write_text(
            json.dumps(
                {
                    "round": k,
                    "lc_reward_mean": -0.3,
                    "ic_reward_mean": -0.5,
                    "explanations": {"test": {"share_one_sentence": 0.75}},
                }
            )
        )
        rdir = root / "models" / "rounds" / f"round_{k}"
        rdir.mkdir(parents=True)
        for stage, base in (("lc", -0.7), ("ic", -0.9)):
            rows = [
                {"step": s, "reward": base + 0.1 * s + k, "reward_std": 0.2, "loss": 0.0, "seconds": 1.0}
                for s in (1, 2, 3)
            ]
            (rdir / f"rl_{stage}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _outputs(root: Path) -> dict[str, bytes]:
    files = sorted((root / "reports" / "evaluation").iterdir())
    out = {f"reports/evaluation/{p.name}": p.read_bytes() for p in files}
    for name in ("evaluation.json", "evaluation_rounds.csv"):
        out[f"metrics/{name}"] = (root / "metrics" / name).read_bytes()
    return out


def test_stage_numbers_escaping_and_determinism(tmp_path: Path):
    root = build_project(tmp_path / "p")
    params = load_params(root / "params.yaml")
    metrics = run_stage(params, ProjectPaths(root))
    first = _outputs(root)
    run_stage(params, ProjectPaths(root))
    assert _outputs(root) == first  # byte-identical reruns (figures included)

    assert metrics["test_pairs"] == 4 and metrics["rounds"] == 2
    t = metrics["test_pairs_predictors"]
    assert t["id_only"]["auc"] == 0.5 and t["zero_shot_judge"]["auc"] == pytest.approx(0.875)
    assert t["rule_share_liked"]["auc"] == 1.0 and t["rule_share_liked"]["logloss"] is None
    assert t["expctr_llm_round_1"]["auc"] == 1.0 and t["expctr_aug_round_2"]["auc"] == 0.75
    r1, r2 = metrics["per_round"]["round_1"], metrics["per_round"]["round_2"]
    assert r1["faithfulness"] == 0.5 and r1["title_mention_share"] == 0.75  # Die Hard + the injected title
    assert r2["faithfulness"] == 0.75  # Fargo, 'Heat' and pair 2's EVIL are the pairs' own targets / history
    assert r2["top_explanation_share"] == 0.5 and r1["top_explanation_share"] == 0.25
    assert r1["stance_share"] == 0.75 and r1["stance_label_agreement"] == 1.0
    assert r1["stance_id_agreement"] == pytest.approx(1 / 3)  # stance +1 -1 +1 vs id >= .5: T T F
    assert r2["stance_label_agreement"] == 1.0 and r2["stance_id_agreement"] == 0.5
    assert r1["share_one_sentence"] == 0.75
    assert r1["rl_lc_reward_first"] == pytest.approx(0.4) and r2["rl_ic_reward_last"] == pytest.approx(1.4)
    assert (
        metrics["final_faithfulness"] == 0.75 and metrics["full_test_split"]["models"]["din"]["auc"] == 0.78
    )

    csv = pl.read_csv(root / "metrics" / "evaluation_rounds.csv")
    assert csv.columns == CSV_COLUMNS and csv["round"].to_list() == [1, 2]
    assert (
        csv["faithfulness"].to_list() == [0.5, 0.75] and csv["lc_auc"].to_list() == csv["llm_auc"].to_list()
    )

    report = (root / "reports" / "evaluation" / "report.html").read_text()
    assert "<script>" not in report and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in report
    assert "full test split (n = 1000)" in report and "sampled test pairs (n = 4)" in report
    summary = (root / "reports" / "evaluation" / "summary.md").read_text()
    assert "| ID-only (din) | 0.500 |" in summary and "n = 1000" in summary
    assert "50% of round-2 explanations are the same sentence" in summary  # EVIL, quoted in the reading
    assert "<script>" not in summary and "&lt;script&gt;" in summary
    json.loads((root / "metrics" / "evaluation.json").read_text(), parse_constant=_no_nan)


def _no_nan(name):
    raise AssertionError(f"{name} in evaluation.json")


def test_missing_round_or_changed_pairs_is_a_clear_error(tmp_path: Path):
    root = build_project(tmp_path / "p", rounds=2)
    params = load_params(root / "params.yaml")
    shutil.rmtree(root / "data" / "explanations" / "round_2")
    with pytest.raises(ExpCTRError, match="explainer_round_2"):
        run_stage(params, ProjectPaths(root))
    root = build_project(tmp_path / "q", rounds=1)
    pairs = pl.read_parquet(root / "data" / "llm_pairs" / "test.parquet")
    pairs.reverse().write_parquet(root / "data" / "llm_pairs" / "test.parquet")
    with pytest.raises(ExpCTRError, match="in order"):
        run_stage(load_params(root / "params.yaml"), ProjectPaths(root))
    assert not (root / "reports" / "evaluation").exists()


def test_cli_says_which_stage_to_run_first(tmp_path: Path):
    make_params(tmp_path)
    proc = run_cli(tmp_path, "evaluation-report", check=False)
    assert proc.returncode == 2 and "run the llm_pairs stage first" in proc.stderr


@pytest.mark.slow
def test_report_on_the_tiny_real_run(tiny_rounds_project: Path, tmp_path: Path):
    root = tmp_path / "project"
    shutil.copytree(tiny_rounds_project, root)
    proc = run_cli(root, "evaluation-report")
    assert "evaluation_report: done" in proc.stdout
    out = root / "reports" / "evaluation"
    assert {"report.html", "summary.md"} <= {p.name for p in out.iterdir()}
    pngs = sorted(out.glob("*.png"))
    assert {p.stem for p in pngs} == {"roc_test_pairs", "round_auc", "round_explanations", "reward_curves"}
    from PIL import Image

    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as im:
            im.verify()
            assert im.size[0] > 300 and im.size[1] > 200
    report = (out / "report.html").read_text()
    for heading in (
        "Predictors on the sampled test pairs (n = 8)",
        "full test split",
        "Explanations per round",
        "Sample explanations (round 2)",
    ):
        assert heading in report
    assert report.count("<table>") >= 4 and report.count("data:image/png;base64,") == 4
    metrics = json.loads((root / "metrics" / "evaluation.json").read_text())
    assert set(metrics["per_round"]) == {"round_1", "round_2"}
    for r in metrics["per_round"].values():
        assert 0 <= r["faithfulness"] <= 1 and 0 <= r["distinct_2"] <= 1 and r["rl_lc_steps"] == 1
    round_json = json.loads((root / "metrics" / "round_2.json").read_text())
    assert metrics["final_llm_auc"] == (
        None if np.isnan(round_json["lc_auc"]) else pytest.approx(round_json["lc_auc"])
    )
    assert pl.read_csv(root / "metrics" / "evaluation_rounds.csv")["round"].to_list() == [1, 2]
