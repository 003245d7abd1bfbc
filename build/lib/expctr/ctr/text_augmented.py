"""ExpCTR-Aug: a trained ID model plus a projection of the explanation's sentence embedding.

    logit(x, s) = f_id(x) + head([ E(x).flatten() ; W_p · e(s) + b_p ])

f_id is the trained ID model (lr / deepfm / dcnv2 / din), E(x) its own field embeddings (B, F, D) from
`base.emb.fields`, e(s) the (normalised, 384-d) all-MiniLM-L6-v2 embedding of the explanation s, W_p the
`proj` Linear(text_dim, proj_dim), and `head` an MLP(hidden) -> 1 whose LAST layer starts at zero. Why this
shape: the text enters as a residual on the ID logit, so the untrained Aug model is exactly the ID model
(a starting point no worse than the baseline) and training only learns what the explanation adds, in the
context of the ID features it is concatenated with (the paper's "concatenate with the ID embeddings").

The base is frozen by default (its parameters get no gradient and it stays in eval mode, so its dropout
does not perturb the frozen logit); `finetune_base=True` trains everything together. Batches carry the
embeddings under `batch["text"]` (B, text_dim); `CTRData.text` provides them through the shared trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from expctr.config import CTRParams, TextCTRParams
from expctr.ctr.batch import SCALAR_COLUMNS, CTRData
from expctr.ctr.layers import mlp
from expctr.ctr.models import MODELS, build_model
from expctr.ctr.trainer import FitResult, fit
from expctr.data.features import FeatureMap
from expctr.io import atomic_path

TEXT_DIM = 384  # all-MiniLM-L6-v2
CHECKPOINT_KIND = "expctr-aug"
# The pair-frame columns an ID batch is built from (TRL passes them to reward functions as kwargs).
ID_COLUMNS = (*SCALAR_COLUMNS, "genre_idx", "hist_item_idx", "hist_click")


def model_name(model: nn.Module) -> str:
    """The MODELS key of an ID model instance (lr / deepfm / dcnv2 / din)."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not one of the ID models {sorted(MODELS)}")


