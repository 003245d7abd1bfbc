"""The bundle's tables in memory: the item catalogue and the known users (see expctr.serving.bundle).

Loaded once when the service starts, so a request only indexes arrays and dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from expctr.llm.prompts import Item


@dataclass(frozen=True)
class Catalogue:
    """Every item by catalogue row: its id, its prompt `Item` (with the training statistics the explainer's
    prompt states) and the ID model's indices of its item, decade and genre fields."""

    ids: list[str]
    row: dict[str, int]  # item id -> catalogue row
    items: list[Item]
    titles: list[str]
    years: list[int | None]
    item_idx: np.ndarray  # (n,) int64
    decade_idx: np.ndarray  # (n,) int64
    genre_idx: np.ndarray  # (n, G) int64

    @classmethod
    def load(cls, path: str | Path, max_genres: int) -> Catalogue:
        cat = pl.read_parquet(path)
        ids, titles, years = cat["item_id"].to_list(), cat["title"].to_list(), cat["year"].to_list()
        items = [Item(title=t, year=y, genres=tuple(g or ()), viewers=v, liked_share=s) for t, y, g, v, s in
                 zip(titles, years, cat["genres"].to_list(), cat["viewers"].to_list(), cat["liked_share"].to_list())]
        return cls(ids=ids, row={item: i for i, item in enumerate(ids)}, items=items, titles=titles, years=years,
                   item_idx=cat["item_idx"].to_numpy().astype(np.int64),
                   decade_idx=cat["decade_idx"].to_numpy().astype(np.int64),
                   genre_idx=np.array(cat["genre_idx"].to_list(), dtype=np.int64).reshape(len(cat), max_genres))


def load_users(path: str | Path) -> dict[str, dict[str, Any]]:
    """Known users by id: ID feature indices and their most recent (item id, rating), most recent last."""
    return {r["user_id"]: r for r in pl.read_parquet(path).iter_rows(named=True)}


__all__ = ["Catalogue", "load_users"]
