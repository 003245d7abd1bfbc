"""PNG figures of the evaluation report (matplotlib Figure on an explicit Agg canvas: no pyplot, no global
backend switch, no GUI; byte-stable output).

Each function draws one figure and returns its PNG bytes; the report writes them to files and embeds them.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg canvas, whatever the default backend
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

DPI = 100
_BASELINE_COLORS = ["#555555", "#8c564b", "#bcbd22", "#17becf", "#7f7f7f"]
_ROUND_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#e377c2"]
_BAR_COLORS = [*_ROUND_COLORS, "#17becf", "#8c564b"]
_VARIANT_COLORS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#d62728", "#17becf"]
Interval = tuple[str, float | None, float | None, float | None]  # (label, value, ci_low, ci_high)


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
    fig = Figure(figsize=(11.0, 5.6))
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
    fig = Figure(figsize=(8.4, 4.2))
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
            color=_BAR_COLORS[j % len(_BAR_COLORS)],
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


def _interval_rows(ax, rows: Sequence[Interval], colors: Sequence[str], zero_line: bool = False) -> None:
    """One point per row (top to bottom) with its 95 % whisker and value; n/a where the value is missing."""
    y = np.arange(len(rows))[::-1]
    for yi, (label, v, lo, hi), color in zip(y, rows, colors):
        if not _finite(v):
            ax.annotate("n/a", (0.5, yi), xycoords=("axes fraction", "data"), ha="center", va="center", fontsize=8)
            continue
        v = float(v)
        if _finite(lo) and _finite(hi):
            ax.errorbar(v, yi, xerr=[[v - float(lo)], [float(hi) - v]], fmt="o", color=color, capsize=4, lw=1.6,
                        ms=6)
        else:
            ax.plot(v, yi, "o", color=color, ms=6)
        ax.annotate(f"{v:+.3f}" if zero_line else f"{v:.3f}", (v, yi), xytext=(0, 7), textcoords="offset points",
                    ha="center", fontsize=7.5)
    if zero_line:
        ax.axvline(0.0, color="#999999", ls="--", lw=1)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.grid(axis="x", color="#eeeeee")


def ablation_figure(aucs: Sequence[Interval], diffs: Sequence[Interval], title: str) -> bytes:
    """Left: each Aug variant's and the ID model's AUC with 95 % intervals; right: the paired differences with a
    line at 0 (a whisker across 0 is a difference these pairs do not show)."""
    fig = Figure(figsize=(11.0, 0.9 + 0.55 * max(len(aucs), len(diffs))))
    left, right = fig.subplots(1, 2)
    _interval_rows(left, aucs, [*_VARIANT_COLORS[: len(aucs) - 1], "#555555"])
    left.set(xlabel="AUC (95 % bootstrap CI)", title="AUC on the same pairs")
    _interval_rows(right, diffs, _VARIANT_COLORS, zero_line=True)
    right.set(xlabel="AUC difference (paired 95 % bootstrap CI)", title="Paired differences")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def grade_figure(rows: Sequence[Mapping], title: str) -> bytes:
    """Per verdict grade (highest first): the judge's mean P(Yes) and the click rate on the test pairs stated
    with that grade (bars), and the judge's mean P(Yes) after the bare sentence on the RL pool (diamonds)."""
    fig = Figure(figsize=(10.0, 4.6))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.38

    def vals(key: str) -> list[float]:
        return [float(r[key]) if _finite(r.get(key)) else np.nan for r in rows]

    for off, key, label, color in ((-width / 2, "mean_p_yes", "judge's mean P(Yes), test pairs", "#1f77b4"),
                                   (width / 2, "click_rate", "click rate, test pairs", "#2ca02c")):
        bars = ax.bar(x + off, vals(key), width, label=label, color=color, alpha=0.85)
        for b, v in zip(bars, vals(key)):
            if not math.isnan(v):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 1), textcoords="offset points")
    ax.plot(x, vals("pool_mean_p_yes"), "D", ls="none", color="#d62728", ms=6,
            label="judge's mean P(Yes), bare sentence (RL pool)")
    ax.set_xticks(x, [f"{textwrap.fill(str(r['grade']), 20)}\n(n = {r.get('n') or 0})" for r in rows], fontsize=7.5)
    ax.set(ylabel="probability / rate", ylim=(0, 1.08), title=title)
    ax.legend(fontsize=7.5, frameon=False, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def aug_curves_figure(fits: Mapping[str, Mapping], title: str) -> bytes:
    """Per Aug variant and epoch (0 = before training): held-out AUC, held-out log-loss and train loss; a star
    marks the best epoch (best epoch 0: training never beat the starting point)."""
    fig = Figure(figsize=(11.0, 3.8))
    axes = fig.subplots(1, 3)
    for (v, fit), color in zip(fits.items(), _VARIANT_COLORS):
        curve = list(fit.get("curve") or [])
        best = fit.get("best_epoch")
        for ax, key in zip(axes, ("valid_auc", "valid_logloss", "train_loss")):
            pts = [(c["epoch"], float(c[key])) for c in curve if _finite(c.get(key))]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=color, lw=1.4, label=f"{v} (best epoch {best})")
                hit = [p for p in pts if p[0] == best]
                if hit:
                    ax.plot(*hit[0], marker="*", ms=12, color=color)
    for ax, label in zip(axes, ("held-out AUC", "held-out log-loss", "train loss")):
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
        else:
            ax.text(0.5, 0.5, "no curve", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def round_progress_figure(rounds: Sequence[int], aucs: Mapping[str, Sequence[Mapping | None]],
                          gains: Mapping[str, Sequence[Mapping | None]], reference: Mapping[str, float | None],
                          title: str) -> bytes:
    """Left: AUC per round with 95 % intervals, one line per predictor, baselines as dashed lines; right: each
    predictor minus the ID model per round (paired intervals) with a line at 0. Values are predictor rows
    {auc, auc_ci_low, auc_ci_high} or differences {diff, ci_low, ci_high}; None: not scored that round."""
    fig = Figure(figsize=(11.0, 4.2))
    left, right = fig.subplots(1, 2)
    x = np.arange(len(rounds), dtype=float)
    for ax, data, key, lo_key, hi_key in ((left, aucs, "auc", "auc_ci_low", "auc_ci_high"),
                                          (right, gains, "diff", "ci_low", "ci_high")):
        for j, (name, rows) in enumerate(data.items()):
            pos = x + (j - (len(data) - 1) / 2) * 0.08  # a small offset keeps the whiskers apart
            v = np.array([float(r[key]) if r and _finite(r.get(key)) else np.nan for r in rows])
            lo = np.array([float(r[lo_key]) if r and _finite(r.get(lo_key)) else np.nan for r in rows])
            hi = np.array([float(r[hi_key]) if r and _finite(r.get(hi_key)) else np.nan for r in rows])
            ok = ~np.isnan(v)
            color = _VARIANT_COLORS[j % len(_VARIANT_COLORS)]
            ax.plot(pos[ok], v[ok], marker="o", color=color, lw=1.6, label=name)
            w = ok & ~np.isnan(lo) & ~np.isnan(hi)
            ax.errorbar(pos[w], v[w], yerr=[v[w] - lo[w], hi[w] - v[w]], fmt="none", ecolor=color, capsize=3, lw=1)
            for px, val in zip(pos[ok], v[ok]):
                ax.annotate(f"{val:+.3f}" if key == "diff" else f"{val:.3f}", (px, val), xytext=(4, 4),
                            textcoords="offset points", fontsize=6.5, color=color)
        ax.set_xticks(x, ["base (0)" if k == 0 else f"round {k}" for k in rounds])
    for i, (name, v) in enumerate(reference.items()):
        if _finite(v):
            left.axhline(float(v), color=_BASELINE_COLORS[i % len(_BASELINE_COLORS)], ls="--", lw=1,
                         label=f"{name} ({float(v):.3f})")
    right.axhline(0.0, color="#999999", ls="--", lw=1)
    left.set(ylabel="AUC (95 % bootstrap CI)", title="AUC per round")
    right.set(ylabel="AUC minus the ID model (paired 95 % CI)", title="Gain over the ID model per round")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
