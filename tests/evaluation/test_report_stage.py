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
    """Every artifact the stage reads, by hand: 6 test pairs with known scores and explanations; round 0 and the
    rounds before the last are evaluated on the first 4 pairs, the last round on all 6."""
    root.mkdir(parents=True)
    make_params(root, rounds=rounds)
    items = pl.DataFrame({"item_code": [0, 1, 2, 3, 4],
                          "title": ["Usual Suspects, The", "Die Hard", "Heat", "Fargo", EVIL],
                          "year": [1995, 1988, 1995, 1996, 2000]})
    (root / "data" / "features").mkdir(parents=True)
    items.write_parquet(root / "data" / "features" / "items.parquet")
    labels = [1, 0, 1, 0, 1, 0]
    pairs = pl.DataFrame({
        "user_id": [f"u{i}" for i in range(1, 7)],
        "item_id": [f"i{i}" for i in range(1, 7)],
        "label": labels,
        "history": [_hist("Usual Suspects, The"), _hist("Heat"), _hist("Fargo"), _hist(), _hist(), _hist()],
        "target": [{"title": "Fargo", "year": 1996, "genres": ["Crime"]},
                   {"title": EVIL, "year": 2000, "genres": []},
                   {"title": "Heat", "year": 1995, "genres": []},
                   {"title": "Fargo", "year": 1996, "genres": []},
                   {"title": "Heat", "year": 1995, "genres": []},
                   {"title": "Fargo", "year": 1996, "genres": []}],
        # first 4: pos {.6, .5} vs neg {.4, .5} -> AUC 0.875; all 6: pos {.6,.5,.9} vs neg {.4,.5,.1}
        "p_yes_zero_shot": [0.6, 0.4, 0.5, 0.5, 0.9, 0.1],
        "p_id": [0.7, 0.6, 0.3, 0.4, 0.8, 0.2],  # first 4: AUC 0.5
        "rule_share_liked": [1.0, 0.0, 1.0, 0.5, 1.0, 0.0],
        "rule_genre_overlap": [0.0] * 6,
    })
    (root / "data" / "llm_pairs").mkdir(parents=True)
    pairs.write_parquet(root / "data" / "llm_pairs" / "test.parquet")
    (root / "metrics").mkdir()
    (root / "metrics" / "ctr.json").write_text(json.dumps({
        "primary": "din", "test_rows": 1000, "test_label_rate": 0.55,
        "models": {"popularity": {"test_auc": 0.7, "test_logloss": 0.65},
                   "din": {"test_auc": 0.78, "test_logloss": 0.6, "train_seconds": 30.0}}}))
    for name, secs in (("raw_data", 5.0), ("features", 7.0), ("base_llm", 20.0), ("llm_pairs", 100.0)):
        (root / "metrics" / f"{name}.json").write_text(json.dumps({"seconds": secs}))
    texts = [
        "The user will probably enjoy it because they liked The Usual Suspects.",  # in history: fine
        "The user will probably not enjoy it, unlike Die Hard.",  # unseen -> unfaithful
        "The user will probably enjoy it.",
        EVIL,  # names the injected title (unseen for pair 4) and carries markup
        "The user will probably enjoy it.",
        "The user will probably not enjoy it.",
    ]
    for k in range(rounds + 1):
        n = 6 if k == rounds else 4
        head = pairs.head(n)
        df = head.select("user_id", "item_id", "label", "p_id").with_columns(
            pl.Series("explanation", texts[:n]),
            pl.Series("n_tokens", [10] * n, dtype=pl.Int32),
            pl.Series("complete", [True] * n),
            pl.Series("stance", [1, -1, 1, 0, 1, -1][:n], dtype=pl.Int8),
            pl.Series("verdict_logit", [2.0, -1.0, 1.0, 0.5, 3.0, -2.0][:n]),
            pl.Series("p_yes_judge", [0.9, 0.1, 0.8, 0.3, 0.95, 0.05][:n] if k else [0.5, 0.6, 0.4, 0.5][:n]),
        )
        if k:
            df = df.with_columns(pl.Series("p_click_aug", [0.4, 0.6, 0.7, 0.2, 0.9, 0.1][:n]))
        (root / "data" / "explanations" / f"round_{k}").mkdir(parents=True)
        df.write_parquet(root / "data" / "explanations" / f"round_{k}" / "test.parquet")
        auc = {"auc": 0.5, "auc_ci_low": 0.1, "auc_ci_high": 0.9, "logloss": 0.7, "n": n}
        m = {"round": k, "test_pairs": n, "test_click_rate": 0.5, "expctr_llm": auc, "id_only": auc,
             "verdict_logit": auc, "explanations": {"share_one_sentence": 0.75},
             "verdicts": {"share_positive": 0.5,
                          "vs_label": {"agreement": 1.0, "positive_verdict_and_positive": 2,
                                       "positive_verdict_and_negative": 0, "negative_verdict_and_positive": 0,
                                       "negative_verdict_and_negative": 2, "reference_positive_rate": 0.5},
                          "vs_id_model": {"agreement": 0.5, "positive_verdict_and_positive": 1,
                                          "positive_verdict_and_negative": 1, "negative_verdict_and_positive": 1,
                                          "negative_verdict_and_negative": 1, "reference_positive_rate": 0.5}},
             "seconds": 60.0}
        if k:
            m.update({"expctr_aug": auc, "aug_minus_id": {"diff": 0.02, "ci_low": -0.01, "ci_high": 0.05},
                      "rewards_rise": {"lc": {"verdict": {"first_quarter": 0.4, "last_quarter": 0.6, "rises": True}},
                                       "ic": {"verdict": {"first_quarter": 0.5, "last_quarter": 0.4, "rises": False}}}})
            rdir = root / "models" / "rounds" / f"round_{k}"
            rdir.mkdir(parents=True)
            for stage, base in (("lc", -0.7), ("ic", -0.9)):
                rows = [{"phase": "verdict", "step": s, "reward": base + 0.1 * s + k} for s in (1, 2, 3, 4)]
                rows += [{"phase": "reason", "step": 1, "reward": base, "reward_std": 0.2}]
                (rdir / f"rl_{stage}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        (root / "metrics" / f"round_{k}.json").write_text(json.dumps(m))
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

    assert metrics["test_pairs"] == 6 and metrics["shared_pairs"] == 4 and metrics["rounds"] == 2
    shared, final = metrics["shared_pairs_table"], metrics["final_pairs"]
    assert shared["id_only"]["auc"] == 0.5 and shared["zero_shot_judge"]["auc"] == pytest.approx(0.875)
    assert shared["rule_share_liked"]["auc"] == 1.0 and shared["rule_share_liked"]["logloss"] is None
    assert shared["expctr_llm_round_1"]["auc"] == 1.0 and shared["expctr_aug_round_2"]["auc"] == 0.75
    assert shared["expctr_llm_round_0"]["auc"] == pytest.approx(0.125)  # pos {.5,.4} vs neg {.6,.5}: one tie
    assert "expctr_aug_round_0" not in shared  # the base explainer has no ExpCTR-Aug
    assert final["zero_shot_judge"]["auc"] == pytest.approx(8.5 / 9) and final["id_only"]["n"] == 6
    assert "expctr_llm_round_0" not in final  # round 0 saw only 4 of the 6 pairs
    r1, r2 = metrics["per_round"]["round_1"], metrics["per_round"]["round_2"]
    assert r1["faithfulness"] == 0.5  # Die Hard (pair 2) and the injected title (pair 4) are unseen
    assert r2["faithfulness"] == pytest.approx(4 / 6)
    assert r2["top_explanation_share"] == pytest.approx(2 / 6) and r1["test_pairs"] == 4
    assert r2["aug_minus_id"] == 0.02 and r2["positive_share"] == 0.5 and r2["agree_id"] == 0.5
    assert metrics["stage_seconds"]["ctr_model"] == 30.0 and metrics["stage_seconds"]["explainer_round_2"] == 60.0
    assert metrics["full_test_split"]["models"]["din"]["auc"] == 0.78
    targets = {t["target"]: t for t in metrics["targets"]}
    assert targets["ExpCTR-Aug - ID model AUC >= +0.01 (goal)"]["met"] is True
    assert targets["verdict agrees with the ID model's decision on >= 80 % of pairs"]["met"] is False
    rises = targets["in every stage the last quarter's mean reward beats the first quarter's"]
    assert rises["met"] is False and rises["value"] == {"round 1 lc_verdict": True, "round 1 ic_verdict": False,
                                                          "round 2 lc_verdict": True, "round 2 ic_verdict": False}
    wall = targets["whole pipeline <= 60 min on 2 cores (stages' own wall times)"]
    assert wall["value"] == pytest.approx(round((5 + 7 + 30 + 20 + 100 + 3 * 60) / 60, 1)) and wall["met"] is True

    csv = pl.read_csv(root / "metrics" / "evaluation_rounds.csv")
    assert csv.columns == CSV_COLUMNS and csv["round"].to_list() == [0, 1, 2]
    assert csv["test_pairs"].to_list() == [4, 4, 6]

    report = (root / "reports" / "evaluation" / "report.html").read_text()
    assert "<script>" not in report and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in report
    assert "full test split (n = 1000)" in report and "Every round on the same 4 pairs" in report
    assert "Every predictor on the last round&#x27;s pairs (n = 6)" in report or "last round's pairs (n = 6)" in report
    summary = (root / "reports" / "evaluation" / "summary.md").read_text()
    assert "| ID-only (din) | 0.500 |" in summary and "**Targets** (issue 8):" in summary
    assert "<script>" not in summary
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
    with pytest.raises(ExpCTRError, match="first 4 pairs"):
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
    assert {p.stem for p in pngs} == {"roc_test_pairs", "round_auc", "round_verdicts", "reward_curves"}
    from PIL import Image

    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as im:
            im.verify()
            assert im.size[0] > 300 and im.size[1] > 200
    report = (out / "report.html").read_text()
    for heading in ("Targets", "Every round on the same 6 pairs", "full test split", "Rounds (each on its own",
                    "Wall time per stage", "Sample explanations (round 2)"):
        assert heading in report, heading
    assert report.count("data:image/png;base64,") == 4
    metrics = json.loads((root / "metrics" / "evaluation.json").read_text())
    assert set(metrics["per_round"]) == {"round_0", "round_1", "round_2"}
    assert metrics["test_pairs"] == 8 and metrics["shared_pairs"] == 6
    for r in metrics["per_round"].values():
        assert 0 <= r["faithfulness"] <= 1 and 0 <= r["distinct_2"] <= 1
    round_json = json.loads((root / "metrics" / "round_2.json").read_text())
    assert metrics["final_llm_auc"] == (None if np.isnan(round_json["expctr_llm"]["auc"])
                                        else pytest.approx(round_json["expctr_llm"]["auc"]))
    assert pl.read_csv(root / "metrics" / "evaluation_rounds.csv")["round"].to_list() == [0, 1, 2]
    assert str(root) not in (root / "metrics" / "evaluation.json").read_text()
