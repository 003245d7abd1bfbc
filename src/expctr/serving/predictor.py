"""The model pair behind the service: rank candidates with the ID model / ExpCTR-Aug, explain them.

Request flow, one module per job:

- `lookup`: request ids -> the user's context and catalogue rows, or a typed 4xx;
- `features`: one ID feature row per candidate (`CTRData`, so a batcher can concatenate requests);
- `id_scoring`: the ID model's probability, which also picks each explained candidate's verdict
  (`verdict.DECISION_THRESHOLD`);
- `explaining`: one checked sentence per candidate, opened with that verdict worded by that probability
  (cached, coalesced, batched);
- `aug_scoring`: ExpCTR-Aug reading the explanations, and which probability each one is returned with;
- `responses`: the ranked response bodies.

Loading (`catalogue`, the models, the explainer on first use) happens once, in `ModelPair.__init__`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expctr.config import ServingParams
from expctr.ctr.batch import CTRData
from expctr.ctr.text_augmented import load_text_ctr
from expctr.data.features import FeatureMap
from expctr.llm.base_model import set_threads
from expctr.serving.aug_scoring import explained_scores
from expctr.serving.bundle import read_manifest
from expctr.serving.catalogue import Catalogue, load_users
from expctr.serving.explaining import Explained, Explainer, cpu_has_native_bf16, explainer_dtype
from expctr.serving.features import id_rows
from expctr.serving.id_scoring import id_probability
from expctr.serving.lookup import COLD_START, Lookup, UserContext
from expctr.serving.responses import explain_response, predict_response, ranked, versions
from expctr.serving.schemas import ExplainRequest, ExplainResponse, PredictRequest, PredictResponse
from expctr.serving.verdict import DECISION_THRESHOLD


@dataclass(frozen=True)
class Prepared:
    """A validated request: who asks, the candidates' catalogue rows and their ID feature rows."""

    user: UserContext
    rows: list[int]
    features: CTRData


class ModelPair:
    """Everything a request needs, loaded once from a bundle directory (see expctr.serving.bundle)."""

    def __init__(self, bundle_dir: str | Path, limits: ServingParams | None = None, threads: int | None = None,
                 device: str = "cpu"):
        self.dir = Path(bundle_dir)
        self.manifest = read_manifest(self.dir)
        self.limits = limits or ServingParams.model_validate(self.manifest.get("serving", {}))
        self.device = device
        set_threads(threads or self.limits.threads)
        fmap = FeatureMap.load(self.dir / "ctr" / "feature_map.json")
        self.k = fmap.history_len
        self.aug = load_text_ctr(self.dir / "ctr" / "text_ctr.pt", fmap, device=device)
        self.catalogue = Catalogue.load(self.dir / "catalogue.parquet", fmap.max_genres)
        self.users = load_users(self.dir / "users.parquet")
        self.lookup = Lookup(self.catalogue, self.users, float(self.manifest["click_threshold"]),
                             tuple(self.manifest.get("rating_range", (-math.inf, math.inf))), self.k,
                             self.limits.max_history)
        self.explainer = Explainer(self.dir, self.manifest, self.limits, self.catalogue, device,
                                   embeds=any(name == "text" for name, _ in self.aug.blocks))
        self.versions = versions(self.manifest)
        self.prefix = self.manifest["explanation_prefix"]

    @property
    def item_ids(self) -> list[str]:
        return self.catalogue.ids

    @property
    def items(self):
        return self.catalogue.items

    @property
    def batcher(self):
        return self.explainer.batcher

    @property
    def cache(self):
        return self.explainer.cache

    def load_explainer(self) -> None:
        self.explainer.load()

    @property
    def explainer_loaded(self) -> bool:
        return self.explainer.loaded

    def resolve_user(self, req: PredictRequest | ExplainRequest) -> UserContext:
        return self.lookup.user(req)

    def explanations(self, user: UserContext, rows: list[int], probs) -> list[Explained]:
        """One sentence per row, opened with the verdict its score chooses and words."""
        return self.explainer.explanations(user, rows, [float(p) for p in probs])

    def score_id(self, features: CTRData) -> np.ndarray:
        """P(click) of the ID model for feature rows (one request's, or several concatenated); float64 (n,)."""
        return id_probability(self.aug.base, features, self.device)

    # ------------------------------------------------------------------ endpoints
    def prepare(self, req: PredictRequest) -> Prepared:
        """Validate ids and limits (typed 4xx errors) and build one feature row per candidate."""
        user = self.lookup.user(req)
        if req.explain:
            rows = self.lookup.candidates(req.candidates, "candidates", self.limits.max_explain_candidates,
                                          why="with explain=true ")
        else:
            rows = self.lookup.candidates(req.candidates, "candidates", self.limits.max_candidates)
        return Prepared(user, rows, id_rows(self.catalogue, user, rows, self.k))

    def respond(self, prepared: Prepared, probs: np.ndarray, expl: list[Explained] | None = None,
                sources: list[str] | None = None) -> PredictResponse:
        items = ranked(self.catalogue, prepared.rows, probs, sources or ["id_model"] * len(prepared.rows), expl)
        return predict_response(prepared.user.name, items, self.versions, explained=expl is not None)

    def predict(self, req: PredictRequest) -> PredictResponse:
        """Rank the candidates (explained: ExpCTR-Aug with the explanations; else the ID model)."""
        prepared = self.prepare(req)
        p_id = self.score_id(prepared.features)
        if not req.explain:
            return self.respond(prepared, p_id)
        expl = self.explanations(prepared.user, prepared.rows, p_id)
        probs, sources = explained_scores(self.aug, prepared.features, p_id, expl, self.device)
        return self.respond(prepared, probs, expl, sources)

    def explain(self, req: ExplainRequest) -> ExplainResponse:
        user = self.lookup.user(req)
        rows = [self.lookup.item(req.item_id, "item_id")]
        features = id_rows(self.catalogue, user, rows, self.k)
        p_id = self.score_id(features)
        expl = self.explanations(user, rows, p_id)
        probs, sources = explained_scores(self.aug, features, p_id, expl, self.device)
        return explain_response(user.name, ranked(self.catalogue, rows, probs, sources, expl)[0], self.versions)


__all__ = ["COLD_START", "DECISION_THRESHOLD", "Explained", "ModelPair", "Prepared", "UserContext",
           "cpu_has_native_bf16", "explainer_dtype"]
