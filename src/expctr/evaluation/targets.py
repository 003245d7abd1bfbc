"""The evaluation targets, each with its measured value, its reference and met / missed / n/a.

"must" targets are what the project claims; "goal" targets are what it aims at. A target whose inputs are
missing (no interval, a single round) is n/a (met = None), never met by default.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

AUG_GAIN_MUST, AUG_GAIN_GOAL = 0.005, 0.02  # ExpCTR-Aug - ID model AUC
LLM_AUC_MUST = 0.74
GROUNDED_MIN, OUTSIDE_TITLES_MAX = 0.95, 0.02
WALL_MINUTES_MUST, WALL_MINUTES_GOAL = 45.0, 25.0


def _ok(*vals: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)


def _ge(a, b, strict: bool = False) -> bool | None:
    if not _ok(a, b):
        return None
    return bool(a > b) if strict else bool(a >= b)


def _rising(vals: list) -> bool | None:
    if len(vals) < 2 or not _ok(*vals):
        return None
    return all(b > a for a, b in itertools.pairwise(vals))


def _all(flags: list[bool | None]) -> bool | None:
    """False if any is False, else None if any is unknown, else True."""
    return False if False in flags else None if None in flags or not flags else True


def _target(text: str, level: str, value: Any, met: bool | None, reference: Any = None) -> dict[str, Any]:
    return {"target": text, "level": level, "value": value, "reference": reference, "met": met}


def _interval(d: dict) -> list:
    return [d.get("ci_low"), d.get("ci_high")]


def evaluation_targets(final: dict[str, dict], shared: dict[str, dict], round_rows: list[dict],
                       ablation: dict[str, Any], seconds: dict[str, float | None]) -> list[dict]:
    """`final` / `shared`: predictor rows by key on the final and the shared pairs; `round_rows` (0..K) on each
    round's own pairs; `ablation`: the final round's Aug ablation; `seconds`: each stage's wall seconds."""
    k = round_rows[-1]["round"]
    gain = ((ablation.get("variants") or {}).get("explanation") or {}).get("minus_id") or {}
    ab = ablation.get("explanation_minus_facts") or {}
    llm, idm, zs = final.get(f"expctr_llm_round_{k}", {}), final.get("id_only", {}), final.get("zero_shot_judge", {})
    by_round = {name: {r["round"]: shared[f"{key}_round_{r['round']}"]["auc"] for r in round_rows
                       if f"{key}_round_{r['round']}" in shared}
                for name, key in (("ExpCTR-LLM", "expctr_llm"), ("ExpCTR-Aug", "expctr_aug"))}
    series = {name: list(v.values()) for name, v in by_round.items()}  # LLM from round 0, Aug from round 1
    first_last = {name: [v.get(1), v.get(k)] for name, v in by_round.items()}
    last = round_rows[-1]
    total = sum(v for v in seconds.values() if v)
    minutes = round(total / 60, 1) if total else None
    return [
        _target(f"ExpCTR-Aug − ID AUC ≥ +{AUG_GAIN_MUST} with its 95 % CI above 0", "must", gain.get("diff"),
                _all([_ge(gain.get("diff"), AUG_GAIN_MUST), _ge(gain.get("ci_low"), 0.0, strict=True)]),
                _interval(gain)),
        _target(f"ExpCTR-Aug − ID AUC ≥ +{AUG_GAIN_GOAL}", "goal", gain.get("diff"),
                _ge(gain.get("diff"), AUG_GAIN_GOAL), _interval(gain)),
        _target("(a) explanation − (b) facts only: reported with its 95 % CI", "must", ab.get("diff"),
                _ok(ab.get("diff"), ab.get("ci_low"), ab.get("ci_high")), _interval(ab)),
        _target("(a) explanation − (b) facts only > 0 with its CI above 0", "goal", ab.get("diff"),
                _all([_ge(ab.get("diff"), 0.0, strict=True), _ge(ab.get("ci_low"), 0.0, strict=True)]),
                _interval(ab)),
        _target(f"ExpCTR-LLM AUC ≥ {LLM_AUC_MUST} (final pairs)", "must", llm.get("auc"),
                _ge(llm.get("auc"), LLM_AUC_MUST), [llm.get("auc_ci_low"), llm.get("auc_ci_high")]),
        _target("ExpCTR-LLM AUC ≥ the ID model's on the same pairs", "goal", llm.get("auc"),
                _ge(llm.get("auc"), idm.get("auc")), idm.get("auc")),
        _target(f"round {k} ≥ round 1 on the shared pairs, ExpCTR-LLM and ExpCTR-Aug", "must", first_last,
                _all([_ge(b, a) for a, b in first_last.values()]) if k >= 2 else None),
        _target("rising every round on the shared pairs (ExpCTR-LLM from round 0, ExpCTR-Aug from round 1)", "goal",
                series, _all([_rising(v) for v in series.values() if len(v) >= 2]) if k >= 1 else None),
        _target(f"grounded ≥ {GROUNDED_MIN:.0%} (round {k})", "must", last.get("grounded"),
                _ge(last.get("grounded"), GROUNDED_MIN)),
        _target(f"quoted titles outside history / target ≤ {OUTSIDE_TITLES_MAX:.0%} (round {k})", "must",
                last.get("outside_title_share"), _ge(OUTSIDE_TITLES_MAX, last.get("outside_title_share"))),
        _target("ExpCTR-LLM above the zero-shot judge (final pairs)", "must", llm.get("auc"),
                _ge(llm.get("auc"), zs.get("auc"), strict=True), zs.get("auc")),
        _target(f"whole pipeline ≤ {WALL_MINUTES_MUST:.0f} min on 2 cores (stages' own wall times)", "must", minutes,
                _ge(WALL_MINUTES_MUST, minutes)),
        _target(f"whole pipeline ≤ {WALL_MINUTES_GOAL:.0f} min on 2 cores", "goal", minutes,
                _ge(WALL_MINUTES_GOAL, minutes)),
    ]


__all__ = ["evaluation_targets"]
