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
from expctr.evaluation.ablation import ablation_reading, aug_ablation
from expctr.evaluation.report_metrics import CSV_COLUMNS
from expctr.evaluation.targets import evaluation_targets
from expctr.paths import ProjectPaths
from expctr.stages.evaluation_report import run as run_stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script> & \"Heat\""


def _hist(*titles: str) -> list[dict]:
    return [
        {"title": t, "year": 1995, "genres": ["Drama"], "liked": i % 2 == 0} for i, t in enumerate(titles)
    ]


def _auc(v: float, n: int, lo: float = 0.1, hi: float = 0.9) -> dict:
    return {"auc": v, "auc_ci_low": lo, "auc_ci_high": hi, "logloss": 0.7, "n": n}


def _diff(d: float, lo: float, hi: float, n: int) -> dict:
    return {"diff": d, "ci_low": lo, "ci_high": hi, "n": n}


def _curve(best: int) -> dict:
    """A 3-epoch Aug fit whose held-out AUC peaks at epoch `best`."""
    return {"blocks": [["facts", 7]], "best_epoch": best, "best_valid_auc": 0.7,
            "curve": [{"epoch": e, "train_loss": None if e == 0 else 0.6 - 0.01 * e,
                       "valid_auc": 0.7 if e == best else 0.6, "valid_logloss": 0.65, "seconds": 0.1}
                      for e in range(3)]}


def round_metrics(k: int, n: int, last: bool) -> dict:
    """round_k.json as the explainer rounds write it (k >= 1 with the Aug ablation; shuffled in the last)."""
    conf = {"agreement": 0.5, "positive_verdict_and_positive": 1, "positive_verdict_and_negative": 1,
            "negative_verdict_and_positive": 1, "negative_verdict_and_negative": 1, "reference_positive_rate": 0.5}
    m = {"round": k, "test_pairs": n, "test_click_rate": 0.5, "expctr_llm": _auc(0.5, n), "id_only": _auc(0.5, n),
         "stance_only": _auc(0.6, n), "verdict_logit": _auc(0.55, n), "llm_minus_id": _diff(0.1, -0.2, 0.4, n),
         "zero_shot_judge": _auc(0.6, n), "rules": {}, "explanations": {"share_one_sentence": 0.75},
         "verdicts": {"share_positive": 0.5, "vs_label": {**conf, "agreement": 1.0}, "vs_id_model": conf},
         "judge_by_grade": [{"grade": 0.8, "n": 2, "mean_p_yes": 0.92, "click_rate": 1.0},
                            {"grade": 0.15, "n": 2, "mean_p_yes": 0.15, "click_rate": 0.0}],
         "seconds": 60.0}
    if k:
        aug = {"explanation": {**_auc(0.75, n), "minus_id": _diff(0.03, 0.01, 0.05, n)},
               "facts": {**_auc(0.72, n), "minus_id": _diff(0.026, 0.0, 0.05, n)},
               "explanation_minus_facts": _diff(0.004, -0.01, 0.02, n)}
        if last:
            aug.update({"shuffled": {**_auc(0.7, n), "minus_id": _diff(-0.01, -0.03, 0.01, n)},
                        "explanation_minus_shuffled": _diff(0.05, 0.02, 0.08, n), "cross_user_donors": 1})
        m.update({"expctr_aug": aug,
                  "aug_fit": {"explanation": _curve(2), "facts": _curve(0), **({"shuffled": _curve(1)} if last else {})},
                  "rewards_rise": {"lc": {"verdict": {"first_quarter": 0.4, "last_quarter": 0.6, "rises": True}},
                                   "ic": {"verdict": {"first_quarter": 0.5, "last_quarter": 0.4, "rises": False}}}})
    return m


