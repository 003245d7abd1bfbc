"""Request and response models of the service (pydantic, strict: "5" is not an int, unknown keys are errors).

Item and user ids are the dataset's own string ids (ML-1M via RecBole: "1m_42", "Toy Story (1995)").
A request names a known user (`user_id`) or brings a cold-start `history` of (item id, rating), never both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_ID_CHARS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HistoryEntry(_Strict):
    item_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    rating: float = Field(description="The user's rating; a click (liked) when >= the click threshold.")


class _UserRef(_Strict):
    user_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS,
                                description="A known user: the history is their most recent ratings.")
    history: list[HistoryEntry] | None = Field(
        default=None, description="Cold-start user: rated items, oldest first (the most recent K are used).")

    @model_validator(mode="after")
    def _one_user(self):
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of `user_id` (a known user) or `history` (a cold-start user)")
        return self


class PredictRequest(_UserRef):
    candidates: list[str] = Field(description="Candidate item ids to rank (no duplicates).")
    explain: bool = Field(default=False, description="Also return a one-sentence explanation per candidate.")


class ExplainRequest(_UserRef):
    item_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)


class ScoredItem(BaseModel):
    item_id: str
    title: str
    rank: int
    p_click: float = Field(description="Click probability: ExpCTR-Aug's when explained (the ID model's where "
                           "reading the explanation moved ExpCTR-Aug across the decision threshold; see "
                           "p_source), else the ID model's.")
    p_source: Literal["expctr_aug", "id_model"] = Field(description="The model p_click comes from.")
    explanation: str | None = None
    stance: Literal["enjoy", "not_enjoy"] | None = Field(
        default=None, description="The verdict the explanation states: 'enjoy' exactly when p_click >= "
        "decision_threshold.")
    stance_source: Literal["score"] | None = Field(
        default=None, description="'score': the verdict was chosen from the ID model's probability before the "
        "explainer wrote the reason (the explainer's own verdict is not used).")
    faithful: bool | None = Field(default=None, description="False: names or quotes a title that is neither "
                                  "in the user's history nor the target (also invented titles), even after one "
                                  "regeneration.")
    grounded: bool | None = Field(default=None, description="False: the reason names no history item and no "
                                  "genre the target shares with the history, even after one regeneration.")
    complete: bool | None = Field(default=None, description="False: not exactly one complete sentence (e.g. cut "
                                  "at the token cap), even after one regeneration.")
    regenerated: bool = Field(default=False, description="The first text failed a check and was written again.")
    anchor: str | None = Field(default=None, description="The history title the service opened the reason with "
                               "(on the verdict's side, sharing most genres with the item; the explainer wrote the rest); "
                               "null when the explainer chose the whole reason.")
    cached: bool = False


class Versions(BaseModel):
    model: str
    ctr_model: str
    explainer_adapter: str
    base_llm: str
    git_commit: str


class PredictResponse(BaseModel):
    user: str
    scorer: Literal["expctr_aug", "id_model"]
    decision_threshold: float = Field(description="p_click at or above it: the user will probably enjoy the item.")
    items: list[ScoredItem]
    versions: Versions


class ExplainResponse(BaseModel):
    user: str
    decision_threshold: float
    item: ScoredItem
    versions: Versions


__all__ = ["ExplainRequest", "ExplainResponse", "HistoryEntry", "PredictRequest", "PredictResponse",
           "ScoredItem", "Versions"]
