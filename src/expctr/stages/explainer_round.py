"""explainer_round stage: one ExpCTR round, or round 0 = the base explainer evaluated (see expctr.explainer.rounds)."""

from __future__ import annotations

from expctr.config import Params
from expctr.errors import ExpCTRError
from expctr.explainer.rounds import run_round
from expctr.paths import ProjectPaths


def run(params: Params, paths: ProjectPaths, round: int = 1) -> dict:
    if not 0 <= round <= params.rounds:
        raise ExpCTRError(f"round {round} is outside 0..{params.rounds} (params.yaml rounds; 0 = the base explainer)")
    return run_round(params, paths, round)
