"""Model-free history rules: the floor any LLM predictor must beat (AUC ~0.71 on ML-1M, see metrics/evaluation.json)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def share_liked(history: Sequence[Mapping[str, Any]]) -> float:
    """Share of the user's recent history they liked (0.5 with no history)."""
    if not history:
        return 0.5
    return sum(bool(h["liked"]) for h in history) / len(history)


def genre_overlap(history: Sequence[Mapping[str, Any]], target: Mapping[str, Any]) -> float:
    """Liked history items sharing a genre with the target minus disliked ones sharing one, over history size."""
    genres = set(target.get("genres") or ())
    if not history or not genres:
        return 0.0
    score = sum((1 if h["liked"] else -1) for h in history if genres & set(h.get("genres") or ()))
    return score / len(history)
