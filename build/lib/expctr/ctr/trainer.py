"""One trainer for every ID model: Adam on BCE-with-logits, early stopping on validation AUC, seeded."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from expctr.config import CTRParams
from expctr.ctr.batch import CTRData


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and log-loss from scikit-learn (AUC is NaN when only one class is present)."""
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    auc = roc_auc_score(labels, probs) if len(np.unique(labels)) == 2 else math.nan
    return {"auc": float(auc), "logloss": float(log_loss(labels, probs, labels=[0, 1])), "n": len(labels)}


@torch.no_grad()
def predict(model: nn.Module, data: CTRData, batch_size: int, device: str = "cpu") -> np.ndarray:
    model.eval()
    out = [torch.sigmoid(model({k: v.to(device) for k, v in b.items()})).cpu()
           for b in data.batches(batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


@dataclass
class FitResult:
    best_epoch: int
    best_valid_auc: float
    curve: list[dict] = field(default_factory=list)  # one row per epoch: epoch, train_loss, valid_auc, valid_logloss, seconds


def fit(model: nn.Module, train: CTRData, valid: CTRData, p: CTRParams, seed: int, desc: str = "",
        keep_initial: bool = False) -> FitResult:
    """Train in place, restoring the weights of the best validation-AUC epoch before returning.

    keep_initial: the untrained state is a candidate too (epoch 0 of the curve). Used for ExpCTR-Aug, whose
    initial state *is* the ID model: on a few hundred explained pairs the head can only overfit, and then
    the validation set should be able to say "the explanations did not help" and keep the ID model.
    """
    gen = seed_everything(seed)
    model.to(p.device)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    best_auc, best_epoch, best_state, stale = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    curve: list[dict] = []
    if keep_initial:
        m = binary_metrics(valid.labels.numpy(), predict(model, valid, p.batch_size, p.device))
        curve.append({"epoch": 0, "train_loss": None, "valid_auc": m["auc"], "valid_logloss": m["logloss"],
                      "seconds": 0.0})
        best_auc = m["auc"]
    n_batches = math.ceil(len(train) / p.batch_size)
    for epoch in range(1, p.max_epochs + 1):
        model.train()
        started, total = time.perf_counter(), 0.0
        bar = tqdm(train.batches(p.batch_size, shuffle=True, generator=gen), total=n_batches,
                   desc=f"{desc} epoch {epoch}", leave=False, mininterval=2.0)
        for batch in bar:
            batch = {k: v.to(p.device) for k, v in batch.items()}
            loss = loss_fn(model(batch), batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch["labels"])
        train_seconds = time.perf_counter() - started
        m = binary_metrics(valid.labels.numpy(), predict(model, valid, p.batch_size, p.device))
        curve.append({"epoch": epoch, "train_loss": total / max(len(train), 1), "valid_auc": m["auc"],
                      "valid_logloss": m["logloss"], "seconds": round(train_seconds, 3)})
        tqdm.write(f"{desc} epoch {epoch}: train loss {curve[-1]['train_loss']:.4f}  valid AUC {m['auc']:.4f}  "
                   f"log-loss {m['logloss']:.4f}  ({train_seconds:.1f} s)")
        if m["auc"] > best_auc:
            best_auc, best_epoch, stale = m["auc"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= p.patience:
                break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, best_auc, curve)
