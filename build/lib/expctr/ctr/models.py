"""The ID-based CTR models. Each defines layers and `forward(batch) -> logits (B,)`; training lives in trainer.py."""

from __future__ import annotations

import torch
from torch import nn

from expctr.config import CTRParams
from expctr.ctr.layers import FieldEmbedding, TargetAttention, mlp
from expctr.data.features import SCALAR_FIELDS, FeatureMap


class LogisticRegression(nn.Module):
    """Sum of one learned weight per active feature value, plus a bias."""

    def __init__(self, fmap: FeatureMap, p: CTRParams):
        super().__init__()
        self.emb = FieldEmbedding(fmap, 1)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.emb.fields(batch).sum(dim=(1, 2)) + self.bias


class DeepFM(nn.Module):
    """First-order + FM pairwise interactions + an MLP over the same field embeddings (Guo et al., 2017)."""

    def __init__(self, fmap: FeatureMap, p: CTRParams):
        super().__init__()
        self.linear = LogisticRegression(fmap, p)
        self.emb = FieldEmbedding(fmap, p.embed_dim)
        n = self.emb.num_fields * p.embed_dim
        self.deep = nn.Sequential(mlp(n, p.mlp_dims, p.dropout), nn.Linear(p.mlp_dims[-1], 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.emb.fields(batch)
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        return self.linear(batch) + fm + self.deep(e.flatten(1)).squeeze(-1)


class DCNv2(nn.Module):
    """Full-matrix cross layers x_{l+1} = x0 * (W x_l + b) + x_l in parallel with an MLP (Wang et al., 2021)."""

    def __init__(self, fmap: FeatureMap, p: CTRParams):
        super().__init__()
        self.emb = FieldEmbedding(fmap, p.embed_dim)
        n = self.emb.num_fields * p.embed_dim
        self.cross = nn.ModuleList(nn.Linear(n, n) for _ in range(p.cross_layers))
        self.deep = mlp(n, p.mlp_dims, p.dropout)
        self.out = nn.Linear(n + p.mlp_dims[-1], 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.emb.fields(batch).flatten(1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(-1)


class DIN(nn.Module):
    """Target attention over the user's recent history, concatenated with the field embeddings (Zhou et al., 2018)."""

    def __init__(self, fmap: FeatureMap, p: CTRParams):
        super().__init__()
        self.emb = FieldEmbedding(fmap, p.embed_dim)
        self.attention = TargetAttention(p.embed_dim)
        self.item_field = SCALAR_FIELDS.index("item")
        n = (self.emb.num_fields + 1) * p.embed_dim
        self.deep = nn.Sequential(mlp(n, p.mlp_dims, p.dropout), nn.Linear(p.mlp_dims[-1], 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.emb.fields(batch)
        hist, mask = self.emb.history(batch)
        interest = self.attention(hist, mask, e[:, self.item_field])
        return self.deep(torch.cat([e.flatten(1), interest], dim=1)).squeeze(-1)


MODELS: dict[str, type[nn.Module]] = {"lr": LogisticRegression, "deepfm": DeepFM, "dcnv2": DCNv2, "din": DIN}


def build_model(name: str, fmap: FeatureMap, params: CTRParams, seed: int | None = None) -> nn.Module:
    """Instantiate a model; with `seed`, its initial weights are reproducible."""
    if name not in MODELS:
        raise ValueError(f"unknown CTR model {name!r}; choose one of {sorted(MODELS)}")
    if seed is not None:
        torch.manual_seed(seed)
    return MODELS[name](fmap, params)
