"""Response bodies: candidates ranked by the probability they are returned with, plus versions.

Items are plain dicts validated once with the whole response (one pydantic call, not one per item: for 100
candidates about half the time), and the service writes the body with the model's own JSON serializer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from expctr.serving.catalogue import Catalogue
from expctr.serving.explaining import Explained
from expctr.serving.schemas import ExplainResponse, PredictResponse, Versions
from expctr.serving.verdict import DECISION_THRESHOLD


def versions(manifest: dict[str, Any]) -> Versions:
    v = manifest["versions"]
    return Versions(model=v["model"], ctr_model=v["ctr_model"], explainer_adapter=v["explainer_adapter"],
                    base_llm=v["base_llm"], git_commit=manifest.get("git_commit", "unknown"))


def _explained_fields(e: Explained) -> dict[str, Any]:
    return {"explanation": e.text, "stance": "enjoy" if e.positive else "not_enjoy", "stance_source": "score",
            "faithful": e.faithful, "grounded": e.grounded, "complete": e.complete, "regenerated": e.regenerated,
            "cached": e.cached, "anchor": e.anchor}


def ranked(catalogue: Catalogue, rows: Sequence[int], probs: np.ndarray, sources: Sequence[str],
           explained: Sequence[Explained] | None = None) -> list[dict[str, Any]]:
    """The candidates (ScoredItem fields) by descending probability, request order on a tie, ranks from 1."""
    p = np.asarray(probs, dtype=np.float64).tolist()
    order = sorted(range(len(rows)), key=lambda j: (-p[j], j))
    out = []
    for rank, j in enumerate(order, 1):
        row = rows[j]
        item = {"item_id": catalogue.ids[row], "title": catalogue.items[row].title, "rank": rank,
                "p_click": p[j], "p_source": sources[j]}
        if explained is not None:
            item.update(_explained_fields(explained[j]))
        out.append(item)
    return out


def predict_response(user: str, items: list[dict[str, Any]], versions: Versions, explained: bool
                     ) -> PredictResponse:
    return PredictResponse.model_validate({"user": user, "scorer": "expctr_aug" if explained else "id_model",
                                           "decision_threshold": DECISION_THRESHOLD, "items": items,
                                           "versions": versions})


def explain_response(user: str, item: dict[str, Any], versions: Versions) -> ExplainResponse:
    return ExplainResponse.model_validate({"user": user, "decision_threshold": DECISION_THRESHOLD, "item": item,
                                           "versions": versions})


__all__ = ["explain_response", "predict_response", "ranked", "versions"]
