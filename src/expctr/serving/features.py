"""The ID model's input for one request: one `CTRData` row per candidate, as training builds them.

Scalar fields in SCALAR_FIELDS order (the user's, then the item's), the item's genre bag, and the user's
last K history items and clicks, left-padded with PAD (most recent last) like `expctr.data.features`. The
history is the same for every candidate, so it is one (K,) row broadcast, not copied per candidate. The
model reads them through `CTRData` (expctr.ctr.batch), the same container training batches come from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from expctr.ctr.batch import CTRData
from expctr.data.features import HIST_CLICK_NO, HIST_CLICK_PAD, HIST_CLICK_YES, PAD, SCALAR_FIELDS
from expctr.serving.catalogue import Catalogue
from expctr.serving.lookup import UserContext


def history_row(catalogue: Catalogue, user: UserContext, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(K,) history item indices and clicks, left-padded, most recent last."""
    items = np.full(k, PAD, dtype=np.int64)
    clicks = np.full(k, HIST_CLICK_PAD, dtype=np.int64)
    hist = user.history[-k:] if k else ()
    if hist:
        items[k - len(hist):] = catalogue.item_idx[[row for row, _ in hist]]
        clicks[k - len(hist):] = [HIST_CLICK_YES if liked else HIST_CLICK_NO for _, liked in hist]
    return items, clicks


def id_rows(catalogue: Catalogue, user: UserContext, rows: Sequence[int], k: int) -> CTRData:
    """One row per candidate catalogue row."""
    r = np.asarray(rows, dtype=np.int64)
    n = len(r)
    scalar = {"user": user.user_idx, "item": catalogue.item_idx[r], "gender": user.gender_idx,
              "age": user.age_idx, "occupation": user.occupation_idx, "decade": catalogue.decade_idx[r]}
    fields = np.empty((n, len(SCALAR_FIELDS)), dtype=np.int64)
    for j, name in enumerate(SCALAR_FIELDS):
        fields[:, j] = scalar[name]
    items, clicks = history_row(catalogue, user, k)
    return CTRData(fields=torch.from_numpy(fields), genres=torch.from_numpy(catalogue.genre_idx[r]),
                   hist_items=torch.from_numpy(items).expand(n, k), hist_clicks=torch.from_numpy(clicks).expand(n, k),
                   labels=torch.zeros(n))


__all__ = ["history_row", "id_rows"]
