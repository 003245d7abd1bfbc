"""A bounded, thread-safe LRU cache of explanations keyed by what determines them.

Key = sha256 of (the rendered history the explainer saw, the target item, the verdict the explanation was
opened with, the adapter version). Two users with the same history, target and verdict get the same
explanation - it was computed from nothing else - and a new adapter never serves an old adapter's text. The
verdict is in the key because it comes from the score, which differs between users with the same history
(a known user's ID features, a cold-start user's none).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any


def explanation_key(history: Sequence[Any], item_id: str, adapter_version: str, verdict: str | None = None) -> str:
    blob = json.dumps({"h": list(history), "i": item_id, "a": adapter_version, "v": verdict}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ExplanationCache:
    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: str, value: Any) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, int]:
        return {"size": len(self), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}


__all__ = ["ExplanationCache", "explanation_key"]
