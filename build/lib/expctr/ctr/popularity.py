"""Item-popularity baseline: the item's smoothed click rate in the training split.

A count alone gives a ranking but no probability; smoothing the per-item click rate towards the global
rate (a Beta prior worth `strength` interactions) gives both, so AUC and log-loss compare like for like.
"""

from __future__ import annotations

import numpy as np
import polars as pl


class Popularity:
    def __init__(self, strength: float = 20.0):
        self.strength = strength
        self.rates: dict[int, float] = {}
        self.prior = 0.5

    def fit(self, item_idx: np.ndarray, labels: np.ndarray) -> Popularity:
        df = pl.DataFrame({"item": item_idx, "label": labels.astype(np.float64)})
        self.prior = float(df["label"].mean())
        agg = df.group_by("item").agg(pl.col("label").sum().alias("clicks"), pl.len().alias("n"))
        rate = (agg["clicks"] + self.strength * self.prior) / (agg["n"] + self.strength)
        self.rates = dict(zip(agg["item"].to_list(), rate.to_list()))
        return self

    def predict(self, item_idx: np.ndarray) -> np.ndarray:
        return np.array([self.rates.get(int(i), self.prior) for i in item_idx], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"strength": self.strength, "prior": self.prior, "rates": {str(k): v for k, v in self.rates.items()}}
