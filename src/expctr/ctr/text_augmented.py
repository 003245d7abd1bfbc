"""ExpCTR-Aug: the trained ID model plus a residual head that reads what a pair's explanation adds.

    logit(x, u) = f_id(x) + g([f_id(x) ; n(u_1) ; P_2 n(u_2) ; ...])

f_id is the trained ID model, frozen; u = (u_1, u_2, ...) the pair's input blocks (`expctr.ctr.aug_inputs`):
the facts the prompt states, and - in the variants that read an explanation - the explainer's verdict logit
and stated grade, and the explanation's sentence embedding; n(.) standardises each input with the training
pairs' mean and std (kept as buffers), wide blocks pass through a learned projection P, and g is an MLP whose
last layer starts at zero. Why this shape: the untrained model is exactly the ID model (no worse than the
baseline), training learns only what the inputs add on top of it, and f_id enters g as an input so the head
can weigh an explanation by how sure the ID model already is. Why the ID model is frozen and the head is
trained on pairs from after the ID model's training period: on its own training pairs the ID logit already
fits the labels, and a head learns nothing there (measured: best epoch 0, i.e. no change, on 256 training
explanations).

Batches carry the concatenated blocks under `batch["text"]` (B, sum of block widths); `CTRData.text` provides
them through the shared trainer (`expctr.ctr.trainer.fit`).
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
    """ID model + residual head over input blocks; `forward(batch) -> logits (B,)`, batch["text"] is (B, D).

    `blocks`: (name, width) in the order they are concatenated; a block wider than `proj_dim` is projected to
    `proj_dim` before the head. `mean` / `std`: per input column, from the training pairs (standardisation).
    """

    def __init__(self, base: nn.Module, blocks: Sequence[tuple[str, int]], proj_dim: int = 8,
                 hidden: Sequence[int] = (16,), dropout: float = 0.0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.base = base
        self.base_name = model_name(base)
        self.blocks = [(str(n), int(w)) for n, w in blocks]
        if not self.blocks:
            raise ValueError("ExpCTR-Aug needs at least one input block")
        self.proj_dim, self.hidden, self.dropout = int(proj_dim), [int(h) for h in hidden], float(dropout)
        width = sum(w for _, w in self.blocks)
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else np.zeros(width), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std if std is not None else np.ones(width), dtype=torch.float32))
        self.proj = nn.ModuleDict({n: nn.Linear(w, self.proj_dim) for n, w in self.blocks if w > self.proj_dim})
        in_dim = 1 + sum(self.proj_dim if n in self.proj else w for n, w in self.blocks)
        last = nn.Linear(self.hidden[-1] if self.hidden else in_dim, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(mlp(in_dim, self.hidden, self.dropout), last)
        self.base.requires_grad_(False)
        self.train(self.training)

    @property
    def width(self) -> int:
        return sum(w for _, w in self.blocks)

    def config(self) -> dict[str, Any]:
        return {"blocks": [list(b) for b in self.blocks], "proj_dim": self.proj_dim, "hidden": list(self.hidden),
                "dropout": self.dropout}

    def train(self, mode: bool = True) -> TextAugmentedCTR:
        super().train(mode)
        self.base.eval()  # the frozen base is a fixed function: no dropout noise in its logit
        return self

    def id_logit(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The plain ID model's logit f_id(x)."""
        return self.base(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "text" not in batch:
            raise KeyError("ExpCTR-Aug needs batch['text'] (B, D): the pair's input blocks")
        if batch["text"].shape[1] != self.width:
            raise ValueError(f"ExpCTR-Aug expects {self.width} input columns {self.blocks}, got {batch['text'].shape[1]}")
        f_id = self.base(batch)
        return f_id + self.residual(batch["text"], f_id)

    def residual(self, text: torch.Tensor, f_id: torch.Tensor) -> torch.Tensor:
        """g([f_id ; n(u_1) ; P_2 n(u_2) ; ...]): what the head adds to the ID logit, (B,)."""
        u = (text.to(self.mean.dtype) - self.mean) / self.std
        parts, start = [f_id[:, None].detach()], 0
        for name, w in self.blocks:
            block = u[:, start:start + w]
            parts.append(self.proj[name](block) if name in self.proj else block)
            start += w
        return self.head(torch.cat(parts, dim=1)).squeeze(-1)


class BaggedTextCTR(nn.Module):
    """K ExpCTR-Aug heads over one shared frozen ID model: logit = f_id + mean_k g_k(...).

    Why: each head is trained on K-1 of K slate folds and early-stopped on its own fold, so every explained
    valid-period pair both trains and validates, and averaging the K residuals removes most of the seed and
    split noise of a single head (measured: `bench/aug_recipes.py`, one 25 % holdout gave Aug - ID from
    -0.0007 to +0.0080 over five seeds). The members share the input blocks and their order; each keeps its
    own standardisation (from its own training folds). `forward(batch)` reads batch["text"] like one head.
    """

    def __init__(self, members: Sequence[TextAugmentedCTR]):
        super().__init__()
        if not members:
            raise ValueError("a bagged ExpCTR-Aug needs at least one member")
        first = members[0]
        if any(m.blocks != first.blocks for m in members):
            raise ValueError("bagged ExpCTR-Aug members must read the same input blocks")
        self.base = first.base
        for m in members:
            m.base = self.base  # one frozen ID model (the members' bases are copies of the same weights)
        self.members = nn.ModuleList(members)
        self.train(self.training)

    @property
    def blocks(self) -> list[tuple[str, int]]:
        return self.members[0].blocks

    @property
    def base_name(self) -> str:
        return self.members[0].base_name

    @property
    def width(self) -> int:
        return self.members[0].width

    def config(self) -> dict[str, Any]:
        return {"members": [m.config() for m in self.members]}

    def train(self, mode: bool = True) -> BaggedTextCTR:
        super().train(mode)
        self.base.eval()
        return self

    def id_logit(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.base(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "text" not in batch:
            raise KeyError("ExpCTR-Aug needs batch['text'] (B, D): the pair's input blocks")
        if batch["text"].shape[1] != self.width:
            raise ValueError(f"ExpCTR-Aug expects {self.width} input columns {self.blocks}, got {batch['text'].shape[1]}")
        f_id = self.base(batch)
        return f_id + torch.stack([m.residual(batch["text"], f_id) for m in self.members]).mean(0)


AugModel = TextAugmentedCTR | BaggedTextCTR


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def with_text(data: CTRData, text: np.ndarray | torch.Tensor) -> CTRData:
    """`data` with its Aug input blocks attached (row-aligned; float32)."""
    t = torch.as_tensor(np.asarray(text, dtype=np.float32) if not isinstance(text, torch.Tensor) else text)
    t = t.to(torch.float32)
    if t.ndim != 2 or t.shape[0] != len(data):
        raise ValueError(f"Aug inputs of shape {tuple(t.shape)} do not match {len(data)} rows")
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
def aug_probability(model: AugModel, data: CTRData, batch_size: int = 4096) -> np.ndarray:
    """P(click | ID features, input blocks) under ExpCTR-Aug, float64 (n,), in row order (`data.text` set)."""
    model.eval()
    dev = _device(model)
    out = [torch.sigmoid(model({k: v.to(dev) for k, v in b.items()})).double().cpu()
           for b in data.batches(batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def fit_params(tp: TextCTRParams, device: str = "cpu") -> CTRParams:
    """The shared trainer's settings from TextCTRParams (epochs, patience, lr, weight decay, batch size)."""
    return CTRParams(max_epochs=tp.max_epochs, patience=tp.patience, lr=tp.lr, weight_decay=tp.weight_decay,
                     batch_size=tp.batch_size, device=device)


def train_text_ctr(base: nn.Module, blocks: Sequence[tuple[str, int]], train: CTRData, valid: CTRData,
                   tp: TextCTRParams, seed: int, device: str = "cpu", desc: str = "ExpCTR-Aug"
                   ) -> tuple[TextAugmentedCTR, FitResult]:
    """Wrap a trained ID model, train the head on pairs with input blocks (train/valid carry `.text`), early-stop
    on valid AUC. Standardisation comes from `train`; the head is initialised from `seed`; the best
    validation-AUC epoch's weights are restored, and the untrained state (== the ID model) competes as epoch 0,
    so best_epoch 0 means "no gain"."""
    if train.text is None or valid.text is None:
        raise ValueError("train and valid need their Aug input blocks (use with_text)")
    x = train.text.double()
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant column stays as it is
    torch.manual_seed(seed)
    model = TextAugmentedCTR(base, blocks, proj_dim=tp.proj_dim, hidden=tp.hidden, dropout=tp.dropout,
                             mean=mean.float().tolist(), std=std.float().tolist())
    result = fit(model, train, valid, fit_params(tp, device), seed=seed, desc=desc, keep_initial=True)
    return model.eval(), result


def _head_state(model: TextAugmentedCTR) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("base.")}


def save_text_ctr(path: str | Path, model: AugModel, base_params: CTRParams,
                  fit_info: Mapping[str, Any] | None = None) -> None:
    """Checkpoint (atomic): the ID model's state once, each head's state (one, or a bag's K) with its blocks
    and dims, the base model name and CTRParams, fit info."""
    members = list(model.members) if isinstance(model, BaggedTextCTR) else [model]
    with atomic_path(path) as tmp:
        torch.save({"kind": CHECKPOINT_KIND, "base_name": model.base_name,
                    "base_ctr_params": base_params.model_dump(), "bagged": isinstance(model, BaggedTextCTR),
                    "base_state": {k: v.detach().cpu() for k, v in model.base.state_dict().items()},
                    "members": [{"config": m.config(), "state_dict": _head_state(m)} for m in members],
                    "fit": dict(fit_info or {})}, tmp)


def load_text_ctr(path: str | Path, fmap: FeatureMap, device: str = "cpu") -> AugModel:
    """Rebuild a saved ExpCTR-Aug model (base + one head, or a bag of heads) with the feature map it was
    trained with; eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not an ExpCTR-Aug checkpoint (kind={ckpt.get('kind')!r})")
    if "members" not in ckpt:
        raise ValueError(f"{path}: an ExpCTR-Aug checkpoint from before bagged heads: rerun its explainer round")
    base = build_model(ckpt["base_name"], fmap, CTRParams.model_validate(ckpt["base_ctr_params"]))
    base.load_state_dict(ckpt["base_state"])
    members = []
    for m in ckpt["members"]:
        cfg = dict(m["config"])
        cfg["blocks"] = [tuple(b) for b in cfg["blocks"]]
        member = TextAugmentedCTR(base, **cfg)
        member.load_state_dict({**{f"base.{k}": v for k, v in ckpt["base_state"].items()}, **m["state_dict"]})
        members.append(member)
    model = BaggedTextCTR(members) if ckpt.get("bagged") else members[0]
    return model.to(device).eval()


__all__ = [
    "ID_COLUMNS",
    "AugModel",
    "BaggedTextCTR",
    "TextAugmentedCTR",
    "aug_probability",
    "batch_from_columns",
    "fit_params",
    "load_text_ctr",
    "model_name",
    "save_text_ctr",
    "train_text_ctr",
    "with_text",
]
