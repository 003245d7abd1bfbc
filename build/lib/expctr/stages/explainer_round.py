"""explainer_round stage: one ExpCTR round (see expctr.explainer.rounds)."""

from __future__ import annotations

from expctr.config import Params
from expctr.errors import ExpCTRError
from expctr.explainer.rounds import run_round
from expctr.paths import ProjectPaths


def run(params: Params, paths: ProjectPaths, round: int = 1) -> dict:
    if not 1 <= round <= params.rounds:
        raise ExpCTRError(f"round {round} is outside 1..{params.rounds} (params.yaml rounds)")
    return run_round(params, paths, round)
