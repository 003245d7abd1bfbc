"""P(click) of the ID model (ExpCTR-Aug's frozen base) for the rows of one or several requests.

Every CTR-only candidate, and every explained one's verdict, is scored here. Rows are `CTRData`, so the
service's adaptive batcher merges concurrent requests with `CTRData.concat` and scores them in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from expctr.ctr.batch import CTRData


@torch.inference_mode()
def id_probability(id_model: nn.Module, rows: CTRData, device: str = "cpu") -> np.ndarray:
    """float64 (n,), in row order; one forward pass over all rows of a model in eval mode.

    The rows go in as they are (`take` of every row: views, no copy) under inference mode, which measured
    a quarter off a 100-row forward against `trainer.predict`'s no_grad, per-call eval() and index copy."""
    if len(rows) == 0:
        return np.zeros(0)
    batch = {k: v.to(device) for k, v in rows.take(slice(None)).items()}
    return torch.sigmoid(id_model(batch)).double().cpu().numpy()


def concat_rows(parts: Sequence[CTRData]) -> CTRData:
    """The rows of several requests as one batch (one request's are used as they are)."""
    return parts[0] if len(parts) == 1 else CTRData.concat(parts)


def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.get_num_threads()  # the first query fixes this thread's own count (torch sets it up lazily per thread)


def scoring_thread() -> ThreadPoolExecutor:
    """A one-thread executor whose thread runs torch with one intra-op thread, for the ID model's forward.

    Why: a forward of ~100 rows is many small ops; run from a worker thread with two OpenMP threads it took
    about twice as long as with one (1.1-1.8 ms against 0.7-1.0 ms on the 2-core machine), and the event
    loop's thread must not run it. Under OpenMP the count is per OS thread, so this leaves the explainer's
    threads alone; `torch.set_num_threads` also sets the count new threads start with, so the caller's is
    restored once this thread has fixed its own (tests/serving/test_predictor.py checks both)."""
    previous = torch.get_num_threads()
    executor = ThreadPoolExecutor(1, thread_name_prefix="id-scoring", initializer=_one_thread)
    executor.submit(int).result()  # start the thread now, then restore the default for everyone else
    torch.set_num_threads(previous)
    return executor


__all__ = ["concat_rows", "id_probability", "scoring_thread"]
