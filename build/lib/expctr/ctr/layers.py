"""Shared layers: one embedding table for all fields (with offsets), an MLP, DIN's attention."""

from __future__ import annotations

import torch
from torch import nn

from expctr.data.features import SCALAR_FIELDS, FeatureMap


class FieldEmbedding(nn.Module):
    """Embeds the scalar fields, the genre bag and the history, sharing the item table with history.

    Returns (B, F+1, D): one vector per scalar field plus the mean genre vector, the layout every model
    consumes. PAD (index 0) embeds to zero.
    """

    def __init__(self, fmap: FeatureMap, dim: int):
        super().__init__()
        sizes = [fmap.size(f) for f in SCALAR_FIELDS]
        self.offsets = nn.Buffer(torch.tensor([0, *sizes[:-1]]).cumsum(0), persistent=False)
        self.item_offset = int(self.offsets[SCALAR_FIELDS.index("item")])
        self.table = nn.Embedding(sum(sizes), dim)
        self.genre = nn.Embedding(fmap.size("genre"), dim, padding_idx=0)
        self.click = nn.Embedding(3, dim, padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.01)
        nn.init.normal_(self.genre.weight, std=0.01)
        with torch.no_grad():
            self.genre.weight[0].zero_()
        self.num_fields = len(sizes) + 1
        self.dim = dim

    def fields(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scalar = self.table(batch["fields"] + self.offsets)
        g = batch["genres"]
        genre = self.genre(g).sum(1) / g.ne(0).sum(1, keepdim=True).clamp(min=1)
        return torch.cat([scalar, genre.unsqueeze(1)], dim=1)

    def history(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) history vectors (item + liked/disliked signal) and the (B, K) valid mask."""
        items = batch["hist_items"]
        mask = batch["hist_clicks"].ne(0)
        vec = self.table(items + self.item_offset) + self.click(batch["hist_clicks"])
        return vec * mask.unsqueeze(-1), mask


def mlp(in_dim: int, dims: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_dim, d), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = d
    return nn.Sequential(*layers)


class TargetAttention(nn.Module):
    """DIN's local activation unit: weights each history vector by an MLP of (h, t, h-t, h*t)."""

    def __init__(self, dim: int, hidden: int = 36):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * dim, hidden), nn.Sigmoid(), nn.Linear(hidden, 1))

    def forward(self, hist: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1).expand_as(hist)
        w = self.score(torch.cat([hist, t, hist - t, hist * t], dim=-1)).squeeze(-1)
        w = w.masked_fill(~mask, 0.0)  # DIN keeps raw (unnormalised) weights; padding contributes nothing
        return (w.unsqueeze(-1) * hist).sum(1)
