"""End to end on a tiny slice of the real data with the real embedded LLM: base_llm -> llm_pairs -> two rounds.

One RL step per stage, a handful of pairs: it proves the stages fit together and write what they promise
(versioned adapters, explanations with rewards, per-round metrics), not that RL improves anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from safetensors.torch import load_file
from support import run_cli


def test_two_rounds_write_versioned_artifacts_and_metrics(tiny_rounds_project: Path):
    root = tiny_rounds_project
    pairs = json.loads((root / "metrics" / "llm_pairs.json").read_text())
    assert pairs["pairs"] == {"train": 4, "valid": 4, "test": 8}
    assert 0 <= pairs["test_zero_shot_judge"]["auc"] <= 1

    r1 = root / "models" / "rounds" / "round_1"
    assert sorted(p.name for p in (r1 / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (r1 / "adapter_lc" / "adapter_model.safetensors").exists() and (r1 / "text_ctr.pt").exists()
    m1 = json.loads((root / "metrics" / "round_1.json").read_text())
    for key in ("lc_reward_mean", "ic_reward_mean", "lc_auc", "zero_shot_judge_auc"):
        assert key in m1
    for block in ("expctr_llm", "expctr_aug", "id_only"):
        assert set(m1[block]) == {"auc", "logloss", "n"} and m1[block]["n"] == 8
    assert 0 <= m1["explanations"]["test"]["share_one_sentence"] <= 1
    test_expl = pl.read_parquet(root / "data" / "explanations" / "round_1" / "test.parquet")
    assert test_expl.height == 8
    assert {"explanation", "lc_reward", "ic_reward", "p_yes_judge", "p_click_aug"} <= set(test_expl.columns)
    assert (test_expl["lc_reward"] <= 0).all() and (test_expl["ic_reward"] <= 0).all()

    # round 2 started from round 1's adapter and wrote its own; round 1's artifacts are kept
    r1_adapter = load_file(r1 / "adapter" / "adapter_model.safetensors")
    r2_adapter = load_file(root / "models" / "rounds" / "round_2" / "adapter" / "adapter_model.safetensors")
    assert set(r2_adapter) == set(r1_adapter)
    assert any((r2_adapter[k] != r1_adapter[k]).any() for k in r1_adapter)  # trained further
    assert json.loads((root / "metrics" / "round_2.json").read_text())["round"] == 2
    rl_log = [json.loads(line) for line in (root / "models" / "rounds" / "round_2" / "rl_lc.jsonl").read_text().splitlines()]
    assert len(rl_log) == 1 and "reward" in rl_log[0]


def test_round_outside_configured_rounds_is_refused(tiny_rounds_project: Path):
    proc = run_cli(tiny_rounds_project, "explainer-round", "--round", "3", check=False)
    assert proc.returncode == 2 and "outside 1..2" in proc.stderr
