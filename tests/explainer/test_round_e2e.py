"""End to end on a tiny slice of the real data with the real embedded LLM: base_llm -> llm_pairs -> two rounds.

One RL step per stage, a handful of pairs: it proves the stages fit together and write what they promise
(versioned adapters, explanations with rewards, per-round metrics), not that RL improves anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from safetensors.torch import load_file
from support import REPO_ROOT, make_params, run_cli

TEST_BASE_MODEL = REPO_ROOT / ".cache" / "expctr" / "test-base-model"

TINY_LLM = {
    "llm.source": str(TEST_BASE_MODEL), "llm.max_new_tokens": 12, "llm.max_prompt_tokens": 256,
    "pairs.train": 4, "pairs.valid": 4, "pairs.test": 8,
    "rl.lc_steps": 1, "rl.ic_steps": 1, "rl.prompts_per_step": 2, "rl.num_generations": 2,
    "rl.max_completion_length": 12, "text_ctr.max_epochs": 2, "rounds": 2,
    "ctr.compare": ["din"], "ctr.max_epochs": 1,
}


@pytest.fixture(scope="module")
def round_project(tiny_real_project: Path, tmp_path_factory, base_model_dir) -> Path:
    assert Path(base_model_dir) == TEST_BASE_MODEL
    root = tmp_path_factory.mktemp("rounds")
    shutil.copytree(tiny_real_project / "data", root / "data")
    params = json.loads(json.dumps(TINY_LLM))
    make_params(root, **params, **{"data.max_users": 150, "data.cache_dir": str(REPO_ROOT / ".cache" / "expctr")})
    for stage in ("ctr-model", "base-llm", "llm-pairs"):
        run_cli(root, stage)
    return root


def test_two_rounds_write_versioned_artifacts_and_metrics(round_project: Path):
    root = round_project
    pairs = json.loads((root / "metrics" / "llm_pairs.json").read_text())
    assert pairs["pairs"] == {"train": 4, "valid": 4, "test": 8}
    assert 0 <= pairs["test_zero_shot_judge"]["auc"] <= 1

    run_cli(root, "explainer-round", "--round", "1")
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
