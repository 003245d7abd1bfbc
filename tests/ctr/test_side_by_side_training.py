"""The ID models trained side by side in spawned processes are the models one process trains alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from support import make_params, run_cli


def _trained(built: Path, root: Path, side_by_side: int) -> tuple[dict, dict]:
    shutil.copytree(built, root)
    params = {"data.source": "files", "data.format": "ml1m_dat", "data.paths": {"directory": "source"},
              "ctr.max_epochs": 2, "ctr.batch_size": 64, "ctr.threads": 1, "ctr.mlp_dims": [16],
              "validation.label_rate_bounds": [0.05, 0.95], "ctr.side_by_side": side_by_side}
    make_params(root, **params)
    run_cli(root, "ctr-model")
    metrics = json.loads((root / "metrics" / "ctr.json").read_text())["models"]
    weights = {n: torch.load(root / "models" / "ctr" / f"{n}.pt", weights_only=False) for n in ("lr", "din", "dcnv2")}
    return metrics, weights


def test_side_by_side_training_writes_the_models_one_process_writes(built_dat_project: Path, tmp_path: Path):
    alone, alone_w = _trained(built_dat_project, tmp_path / "alone", 1)
    side, side_w = _trained(built_dat_project, tmp_path / "side", 2)
    assert set(side) == set(alone) == {"popularity", "lr", "deepfm", "dcnv2", "din"}
    for name, m in alone.items():
        assert side[name]["test_auc"] == m["test_auc"] and side[name].get("best_epoch") == m.get("best_epoch")
    for name, ckpt in alone_w.items():
        other = side_w[name]["state_dict"]
        assert ckpt["state_dict"].keys() == other.keys()
        for key, value in ckpt["state_dict"].items():
            assert torch.equal(value, other[key]), (name, key)
