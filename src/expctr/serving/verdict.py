"""The decision threshold every served verdict and response follows.

p_click at or above it: "the user will probably enjoy" (more likely than not to click: the probabilities are
calibrated by log-loss training, and "probably" means > 50 %). The ID model's probability picks the verdict
before the explainer writes; the probability returned with an explanation stays on that side
(`expctr.serving.aug_scoring`).
"""

from __future__ import annotations

from collections.abc import Iterable

DECISION_THRESHOLD = 0.5


def verdicts(probs: Iterable[float]) -> list[bool]:
    """The verdict each probability states: True for "will probably enjoy"."""
    return [bool(p >= DECISION_THRESHOLD) for p in probs]


__all__ = ["DECISION_THRESHOLD", "verdicts"]
