"""ID-model checkpoints: one file per trained model (name, weights, the CTR params that shape it, fit info).

Lives in the library (not in the stage) because the explainer rounds, the serving bundle and the stage all
read the same checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from expctr.config import CTRParams
from expctr.ctr.models import build_model
from expctr.data.features import FeatureMap
from expctr.io import atomic_path


def save_id_model(path: str | Path, name: str, model: torch.nn.Module, ctr: CTRParams,
                  fit_info: dict[str, Any]) -> None:
    """Write the checkpoint atomically (a failed save never leaves a half-written file)."""
    with atomic_path(path) as tmp:
        torch.save({"name": name, "state_dict": model.state_dict(), "ctr_params": ctr.model_dump(),
                    "fit": fit_info}, tmp)


def load_id_model(path: str | Path, fmap: FeatureMap) -> torch.nn.Module:
    """Rebuild a saved ID model from its checkpoint and feature map, in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["name"], fmap, CTRParams.model_validate(ckpt["ctr_params"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
