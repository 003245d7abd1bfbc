"""PNG figures of the evaluation report (matplotlib Figure on an explicit Agg canvas: no pyplot, no global
backend switch, no GUI; byte-stable output).

Each function draws one figure and returns its PNG bytes; the report writes them to files and embeds them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg canvas, whatever the default backend
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

DPI = 100
_BASELINE_COLORS = ["#555555", "#8c564b", "#bcbd22", "#17becf", "#7f7f7f"]
_ROUND_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#e377c2"]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # no "Software" / date text chunks: the same inputs give the same bytes
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def round_color(k: int) -> str:
    """Round 0 (the base explainer) is grey; rounds 1.. take the palette."""
    return "#7f7f7f" if k == 0 else _ROUND_COLORS[(k - 1) % len(_ROUND_COLORS)]


def roc_figure(
    labels: Sequence[int], curves: Sequence[tuple[str, np.ndarray, str, str]], title: str
) -> bytes:
    """ROC curves; `curves` = (legend label, scores, color, linestyle); none drawn for one-class labels."""
    y = np.asarray(labels, dtype=int)
    fig = Figure(figsize=(9.6, 5.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#cccccc", lw=1, ls=":")
    if len(np.unique(y)) == 2:
        for label, scores, color, ls in curves:
            fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=float))
            ax.plot(fpr, tpr, color=color, ls=ls, lw=1.6, label=label)
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center", va="center")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5, frameon=False)
    ax.set_aspect("equal")
    fig.tight_layout()
    return _png(fig)


def round_bars(
    rounds: Sequence[int],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    ylabel: str,
    reference: Mapping[str, float | None] | None = None,
    ylim: tuple[float, float] = (0, 1),
) -> bytes:
    """Grouped bars: one group per round, one bar per series; optional horizontal reference lines."""
    fig = Figure(figsize=(7.2, 4.2))
    ax = fig.add_subplot()
    names = list(series)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(rounds))
    for j, name in enumerate(names):
        vals = [np.nan if v is None else float(v) for v in series[name]]
        bars = ax.bar(
            x + (j - (len(names) - 1) / 2) * width,
            vals,
            width,
            label=name,
            color=_ROUND_COLORS[j % len(_ROUND_COLORS)],
        )
        for b, v in zip(bars, vals):
            if not math.isnan(v):
                ax.annotate(
                    f"{v:.2f}",
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
    for i, (name, v) in enumerate((reference or {}).items()):
        if v is not None and not math.isnan(v):
            ax.axhline(
                v, color=_BASELINE_COLORS[i % len(_BASELINE_COLORS)], ls="--", lw=1, label=f"{name} ({v:.2f})"
            )
    ax.set_xticks(x, [f"round {k}" for k in rounds])
    ax.set(ylabel=ylabel, title=title, ylim=ylim)
    ax.legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig)


def round_interval_bars(rounds: Sequence[int], series: Mapping[str, Sequence[Mapping | None]], title: str,
                        reference: Mapping[str, float | None] | None = None) -> bytes:
    """Grouped bars per round with 95 % interval whiskers; each value is a predictor row (auc, auc_ci_low,
    auc_ci_high) or None (no bar); optional horizontal reference lines."""
    fig = Figure(figsize=(8.0, 4.4))
    ax = fig.add_subplot()
    names = list(series)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(rounds))
    for j, name in enumerate(names):
        rows = series[name]
        vals = np.array([np.nan if not r else float(r["auc"]) for r in rows])
        lo = np.array([np.nan if not r or r.get("auc_ci_low") is None else float(r["auc_ci_low"]) for r in rows])
        hi = np.array([np.nan if not r or r.get("auc_ci_high") is None else float(r["auc_ci_high"]) for r in rows])
        pos = x + (j - (len(names) - 1) / 2) * width
        ax.bar(pos, vals, width, label=name, color=_ROUND_COLORS[j % len(_ROUND_COLORS)], alpha=0.85)
        ok = ~np.isnan(vals) & ~np.isnan(lo) & ~np.isnan(hi)
        ax.errorbar(pos[ok], vals[ok], yerr=[vals[ok] - lo[ok], hi[ok] - vals[ok]], fmt="none", ecolor="#222222",
                    capsize=3, lw=1)
        for px, v in zip(pos, vals):
            if not math.isnan(v):
                ax.annotate(f"{v:.3f}", (px, 0.405), ha="center", va="bottom", fontsize=6.5, rotation=90)
    for i, (name, v) in enumerate((reference or {}).items()):
        if v is not None and not math.isnan(v):
            ax.axhline(v, color=_BASELINE_COLORS[i % len(_BASELINE_COLORS)], ls="--", lw=1, label=f"{name} ({v:.3f})")
    ax.set_xticks(x, ["base (0)" if k == 0 else f"round {k}" for k in rounds])
    ax.set(ylabel="AUC", title=title, ylim=(0.4, 0.9))
    ax.legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig)


def stage_reward_curves(logs: Mapping[int, Mapping[str, Sequence[Mapping]]]) -> bytes:
    """Per stage (LC, IC) and phase (dense verdict step: the exact expected reward of each batch; GRPO reason
    step: the mean reward of each step's completions), one line per round, steps numbered within the stage."""
    fig = Figure(figsize=(10.0, 6.4))
    axes = fig.subplots(2, 2)
    for row, phase in enumerate(("verdict", "reason")):
        for col, stage in enumerate(("lc", "ic")):
            ax = axes[row][col]
            for k in sorted(logs):
                vals = [float(r["reward"]) for r in logs[k].get(stage, [])
                        if r.get("phase", "reason") == phase and _finite(r.get("reward"))]
                if vals:
                    steps = np.arange(1, len(vals) + 1)
                    ax.plot(steps, vals, color=round_color(k), lw=0.8, alpha=0.35)
                    w = max(1, len(vals) // 8)  # a moving average makes the trend visible over batch noise
                    smooth = np.convolve(vals, np.ones(w) / w, mode="valid")
                    ax.plot(steps[w - 1:], smooth, color=round_color(k), lw=1.8, label=f"round {k}")
            what = "exact expected reward per batch" if phase == "verdict" else "GRPO mean reward per step"
            ax.set(title=f"{stage.upper()} stage, {phase} step", xlabel="step", ylabel=what)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7.5, frameon=False)
            else:
                ax.text(0.5, 0.5, "no log", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("RL reward curves (thin: per step; thick: moving average)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def reward_curves(logs: Mapping[int, Mapping[str, Sequence[Mapping]]], title: str) -> bytes:
    """Mean GRPO reward per step (± its std across the step's completions), LC and IC stages side by side,
    steps numbered across rounds."""
    fig = Figure(figsize=(9.0, 3.8))
    axes = fig.subplots(1, 2, sharey=False)
    for ax, stage in zip(axes, ("lc", "ic")):
        start = 0
        for k in sorted(logs):
            rows = [r for r in logs[k].get(stage, []) if _finite(r.get("reward"))]
            if not rows:
                continue
            steps = start + np.arange(1, len(rows) + 1)
            mean = np.array([float(r["reward"]) for r in rows])
            std = np.array([float(r["reward_std"]) if _finite(r.get("reward_std")) else 0.0 for r in rows])
            ax.plot(steps, mean, marker="o", ms=3, color=round_color(k), label=f"round {k}")
            ax.fill_between(steps, mean - std, mean + std, color=round_color(k), alpha=0.15, lw=0)
            start += len(rows)
        ax.set(title=f"{stage.upper()} stage", xlabel="GRPO step (across rounds)", ylabel="mean reward")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5, frameon=False)
        else:
            ax.text(0.5, 0.5, "no reward log", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