class TextAugmentedCTR(nn.Module):
    """ID model + explanation embedding; `forward(batch) -> logits (B,)`, batch["text"] is (B, text_dim)."""

    def __init__(self, base: nn.Module, text_dim: int = TEXT_DIM, proj_dim: int = 16,
                 hidden: Sequence[int] = (32,), dropout: float = 0.0, finetune_base: bool = False):
        super().__init__()
        if not hasattr(base, "emb"):
            raise ValueError(f"{type(base).__name__} has no `.emb` FieldEmbedding to concatenate text with")
        self.base = base
        self.base_name = model_name(base)
        self.text_dim, self.proj_dim, self.hidden = int(text_dim), int(proj_dim), [int(h) for h in hidden]
        self.dropout, self.finetune_base = float(dropout), bool(finetune_base)
        self.proj = nn.Linear(self.text_dim, self.proj_dim)
        in_dim = base.emb.num_fields * base.emb.dim + self.proj_dim
        last = nn.Linear(self.hidden[-1] if self.hidden else in_dim, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(mlp(in_dim, self.hidden, self.dropout), last)
        self.base.requires_grad_(self.finetune_base)
        self.train(self.training)

    def config(self) -> dict[str, Any]:
        return {"text_dim": self.text_dim, "proj_dim": self.proj_dim, "hidden": list(self.hidden),
                "dropout": self.dropout, "finetune_base": self.finetune_base}

    def train(self, mode: bool = True) -> TextAugmentedCTR:
        super().train(mode)
        if not self.finetune_base:
            self.base.eval()  # a frozen base is a fixed function: no dropout noise in its logit
        return self

    def id_logit(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The plain ID model's logit f_id(x)."""
        return self.base(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "text" not in batch:
            raise KeyError("ExpCTR-Aug needs batch['text'] (B, text_dim) explanation embeddings")
        text = batch["text"].to(dtype=self.proj.weight.dtype)
        e = self.base.emb.fields(batch).flatten(1)
        return self.base(batch) + self.head(torch.cat([e, self.proj(text)], dim=1)).squeeze(-1)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def with_text(data: CTRData, text: np.ndarray | torch.Tensor) -> CTRData:
    """`data` with its explanation embeddings attached (row-aligned; float32)."""
    t = torch.as_tensor(np.asarray(text, dtype=np.float32) if not isinstance(text, torch.Tensor) else text)
    t = t.to(torch.float32)
    if t.ndim != 2 or t.shape[0] != len(data):
        raise ValueError(f"text embeddings of shape {tuple(t.shape)} do not match {len(data)} rows")
    return dataclasses.replace(data, text=t)


def batch_from_columns(columns: Mapping[str, Sequence[Any]], device: str | torch.device = "cpu"
                       ) -> dict[str, torch.Tensor]:
    """An ID batch from per-row column values (a pair frame's `to_dict(as_series=False)` or TRL's kwargs).

    Needs every column in ID_COLUMNS; `label` is optional (zeros when absent).
    """
    missing = [c for c in ID_COLUMNS if c not in columns]
    if missing:
        raise KeyError(f"ID feature columns missing: {missing} (needed: {list(ID_COLUMNS)})")

    def ints(name: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray([np.asarray(v) for v in columns[name]], dtype=np.int64))

    n = len(columns[SCALAR_COLUMNS[0]])
    labels = columns.get("label")
    batch = {
        "fields": torch.stack([ints(c) for c in SCALAR_COLUMNS], dim=1),
        "genres": ints("genre_idx").reshape(n, -1),
        "hist_items": ints("hist_item_idx").reshape(n, -1),
        "hist_clicks": ints("hist_click").reshape(n, -1),
        "labels": (torch.zeros(n) if labels is None
                   else torch.as_tensor(np.asarray(labels, dtype=np.float32))),
    }
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def ic_probability(model: TextAugmentedCTR, batch: CTRData | Mapping[str, torch.Tensor],
                   text_embeddings: np.ndarray | torch.Tensor | None = None,
                   batch_size: int = 4096) -> np.ndarray:
    """P(click | ID features, explanation) under ExpCTR-Aug, float64 (n,), in row order.

    `batch` is a CTRData (its own `.text` is used unless `text_embeddings` is given) or a dict batch.
    """
    if text_embeddings is not None:
        if isinstance(batch, CTRData):
            batch = with_text(batch, text_embeddings)
        else:
            batch = {**batch, "text": torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32)
                                                      if not isinstance(text_embeddings, torch.Tensor)
                                                      else text_embeddings)}
    model.eval()
    dev = _device(model)
    chunks = batch.batches(batch_size) if isinstance(batch, CTRData) else [batch]
    out = [torch.sigmoid(model({k: v.to(dev) for k, v in b.items()})).double().cpu() for b in chunks]
    return torch.cat(out).numpy() if out else np.zeros(0)


def fit_params(tp: TextCTRParams, device: str = "cpu") -> CTRParams:
    """The shared trainer's settings from TextCTRParams (epochs, patience, lr, batch size) and a device."""
    return CTRParams(max_epochs=tp.max_epochs, patience=tp.patience, lr=tp.lr, batch_size=tp.batch_size,
                     device=device)


def train_text_ctr(base: nn.Module, train: CTRData, valid: CTRData, tp: TextCTRParams, seed: int,
                   device: str = "cpu", desc: str = "ExpCTR-Aug") -> tuple[TextAugmentedCTR, FitResult]:
    """Wrap a trained ID model, train on explained pairs (train/valid carry `.text`), early-stop on valid AUC.

    The head is initialised from `seed`; the best validation-AUC epoch's weights are restored (trainer.fit),
    and the untrained state (== the ID model) competes as epoch 0, so best_epoch 0 means "no gain".
    """
    if train.text is None or valid.text is None:
        raise ValueError("train and valid need explanation embeddings (use with_text)")
    torch.manual_seed(seed)
    model = TextAugmentedCTR(base, text_dim=train.text.shape[1], proj_dim=tp.proj_dim, hidden=tp.hidden,
                             finetune_base=tp.finetune_base)
    result = fit(model, train, valid, fit_params(tp, device), seed=seed, desc=desc, keep_initial=True)
    return model.eval(), result


def save_text_ctr(path: str | Path, model: TextAugmentedCTR, base_params: CTRParams,
                  fit_info: Mapping[str, Any] | None = None) -> None:
    """Checkpoint (atomic): state dict, base model name and CTRParams, the Aug dims, fit info."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"kind": CHECKPOINT_KIND, "base_name": model.base_name,
                    "base_ctr_params": base_params.model_dump(), "config": model.config(),
                    "state_dict": state, "fit": dict(fit_info or {})}, tmp)


def load_text_ctr(path: str | Path, fmap: FeatureMap, device: str = "cpu") -> TextAugmentedCTR:
    """Rebuild a saved ExpCTR-Aug model (base + head) with the feature map it was trained with; eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not an ExpCTR-Aug checkpoint (kind={ckpt.get('kind')!r})")
    base = build_model(ckpt["base_name"], fmap, CTRParams.model_validate(ckpt["base_ctr_params"]))
    model = TextAugmentedCTR(base, **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


__all__ = [
    "ID_COLUMNS",
    "TEXT_DIM",
    "TextAugmentedCTR",
    "batch_from_columns",
    "fit_params",
    "ic_probability",
    "load_text_ctr",
    "model_name",
    "save_text_ctr",
    "train_text_ctr",
    "with_text",
]
