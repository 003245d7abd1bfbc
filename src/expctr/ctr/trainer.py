"""One trainer for every ID model: Adam on BCE-with-logits, early stopping on validation AUC, seeded.

Data-parallel (`fit(..., data_parallel=True)` under `accelerate launch`): every process takes its part of each
single-process batch, DDP averages the gradients, and the loss is scaled so that the average equals the
gradient of the whole batch's mean loss. N processes therefore take the single-process steps, up to float
summation order (and dropout masks, which are drawn per process).
"""

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

from expctr import distributed
from expctr.config import CTRParams
from expctr.ctr.batch import CTRData


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed the global RNGs per process (dropout) and return the data-order generator, the same on every rank."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
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


def _valid_metrics(model: nn.Module, valid: CTRData, p: CTRParams, device, acc) -> dict[str, float]:
    """Validation AUC/log-loss; data-parallel: each process scores a contiguous part, all see every score."""
    if acc is None or acc.num_processes == 1:
        return binary_metrics(valid.labels.numpy(), predict(model, valid, p.batch_size, device))
    from accelerate.utils import gather_object

    part = valid.shard(acc.process_index, acc.num_processes)
    probs = np.concatenate(gather_object([predict(model, part, p.batch_size, device)]))
    return binary_metrics(valid.labels.numpy(), probs)


def fit(model: nn.Module, train: CTRData, valid: CTRData, p: CTRParams, seed: int, desc: str = "",
        keep_initial: bool = False, data_parallel: bool = False) -> FitResult:
    """Train in place, restoring the weights of the best validation-AUC epoch before returning.

    keep_initial: the untrained state is a candidate too (epoch 0 of the curve). Used for ExpCTR-Aug, whose
    initial state *is* the ID model: on a few hundred explained pairs the head can only overfit, and then
    the validation set should be able to say "the explanations did not help" and keep the ID model.
    data_parallel: train through accelerate (expctr.distributed.accelerator): DDP over the processes of an
    `accelerate launch`, one plain process otherwise (then identical to data_parallel=False). Every process
    gets the same model back; only the caller's main process should write it.
    """
    acc = distributed.accelerator(p.device) if data_parallel else None
    rank, world = (acc.process_index, acc.num_processes) if acc else (0, 1)
    device = acc.device if acc else p.device
    quiet = rank != 0
    gen = seed_everything(seed, rank)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    step_model = model
    if acc is not None:
        step_model, opt = acc.prepare(model, opt)  # DDP-wrapped when launched; `model` holds the same weights
    mean_loss, sum_loss = nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss(reduction="sum")
    best_auc, best_epoch, best_state, stale = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    curve: list[dict] = []
    if keep_initial:
        m = _valid_metrics(model, valid, p, device, acc)
        curve.append({"epoch": 0, "train_loss": None, "valid_auc": m["auc"], "valid_logloss": m["logloss"],
                      "seconds": 0.0})
        best_auc = m["auc"]
    n_batches = math.ceil(len(train) / p.batch_size)
    for epoch in range(1, p.max_epochs + 1):
        step_model.train()
        started, total = time.perf_counter(), 0.0
        bar = tqdm(train.shard_batches(p.batch_size, rank, world, generator=gen), total=n_batches,
                   desc=f"{desc} epoch {epoch}", leave=False, mininterval=2.0, disable=quiet)
        for batch, global_rows in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = step_model(batch)
            if world == 1:  # the single-process step, bit for bit as before data-parallel training existed
                loss = mean_loss(logits, batch["labels"])
                total += loss.item() * global_rows
            else:
                # DDP averages over processes: scaling by world / global_rows makes that average the gradient
                # of the global batch's mean loss, even when the parts differ in size (or one is empty).
                loss_sum = sum_loss(logits, batch["labels"])
                loss = loss_sum * (world / global_rows)
                total += loss_sum.item()
            opt.zero_grad(set_to_none=True)
            if acc is not None:
                acc.backward(loss)
            else:
                loss.backward()
            opt.step()
        if world > 1:
            total = acc.reduce(torch.tensor(total, dtype=torch.float64, device=device), "sum").item()
        train_seconds = time.perf_counter() - started
        m = _valid_metrics(model, valid, p, device, acc)
        curve.append({"epoch": epoch, "train_loss": total / max(len(train), 1), "valid_auc": m["auc"],
                      "valid_logloss": m["logloss"], "seconds": round(train_seconds, 3)})
        if not quiet:
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
    if acc is not None:
        acc.free_memory()  # drop the accelerator's references to the DDP wrapper and optimizer
    return FitResult(best_epoch, best_auc, curve)
