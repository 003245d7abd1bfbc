"""One reward callable from weighted parts, and the LC / IC stage formulas built from it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from expctr.explainer.rewards.common import log_extra

RewardFn = Callable[..., list[float]]


def reward_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class CombinedReward:
    """r = sum_k w_k * r_k over (reward, weight) parts; zero-weight parts are not computed.

    Each part's per-completion values go to TRL's `log_extra` as `<name>/<part>` and their mean to
    `log_metric`; the last call's parts are kept in `last_parts` (for tests and stage logs).
    """

    def __init__(self, parts: Sequence[tuple[RewardFn, float]], name: str = "reward"):
        self.parts = [(fn, float(w)) for fn, w in parts if float(w) != 0.0]
        if not self.parts:
            raise ValueError("combine() needs at least one reward with a non-zero weight")
        names = [reward_name(fn) for fn, _ in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"reward parts need distinct names, got {names}")
        self.__name__ = name
        self.last_parts: dict[str, list[float]] = {}

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        total = np.zeros(len(completions), dtype=np.float64)
        self.last_parts = {}
        for fn, w in self.parts:
            part = [math.nan if v is None else float(v) for v in fn(prompts=prompts, completions=completions,
                                                                    **kwargs)]
            if len(part) != len(completions):
                raise ValueError(f"{reward_name(fn)} returned {len(part)} rewards for "
                                 f"{len(completions)} completions")
            key = reward_name(fn)
            self.last_parts[key] = part
            total += w * np.asarray(part)
            log_extra(kwargs, f"{self.__name__}/{key}", part)
            log_metric = kwargs.get("log_metric")
            if callable(log_metric) and part:
                log_metric(f"{self.__name__}/{key}", float(np.nanmean(part)))
        return total.tolist()


def combine(rewards_with_weights: Sequence[tuple[RewardFn, float]], name: str = "reward") -> CombinedReward:
    """One TRL reward callable: the weighted sum of its parts, each part logged (see CombinedReward)."""
    return CombinedReward(rewards_with_weights, name=name)


def stage_reward(stage: str, params, lc: RewardFn | None = None, ic: RewardFn | None = None,
                 fmt: RewardFn | None = None) -> CombinedReward:
    """The reward of an RL stage from RewardParams (weights) and the part rewards.

    lc stage: lc_weight * LC + format_weight * Format;
    ic stage: ic_weight * IC + ic_lc_weight * LC + format_weight * Format (lambda = ic_lc_weight).
    A part whose weight is non-zero must be given; zero-weight parts may be None.
    """
    if stage == "lc":
        spec = [(lc, params.lc_weight, "lc"), (fmt, params.format_weight, "format")]
    elif stage == "ic":
        spec = [(ic, params.ic_weight, "ic"), (lc, params.ic_lc_weight, "lc"),
                (fmt, params.format_weight, "format")]
    else:
        raise ValueError(f"unknown RL stage {stage!r}; choose 'lc' or 'ic'")
    parts = []
    for fn, w, label in spec:
        if w == 0:
            continue
        if fn is None:
            raise ValueError(f"the {stage} stage has {label} weight {w} but no {label} reward was given")
        parts.append((fn, w))
    return combine(parts, name=f"{stage}_reward")
