"""Tensors the CTR models read: one dict per batch, built once per split from the features parquet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from expctr.data.features import SCALAR_FIELDS

SCALAR_COLUMNS = tuple(f"{f}_idx" for f in SCALAR_FIELDS)


@dataclass
class CTRData:
    """Column tensors of one split; `batches` yields index slices so no copy of the table is made."""

    fields: torch.Tensor  # (N, F) int64, the scalar categorical fields in SCALAR_FIELDS order
    genres: torch.Tensor  # (N, G) int64, genre bag (PAD=0)
    hist_items: torch.Tensor  # (N, K) int64, history item indices, most recent last (PAD=0)
    hist_clicks: torch.Tensor  # (N, K) int64, 0 pad / 1 disliked / 2 liked
    labels: torch.Tensor  # (N,) float32
    text: torch.Tensor | None = None  # (N, E) float32 explanation embeddings (ExpCTR-Aug), when present

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_frame(cls, df: pl.DataFrame) -> CTRData:
        def arr(name: str) -> np.ndarray:
            return np.ascontiguousarray(df[name].to_numpy())

        return cls(
            fields=torch.from_numpy(np.stack([arr(c) for c in SCALAR_COLUMNS], axis=1).astype(np.int64)),
            genres=torch.from_numpy(arr("genre_idx").astype(np.int64)),
            hist_items=torch.from_numpy(arr("hist_item_idx").astype(np.int64)),
            hist_clicks=torch.from_numpy(arr("hist_click").astype(np.int64)),
            labels=torch.from_numpy(arr("label").astype(np.float32)),
        )

    def take(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = {"fields": self.fields[idx], "genres": self.genres[idx], "hist_items": self.hist_items[idx],
                 "hist_clicks": self.hist_clicks[idx], "labels": self.labels[idx]}
        if self.text is not None:
            batch["text"] = self.text[idx]
        return batch

    @classmethod
    def concat(cls, parts: Sequence[CTRData]) -> CTRData:
        """The rows of `parts`, one after another (the service merges concurrent requests so)."""
        if len({p.text is None for p in parts}) > 1:
            raise ValueError("CTRData.concat: some parts carry explanation embeddings and some do not")

        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        return cls(cat("fields"), cat("genres"), cat("hist_items"), cat("hist_clicks"), cat("labels"),
                   None if parts[0].text is None else cat("text"))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.take(order[start:start + batch_size])

    def shard_batches(self, batch_size: int, rank: int, world: int, generator: torch.Generator | None = None):
        """Data-parallel training batches: yields (this process's part, global batch size).

        Every process draws the same permutation (same generator seed) and cuts the same global batches as
        `batches(shuffle=True)` does in one process; process `rank` of `world` takes the rank-th of `world`
        near-equal contiguous parts. Together the processes see exactly the single-process batches, so
        averaging their gradients reproduces the single-process step. With world == 1 this is `batches`.
        """
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield self.take(idx.tensor_split(world)[rank]), len(idx)

    def shard(self, rank: int, world: int) -> CTRData:
        """The rank-th of `world` near-equal contiguous row ranges (each process scores one for evaluation)."""
        base, extra = divmod(len(self), world)  # the split torch.tensor_split makes: the first `extra` get one more
        lo = rank * base + min(rank, extra)
        rows = slice(lo, lo + base + (rank < extra))  # views, no copy
        return CTRData(self.fields[rows], self.genres[rows], self.hist_items[rows], self.hist_clicks[rows],
                       self.labels[rows], None if self.text is None else self.text[rows])
