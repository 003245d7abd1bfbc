"""The reward of a click probability against the true label, or against a soft target (the ID model's belief),
and the two helpers every reward uses to read TRL's keyword columns and log per-completion values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_PROB = 1e-4
KINDS = ("logprob", "prob")


def _is_click(label: Any) -> bool:
    return float(label) >= 0.5


def true_label_reward(p_click: np.ndarray, labels: Sequence[Any], kind: str, min_prob: float = MIN_PROB
                      ) -> np.ndarray:
    """p_true = p if y = 1 else 1 - p;  logprob: log max(p_true, min_prob);  prob: p_true."""
    if kind not in KINDS:
        raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
    p = np.asarray(p_click, dtype=np.float64)
    y = np.array([_is_click(v) for v in labels], dtype=bool)
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} probabilities for {len(y)} labels")
    p_true = np.where(y, p, 1.0 - p)
    return np.log(np.maximum(p_true, min_prob)) if kind == "logprob" else p_true


def soft_target_reward(p_click: np.ndarray, target: Sequence[float], kind: str, min_prob: float = MIN_PROB
                       ) -> np.ndarray:
    """The reward of predicting P(click) = p for a soft target t in [0, 1] (the ID model's probability):

    logprob: t log p + (1 - t) log(1 - p) = -BCE(t, p);   prob: t p + (1 - t)(1 - p) (the probability that
    p and t, each read as a coin, agree). p is clipped to [min_prob, 1 - min_prob]. For t in {0, 1} these are
    exactly `true_label_reward`'s log p_true and p_true: IC is LC with the ID model's belief in place of the label.
    """
    if kind not in KINDS:
        raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
    p = np.clip(np.asarray(p_click, dtype=np.float64), min_prob, 1.0 - min_prob)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{len(p)} probabilities for {len(t)} targets")
    if ((t < 0) | (t > 1)).any():
        raise ValueError("soft targets must lie in [0, 1]")
    if kind == "logprob":
        return t * np.log(p) + (1.0 - t) * np.log(1.0 - p)
    return t * p + (1.0 - t) * (1.0 - p)


def column(kwargs: Mapping[str, Any], name: str, n: int, who: str) -> list[Any]:
    if name not in kwargs:
        raise KeyError(f"{who} needs the dataset column {name!r} (TRL passes extra columns as kwargs)")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"{who}: column {name!r} has {len(values)} values for {n} completions")
    return values


def log_extra(kwargs: Mapping[str, Any], column: str, values: Sequence[float]) -> None:
    log = kwargs.get("log_extra")
    if callable(log):
        log(column, [float(v) for v in values])
