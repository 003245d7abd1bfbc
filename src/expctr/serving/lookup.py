"""Request ids -> catalogue rows and the user's context, or a typed 4xx that names the field sent.

The domain checks live here (unknown ids, limits, duplicates, ratings outside the data's range); the
transport and schema checks ran before (`expctr.serving.requests`). A field path names what the client
sent: `candidates.1` for the second id of a list, `item_id` for a single id, `history.0.rating`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from expctr.data.features import OOV, PAD
from expctr.serving.catalogue import Catalogue
from expctr.serving.errors import DuplicateIds, InvalidRequest, LimitExceeded, UnknownId
from expctr.serving.schemas import ExplainRequest, PredictRequest

COLD_START = "cold-start"


@dataclass(frozen=True)
class UserContext:
    """Who is asking: ID feature indices and (item row, liked) history, most recent last, at most K."""

    name: str
    user_idx: int
    gender_idx: int
    age_idx: int
    occupation_idx: int
    history: tuple[tuple[int, bool], ...]


def duplicates(values: Sequence[str]) -> list[str]:
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    return dup


class Lookup:
    """Resolves the ids of a request against the catalogue and the known users."""

    def __init__(self, catalogue: Catalogue, users: dict[str, dict[str, Any]], click_threshold: float,
                 rating_range: tuple[float, float], history_len: int, max_history: int):
        self.catalogue, self.users, self.threshold = catalogue, users, click_threshold
        self.rating_range, self.k, self.max_history = rating_range, history_len, max_history

    def user(self, req: PredictRequest | ExplainRequest) -> UserContext:
        """A known user (`user_id`) or a cold-start one (`history`: its last K entries)."""
        rows = self.catalogue.row
        if req.user_id is not None:
            row = self.users.get(req.user_id)
            if row is None:
                raise UnknownId(f"unknown user_id {req.user_id!r} (send a `history` for a cold-start user)",
                                field="user_id")
            hist = [(rows[i], float(r) >= self.threshold)
                    for i, r in zip(row["hist_item_id"], row["hist_rating"]) if i in rows]
            return UserContext(req.user_id, row["user_idx"], row["gender_idx"], row["age_idx"],
                               row["occupation_idx"], tuple(hist[-self.k:]))
        entries = req.history or []
        if len(entries) > self.max_history:
            raise LimitExceeded(f"history has {len(entries)} entries; the limit is {self.max_history}",
                                field="history")
        if dup := duplicates([e.item_id for e in entries]):
            raise DuplicateIds(f"history lists item(s) more than once: {dup[:5]}", field="history")
        lo, hi = self.rating_range
        hist = []
        for n, e in enumerate(entries):
            if not math.isfinite(e.rating) or not lo <= e.rating <= hi:
                raise InvalidRequest(f"history.{n}.rating: {e.rating} is outside the rating range [{lo}, {hi}]",
                                     field=f"history.{n}.rating")
            if e.item_id not in rows:
                raise UnknownId(f"history.{n}.item_id: unknown item id {e.item_id!r}", field=f"history.{n}.item_id")
            hist.append((rows[e.item_id], e.rating >= self.threshold))
        return UserContext(COLD_START, OOV, PAD, PAD, PAD, tuple(hist[-self.k:]))

    def candidates(self, ids: list[str], field: str, limit: int, why: str = "") -> list[int]:
        """Catalogue rows of a list of ids; `why` qualifies the limit in the error ("with explain=true ")."""
        if not ids:
            raise InvalidRequest(f"{field} is empty; give at least one item id", field=field)
        if len(ids) > limit:
            note = " (explanations take about a second each)" if why else ""
            raise LimitExceeded(f"{field} has {len(ids)} items; {why}the limit is {limit}{note}", field=field)
        if dup := duplicates(ids):
            raise DuplicateIds(f"{field} lists item(s) more than once: {dup[:5]}", field=field)
        rows = self.catalogue.row
        unknown = [(n, i) for n, i in enumerate(ids) if i not in rows]
        if unknown:
            n, i = unknown[0]
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise UnknownId(f"{field}.{n}: unknown item id {i!r}{more}", field=f"{field}.{n}")
        return [rows[i] for i in ids]

    def item(self, item_id: str, field: str) -> int:
        """The catalogue row of a single id."""
        row = self.catalogue.row.get(item_id)
        if row is None:
            raise UnknownId(f"{field}: unknown item id {item_id!r}", field=field)
        return row


__all__ = ["COLD_START", "Lookup", "UserContext", "duplicates"]
