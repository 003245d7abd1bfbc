"""What a round records about its RL stages: the reward curves (a DVC plot per stage and phase) and whether
each curve rose (mean of the last quarter of its steps against the first)."""

from __future__ import annotations

from typing import Any

import polars as pl

from expctr.explainer.verdict import quarter_means
from expctr.io import atomic_path
from expctr.paths import ProjectPaths


def curves(run: dict[str, Any]) -> dict[str, list]:
    """Per phase of one stage's run, the logged reward of each step."""
    return {"verdict": [r["reward"] for r in run["verdict_steps"]],
            "reason": [r.get("reward") for r in run["steps"]]}


def rise(curve: list) -> dict[str, Any]:
    """Mean reward of the first vs the last quarter of a stage's steps (`rises` is None below two steps)."""
    first, last = quarter_means(curve)
    return {"first_quarter": first, "last_quarter": last, "steps": len(curve),
            "rises": bool(last > first) if len(curve) >= 2 else None}


def write_reward_curves(paths: ProjectPaths, k: int, runs: dict[str, dict]) -> None:
    """Per stage and phase, a CSV of (step, reward) under metrics/rewards/round_k/ (a DVC plot)."""
    with atomic_path(paths.metric(f"rewards/round_{k}")) as tmp:
        tmp.mkdir(parents=True)
        for stage, run in runs.items():
            for phase, curve in curves(run).items():
                if curve:
                    pl.DataFrame({"step": list(range(1, len(curve) + 1)), "reward": curve}).write_csv(
                        tmp / f"{stage}_{phase}.csv")


def stage_summary(runs: dict[str, dict]) -> dict[str, Any]:
    """The round metrics' view of its RL stages: summaries, curves and rises."""
    return {"rl": {stage: run["summary"] for stage, run in runs.items()},
            "reward_curves": {stage: curves(run) for stage, run in runs.items()},
            "rewards_rise": {stage: {phase: rise(c) for phase, c in curves(run).items()} for stage, run in runs.items()}}


__all__ = ["curves", "rise", "stage_summary", "write_reward_curves"]
