"""End to end on a tiny slice of the real data with the real embedded LLM: base_llm -> llm_pairs -> round 0 ->
two rounds. Two verdict steps and one GRPO step per stage, a handful of pairs: it proves the stages fit together
and write what they promise (versioned adapters, explanations, per-round metrics with intervals and verdict
confusions, reward curves, relative paths), not that RL improves anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from safetensors.torch import load_file
from support import run_cli

from expctr.llm.verdicts import VERDICT_GRADES


def test_pairs_carry_the_rl_signals(tiny_rounds_project: Path):
    root = tiny_rounds_project
    m = json.loads((root / "metrics" / "llm_pairs.json").read_text())
    assert m["pairs"]["train"] == 12 and m["pairs"]["valid"] == 12 and m["pairs"]["test"] == 8
    assert 0 <= m["test_zero_shot_judge"]["auc"] <= 1 and 0 <= m["test_id_model"]["auc"] <= 1
    train = pl.read_parquet(root / "data" / "llm_pairs" / "train.parquet")
    assert {"p_id", "judge_p_yes_pos", "judge_p_yes_neg"} <= set(train.columns)
    # the frozen judge follows a stated verdict on (nearly) every pool pair
    assert m["judge_verdict"]["share_follows_stance"] >= 0.9
    test = pl.read_parquet(root / "data" / "llm_pairs" / "test.parquet")
    assert {"p_id", "p_yes_zero_shot", "rule_share_liked", "rule_genre_overlap"} <= set(test.columns)
    # ExpCTR-Aug's pairs: slates of two same-time pairs of one user, from the valid period
    valid = pl.read_parquet(root / "data" / "llm_pairs" / "valid.parquet")
    assert set(valid.group_by("user_id", "timestamp").len()["len"]) == {2}
    features_valid = pl.read_parquet(root / "data" / "features" / "valid.parquet")
    assert valid.join(features_valid, on=["user_id", "item_id", "timestamp"], how="anti").height == 0
    # donors: one more test-period pair for each user with a single test pair
    donors = pl.read_parquet(root / "data" / "llm_pairs" / "donors.parquet")
    singles = test.group_by("user_id").len().filter(pl.col("len") == 1)["user_id"].to_list()
    assert set(donors["user_id"]) <= set(singles)
    assert donors.join(test, on=["user_id", "item_id"], how="semi").height == 0
    # every grade's reading was measured on the pool, in order for most pairs
    grades = m["judge_grades"]
    assert len(grades["mean_p_yes"]) == len(VERDICT_GRADES) and min(grades["share_ordered_with_next"].values()) >= 0.5


def test_round_zero_evaluates_the_base_explainer(tiny_rounds_project: Path):
    root = tiny_rounds_project
    m0 = json.loads((root / "metrics" / "round_0.json").read_text())
    assert m0["round"] == 0 and m0["test_pairs"] == 6  # evaluation.round_test_pairs (not the last round)
    assert {"auc", "auc_ci_low", "auc_ci_high", "n"} <= set(m0["expctr_llm"])
    assert not (root / "models" / "rounds" / "round_0").exists()  # nothing trained
    t0 = pl.read_parquet(root / "data" / "explanations" / "round_0" / "test.parquet")
    assert t0.height == 6 and t0["explanation"].str.starts_with("The user will ").all()
    # every explanation opens with the grade its own verdict logit asks for
    from expctr.llm.verdicts import grade_of

    for text, z in zip(t0["explanation"], t0["verdict_logit"]):
        g = grade_of(1 / (1 + 2.718281828 ** -z))
        assert text.startswith(f"The user will {g.words} "), (text, z)


def test_two_rounds_write_versioned_artifacts_and_metrics(tiny_rounds_project: Path):
    root = tiny_rounds_project
    r1 = root / "models" / "rounds" / "round_1"
    assert sorted(p.name for p in (r1 / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (r1 / "adapter_lc" / "adapter_model.safetensors").exists()
    assert all((r1 / name).exists() for name in ("text_ctr.pt", "text_ctr_facts.pt", "text_ctr_shuffled.pt"))
    m1 = json.loads((root / "metrics" / "round_1.json").read_text())
    m2 = json.loads((root / "metrics" / "round_2.json").read_text())
    assert m1["test_pairs"] == 6 and m2["test_pairs"] == 8  # the last round is evaluated on every test pair
    for block in ("expctr_llm", "stance_only", "id_only", "zero_shot_judge", "verdict_logit"):
        assert {"auc", "auc_ci_low", "auc_ci_high", "n"} <= set(m2[block]) and m2[block]["n"] == 8
    aug = m2["expctr_aug"]
    for variant in ("explanation", "facts", "shuffled"):  # the last round scores all three
        assert {"auc", "auc_ci_low", "auc_ci_high", "n"} <= set(aug[variant]) and aug[variant]["n"] == 8
        assert {"diff", "ci_low", "ci_high"} <= set(aug[variant]["minus_id"])
    assert {"diff", "ci_low", "ci_high"} <= set(aug["explanation_minus_facts"])
    assert {"diff", "ci_low", "ci_high"} <= set(aug["explanation_minus_shuffled"])
    assert "shuffled" not in m1["expctr_aug"] and "facts" in m1["expctr_aug"]
    assert set(m2["aug_fit"]) == {"explanation", "facts", "shuffled"}
    v = m2["verdicts"]
    counts = v["vs_label"]
    assert sum(counts[k] for k in counts if k.endswith(("positive", "negative")) and "verdict" in k) == 8
    assert 0 <= v["vs_id_model"]["agreement"] <= 1
    # each stage: 2 verdict steps (8 prompts in batches of 4) and 1 GRPO reason step, both logged and plotted
    for stage in ("lc", "ic"):
        assert len(m1["reward_curves"][stage]["verdict"]) == 2 and len(m1["reward_curves"][stage]["reason"]) == 1
        assert set(m1["rewards_rise"][stage]) == {"verdict", "reason"}
        log = [json.loads(x) for x in (r1 / f"rl_{stage}.jsonl").read_text().splitlines()]
        assert [r["phase"] for r in log] == ["verdict", "verdict", "reason"]
        curve = pl.read_csv(root / "metrics" / "rewards" / "round_1" / f"{stage}_verdict.csv")
        assert curve.columns == ["step", "reward"] and curve.height == 2
    test_expl = pl.read_parquet(root / "data" / "explanations" / "round_2" / "test.parquet")
    assert test_expl.height == 8
    assert {"explanation", "stance", "grade", "verdict_logit", "p_yes_judge", "p_aug_explanation", "p_aug_facts",
            "p_aug_shuffled", "p_id"} <= set(test_expl.columns)
    # versioned metrics hold no absolute or temporary paths
    for k in (0, 1, 2):
        text = (root / "metrics" / f"round_{k}.json").read_text()
        assert str(root) not in text and "/tmp" not in text, k

    # round 2 started from round 1's adapter and wrote its own; round 1's artifacts are kept
    r1_adapter = load_file(r1 / "adapter" / "adapter_model.safetensors")
    r2_adapter = load_file(root / "models" / "rounds" / "round_2" / "adapter" / "adapter_model.safetensors")
    assert set(r2_adapter) == set(r1_adapter)
    assert any((r2_adapter[k] != r1_adapter[k]).any() for k in r1_adapter)  # trained further


def test_round_outside_configured_rounds_is_refused(tiny_rounds_project: Path):
    proc = run_cli(tiny_rounds_project, "explainer-round", "--round", "3", check=False)
    assert proc.returncode == 2 and "outside 0..2" in proc.stderr