# per round, the judge's P(Yes) and Aug's P(click) on the 6 pairs (rounds before the last see the first 4):
# on the first 4 (labels 1 0 1 0) ExpCTR-LLM goes 0.125, 0.75, 1.0 and ExpCTR-Aug 0.75, 1.0
P_YES = {0: [0.5, 0.6, 0.4, 0.5], 1: [0.6, 0.5, 0.4, 0.3], 2: [0.9, 0.1, 0.8, 0.3, 0.95, 0.05]}
P_AUG = {1: [0.4, 0.6, 0.7, 0.2], 2: [0.8, 0.6, 0.7, 0.2, 0.9, 0.1]}
P_ID = [0.7, 0.6, 0.3, 0.4, 0.8, 0.2]  # first 4: AUC 0.5; all 6: 7/9


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
        "p_id": P_ID,
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
    for name, secs in (("raw_data", 5.0), ("features", 7.0), ("base_llm", 20.0)):
        (root / "metrics" / f"{name}.json").write_text(json.dumps({"seconds": secs}))
    (root / "metrics" / "llm_pairs.json").write_text(json.dumps({"seconds": 1500.0, "judge_grades": {
        "mean_p_yes": {"surely enjoy": 0.93, "probably enjoy": 0.9, "almost certainly not enjoy": 0.11},
        "share_ordered_with_next": {"surely enjoy": 0.8}}}))
    texts = [
        'The user will surely enjoy "Fargo" because they liked The Usual Suspects.',  # in history: fine
        "The user will likely not enjoy it, unlike Die Hard.",  # unseen -> unfaithful
        "The user will probably enjoy it.",
        EVIL,  # names the injected title (unseen for pair 4) and carries markup
        "The user will probably enjoy it.",
        "The user will likely not enjoy it.",
    ]
    for k in range(rounds + 1):
        n = 6 if k == rounds else 4
        head = pairs.head(n)
        df = head.select("user_id", "item_id", "label", "p_id").with_columns(
            pl.Series("explanation", texts[:n]),
            pl.Series("grade", [0.8, 0.15, 0.6, 0.4, 0.6, 0.15][:n]),
            pl.Series("verdict_logit", [2.0, -1.0, 1.0, 0.5, 3.0, -2.0][:n]),
            pl.Series("stance", [1, -1, 1, -1, 1, -1][:n], dtype=pl.Int8),
            pl.Series("n_tokens", [10] * n, dtype=pl.Int32),
            pl.Series("complete", [True] * n),
            pl.Series("p_yes_judge", P_YES[2 if k == rounds else k][:n]),
        )
        if k:
            aug = P_AUG[2][:n] if k == rounds else P_AUG[1][:n]
            df = df.with_columns(pl.Series("p_aug_explanation", aug), pl.Series("p_aug_facts", P_ID[:n]))
            if k == rounds:
                # the first explanation is all opening (its anchor was given): no reason of the explainer's own
                df = df.with_columns(pl.Series("p_aug_shuffled", [0.5] * n),
                                     pl.Series("opening", [texts[0]] + [""] * (n - 1)))
        (root / "data" / "explanations" / f"round_{k}").mkdir(parents=True)
        df.write_parquet(root / "data" / "explanations" / f"round_{k}" / "test.parquet")
        if k:
            rdir = root / "models" / "rounds" / f"round_{k}"
            rdir.mkdir(parents=True)
            for stage, base in (("lc", -0.7), ("ic", -0.9)):
                rows = [{"phase": "verdict", "step": s, "reward": base + 0.1 * s + k} for s in (1, 2, 3, 4)]
                rows += [{"phase": "reason", "step": 1, "reward": base, "reward_std": 0.2}]
                (rdir / f"rl_{stage}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        (root / "metrics" / f"round_{k}.json").write_text(json.dumps(round_metrics(k, n, k == rounds)))
    return root


def _outputs(root: Path) -> dict[str, bytes]:
    files = sorted((root / "reports" / "evaluation").iterdir())
    out = {f"reports/evaluation/{p.name}": p.read_bytes() for p in files}
    for name in ("evaluation.json", "evaluation_rounds.csv"):
        out[f"metrics/{name}"] = (root / "metrics" / name).read_bytes()
    return out


FIGURES = {"roc_test_pairs", "aug_ablation", "judge_grades", "round_progress", "aug_curves", "round_verdicts",
           "reward_curves"}


def test_stage_numbers_escaping_and_determinism(tmp_path: Path):
    root = build_project(tmp_path / "p")
    params = load_params(root / "params.yaml")
    metrics = run_stage(params, ProjectPaths(root))
    first = _outputs(root)
    run_stage(params, ProjectPaths(root))
    assert _outputs(root) == first  # byte-identical reruns (figures included)
    assert {p.stem for p in (root / "reports" / "evaluation").glob("*.png")} == FIGURES

    assert metrics["test_pairs"] == 6 and metrics["shared_pairs"] == 4 and metrics["rounds"] == 2
    shared, final = metrics["shared_pairs_table"], metrics["final_pairs"]
    assert shared["id_only"]["auc"] == 0.5 and shared["zero_shot_judge"]["auc"] == pytest.approx(0.875)
    assert shared["rule_share_liked"]["auc"] == 1.0 and shared["rule_share_liked"]["logloss"] is None
    assert shared["expctr_llm_round_0"]["auc"] == pytest.approx(0.125)  # pos {.5,.4} vs neg {.6,.5}: one tie
    assert shared["expctr_llm_round_1"]["auc"] == 0.75 and shared["expctr_aug_round_2"]["auc"] == 1.0
    assert shared["aug_facts_round_2"]["auc"] == 0.5  # the facts variant scores like the ID model here
    assert "expctr_aug_round_0" not in shared  # the base explainer has no ExpCTR-Aug
    assert final["zero_shot_judge"]["auc"] == pytest.approx(8.5 / 9) and final["id_only"]["auc"] == pytest.approx(7 / 9)
    assert final["stance_only_round_2"]["auc"] == 1.0 and final["stance_only_round_2"]["logloss"] is None
    assert final["aug_shuffled_round_2"]["auc"] == 0.5 and "expctr_llm_round_0" not in final
    assert metrics["shared_gains"]["round_2"]["aug_minus_id"]["diff"] == pytest.approx(0.5)
    assert "aug_minus_id" not in metrics["shared_gains"]["round_0"]

    ab = metrics["aug_ablation"]  # the final round's ablation, as round_2.json records it
    assert ab["round"] == 2 and set(ab["variants"]) == {"explanation", "facts", "shuffled"}
    assert ab["variants"]["explanation"]["minus_id"]["diff"] == 0.03 and ab["id_only"]["auc"] == 0.5
    assert ab["explanation_minus_shuffled"]["diff"] == 0.05 and ab["cross_user_donors"] == 1
    assert ab["facts_account_for_gain"] is True and "facts alone account for the gain" in ab["reading"]
    assert metrics["final_explanation_minus_facts"] == 0.004 and metrics["final_aug_minus_id"] == 0.03
    assert metrics["judge_grades"]["surely enjoy"] == {"min_p": 0.8, "n": 2, "mean_p_yes": 0.92, "click_rate": 1.0,
                                                       "pool_mean_p_yes": 0.93, "pool_ordered_with_next": 0.8}
    assert metrics["judge_grades"]["probably enjoy, though it could go either way"]["n"] == 0
    assert metrics["aug_fit"]["explanation"] == {"best_epoch": 2, "best_valid_auc": 0.7, "epochs": 2}

    r1, r2 = metrics["per_round"]["round_1"], metrics["per_round"]["round_2"]
    assert r1["faithfulness"] == 0.5  # Die Hard (pair 2) and the injected title (pair 4) are unseen
    assert r2["faithfulness"] == pytest.approx(4 / 6)
    assert r2["top_explanation_share"] == pytest.approx(2 / 6) and r1["test_pairs"] == 4
    assert r1["reason_grounded"] == r1["grounded"] > 0  # no opening recorded: the whole text is the reason
    assert r2["reason_grounded"] == pytest.approx(r2["grounded"] - 1 / 6)  # pair 1's anchor is not credited
    assert r2["aug_minus_id"] == 0.03 and r2["aug_minus_id_ci_low"] == 0.01 and r2["llm_minus_id"] == 0.1
    assert r2["aug_best_epoch"] == 2 and r2["positive_share"] == 0.5 and r2["agree_id"] == 0.5
    assert metrics["stage_seconds"]["ctr_model"] == 30.0 and metrics["stage_seconds"]["explainer_round_2"] == 60.0
    assert metrics["full_test_split"]["models"]["din"]["auc"] == 0.78

    targets = {t["target"]: t for t in metrics["targets"]}
    assert targets["ExpCTR-Aug − ID AUC ≥ +0.005 with its 95 % CI above 0"]["met"] is True
    assert targets["(a) explanation − (b) facts only: reported with its 95 % CI"]["met"] is True
    assert targets["(a) explanation − (b) facts only > 0 with its CI above 0"]["met"] is False
    assert targets["ExpCTR-LLM AUC ≥ the ID model's on the same pairs"]["reference"] == pytest.approx(7 / 9)
    progress = targets["round 2 ≥ round 1 on the shared pairs, ExpCTR-LLM and ExpCTR-Aug"]
    assert progress["met"] is True and progress["value"] == {"ExpCTR-LLM": [0.75, 1.0], "ExpCTR-Aug": [0.75, 1.0]}
    rising = targets["rising every round on the shared pairs (ExpCTR-LLM from round 0, ExpCTR-Aug from round 1)"]
    assert rising["met"] is True and rising["value"]["ExpCTR-LLM"] == [pytest.approx(0.125), 0.75, 1.0]
    wall = [t for t in metrics["targets"] if t["target"].startswith("whole pipeline")]
    assert wall[0]["value"] == pytest.approx(round((5 + 7 + 30 + 20 + 1500 + 3 * 60) / 60, 1))
    assert [t["met"] for t in wall] == [True, False] and [t["level"] for t in wall] == ["must", "goal"]
    assert metrics["targets_met"] == sum(t["met"] is True for t in metrics["targets"])

    csv = pl.read_csv(root / "metrics" / "evaluation_rounds.csv")
    assert csv.columns == CSV_COLUMNS and csv["round"].to_list() == [0, 1, 2]
    assert csv["test_pairs"].to_list() == [4, 4, 6] and csv["shared_pairs"].to_list() == [4, 4, 4]
    assert csv["shared_llm_auc"].to_list() == [0.125, 0.75, 1.0]
    assert csv["shared_aug_auc"].to_list() == [None, 0.75, 1.0] and csv["aug_auc"].to_list() == [None, 0.75, 0.75]

    report = (root / "reports" / "evaluation" / "report.html").read_text()
    assert "<script>" not in report and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in report
    assert "full test split (n = 1000)" in report and "Round over round on the same 4 pairs" in report
    assert "the ExpCTR-Aug ablation (round 2, n = 6)" in report # the sample table states each pair's grade in words
    assert '<td class="expl">probably not enjoy, though it could go either way</td>' in report
    assert report.count("data:image/png;base64,") == len(FIGURES)
    summary = (root / "reports" / "evaluation" / "summary.md").read_text()
    assert "| ID-only (din) | 0.778 |" in summary and "**Targets**:" in summary and "issue" not in summary
    assert "| (a) − (b): what the explanation adds over the facts | +0.004 [-0.010, +0.020] |" in summary
    assert "<script>" not in summary
    json.loads((root / "metrics" / "evaluation.json").read_text(), parse_constant=_no_nan)


def test_ablation_reading_says_whether_the_facts_account_for_the_gain():
    base = {"round": 2, "variants": {"explanation": {"auc": 0.76, "minus_id": _diff(0.02, 0.01, 0.03, 9)}},
            "id_only": {"auc": 0.74}}
    above = ablation_reading({**base, "explanation_minus_facts": _diff(0.01, 0.002, 0.02, 9)})
    inside = ablation_reading({**base, "explanation_minus_facts": _diff(0.01, -0.002, 0.02, 9)})
    below = ablation_reading({**base, "explanation_minus_facts": _diff(-0.01, -0.02, -0.002, 9)})
    assert "the gain is not the facts alone" in above and "account" not in above
    assert "facts alone account for the gain" in inside and "adds nothing measurable" in inside
    assert "facts alone account for the gain" in below and "costs AUC" in below
    assert aug_ablation({"expctr_aug": {}}, 0) == {}  # round 0 trains no Aug


def test_targets_need_their_intervals_and_more_than_one_round():
    row = {"round": 1, "grounded": 0.96, "outside_title_share": 0.03}
    shared = {"expctr_llm_round_0": {"auc": 0.7}, "expctr_llm_round_1": {"auc": 0.72},
              "expctr_aug_round_1": {"auc": 0.75}}
    ab = {"variants": {"explanation": {"minus_id": _diff(0.03, -0.001, 0.06, 9)}},
          "explanation_minus_facts": {"diff": 0.01, "ci_low": None, "ci_high": None}}
    out = {t["target"]: t["met"] for t in evaluation_targets({}, shared, [{"round": 0}, row], ab, {"a": 100.0})}
    assert out["ExpCTR-Aug − ID AUC ≥ +0.005 with its 95 % CI above 0"] is False  # the interval reaches below 0
    assert out["ExpCTR-Aug − ID AUC ≥ +0.02"] is True
    assert out["(a) explanation − (b) facts only: reported with its 95 % CI"] is False  # no interval
    assert out["round 1 ≥ round 1 on the shared pairs, ExpCTR-LLM and ExpCTR-Aug"] is None  # one round: n/a
    assert out["rising every round on the shared pairs (ExpCTR-LLM from round 0, ExpCTR-Aug from round 1)"] is True
    assert out["grounded ≥ 95% (round 1)"] is True
    assert out["quoted titles outside history / target ≤ 2% (round 1)"] is False
    assert out["ExpCTR-LLM AUC ≥ 0.74 (final pairs)"] is None  # no final-pair row: n/a, not met


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
    assert {p.stem for p in pngs} == FIGURES
    from PIL import Image

    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as im:
            im.verify()
            assert im.size[0] > 300 and im.size[1] > 200
    report = (out / "report.html").read_text()
    for heading in ("Targets", "the ExpCTR-Aug ablation (round 2, n = 8)", "Round over round on the same 6 pairs",
                    "full test split", "Rounds (each on its own", "ExpCTR-Aug training (round 2)",
                    "Wall time per stage", "Sample explanations (round 2)"):
        assert heading in report, heading
    assert report.count("data:image/png;base64,") == len(FIGURES)
    metrics = json.loads((root / "metrics" / "evaluation.json").read_text())
    assert set(metrics["per_round"]) == {"round_0", "round_1", "round_2"}
    assert metrics["test_pairs"] == 8 and metrics["shared_pairs"] == 6
    for r in metrics["per_round"].values():
        assert 0 <= r["faithfulness"] <= 1 and 0 <= r["distinct_2"] <= 1
    round_json = json.loads((root / "metrics" / "round_2.json").read_text())
    assert metrics["final_llm_auc"] == (None if np.isnan(round_json["expctr_llm"]["auc"])
                                        else pytest.approx(round_json["expctr_llm"]["auc"]))
    # the ablation restates the round's own paired differences; the final-pair AUCs recompute them from the scores
    assert metrics["aug_ablation"]["explanation_minus_shuffled"] == round_json["expctr_aug"]["explanation_minus_shuffled"]
    assert metrics["final_pairs"]["aug_facts_round_2"]["auc"] == pytest.approx(round_json["expctr_aug"]["facts"]["auc"])
    assert pl.read_csv(root / "metrics" / "evaluation_rounds.csv")["round"].to_list() == [0, 1, 2]
    assert str(root) not in (root / "metrics" / "evaluation.json").read_text()
