"""ExpCTR model-pair service: a thin BentoML layer over `expctr.serving` (all logic lives there).

Routes: POST /predict (rank candidates, optionally explained), POST /explain (one pair), BentoML's own
GET /livez, /readyz (ready once the explainer is loaded), /healthz, /metrics and the OpenAPI docs at /docs.
ID scoring of concurrent /predict calls is merged into one forward pass by BentoML's adaptive batcher (its
CORK dispatcher, run in-process: routing it through a batchable API costs an HTTP hop to the service itself,
which measured p50 51 ms and 9% connection-reset 500s at 230 requests/s on 2 cores); a call that arrives while
no other is being scored is scored straight away. Malformed requests never
reach the endpoints: `expctr.serving.guard.RequestGuard` (an ASGI middleware) answers them with a typed 4xx
body {"error": {"code", "message", "field"}}; domain errors (unknown ids, limits, duplicates) get the same body
from the endpoints, and BentoML's own error answers (404, 405, not ready, 500) are rewritten into it by the
guard. The endpoints return the response model's JSON as a ready `Response`. Explained requests share the
explainer through `ModelPair.batcher`: identical explanations in flight are coalesced, concurrent cold ones
batched together; its counts are the `expctr_explainer` gauge on /metrics.

The packaged model is the one the Bento was built with (its tag in `pinned_model.txt`, written by
bento/package.py), so serving an older Bento from a store that holds newer models still serves its own pair;
EXPCTR_MODEL_TAG overrides it, and a service run from this directory (no pin) takes `expctr_pair:latest`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import anyio
import bentoml
import numpy as np
import prometheus_client  # at service import, as bentoml.metrics did: after BentoML set PROMETHEUS_MULTIPROC_DIR
from bentoml.models import BentoModel
from pydantic import BaseModel
from starlette.responses import Response

from expctr.config import ServingParams
from expctr.serving.bundle import PINNED_MODEL
from expctr.serving.errors import RequestError
from expctr.serving.guard import RequestGuard, json_payload
from expctr.serving.id_scoring import concat_rows, scoring_thread
from expctr.serving.predictor import ModelPair
from expctr.serving.requests import validate
from expctr.serving.schemas import (
    ExplainRequest,
    ExplainResponse,
    HistoryEntry,
    PredictRequest,
    PredictResponse,
)

PIN = Path(__file__).with_name(PINNED_MODEL)
MODEL_TAG = os.environ.get("EXPCTR_MODEL_TAG") or (PIN.read_text().strip() if PIN.exists() else "expctr_pair:latest")
ROUTES = {"/predict": PredictRequest, "/explain": ExplainRequest}


def _limits() -> ServingParams:
    """Serving limits recorded in the packaged model's manifest (defaults if it cannot be read)."""
    try:
        manifest = json.loads((Path(bentoml.models.get(MODEL_TAG).path) / "manifest.json").read_text())
        return ServingParams.model_validate(manifest.get("serving", {}))
    except Exception:  # noqa: BLE001 - the service itself reports a missing model; the guard keeps defaults
        return ServingParams()


LIMITS = _limits()


BATCH_ROWS = prometheus_client.Histogram("expctr_ctr_batch_rows", "Rows per CTR forward pass",
                                        buckets=(1, 10, 50, 100, 200, 400, 800, 1600, 3200, 6400))
BATCH_REQUESTS = prometheus_client.Histogram("expctr_ctr_batch_requests",
                                            "Requests merged into one CTR forward pass",
                                            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))


EXPLAINER = prometheus_client.Gauge("expctr_explainer", labelnames=["count"],
                                   documentation="Explanations since start by how they were obtained (cache, "
                                   "coalesced with an identical one in flight, generated), generation batches, "
                                   "largest batch (rows)")


def _export(pair: ModelPair) -> None:
    for name, value in pair.batcher.stats().items():
        EXPLAINER.labels(count=name).set(value)


def _json(model: BaseModel) -> Response:
    """The body written by the response model's own (compiled) serializer. Why a ready Response: for a
    returned dict BentoML validates it again, dumps it twice and builds a JSON schema per response, about a
    quarter of a CTR-only request's time (README "Serving the model pair"). The endpoints' return annotations
    still document the bodies in the OpenAPI spec."""
    return Response(model.model_dump_json(), media_type="application/json")


def _error(exc: RequestError) -> Response:
    return Response(json_payload(exc.body()), status_code=exc.status, media_type="application/json")


# OpenTelemetry's ASGI middleware opens a server span and one per receive and send for every request, even when
# nothing is sampled (BentoML's tracing.sample_rate defaults to 0): 1.3-1.6 ms of a CTR-only /predict on the
# 2-core machine. The JSON routes are left out of it unless EXPCTR_TRACE_ROUTES=1 (a deployment exporting traces).
TRACED = os.environ.get("EXPCTR_TRACE_ROUTES") == "1"


@bentoml.service(name="expctr", workers=1, resources={"cpu": "2"},
                 traffic={"timeout": 300, "max_concurrency": 64},
                 **({} if TRACED else {"tracing": {"excluded_urls": "/predict,/explain"}}))
class ExpCTR:
    pair_model = BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        print(f"expctr: serving model {self.pair_model.tag}", flush=True)  # which pair, in the server log
        self.pair = ModelPair(self.pair_model.path, limits=LIMITS)
        self._batched = None
        self._scoring = 0  # CTR requests being scored now (event-loop only, so a plain int)
        self._with_explainer = os.environ.get("EXPCTR_LOAD_EXPLAINER", "1") != "0"
        if self._with_explainer:
            self.pair.load_explainer()
        self._scorer = scoring_thread()  # ID forward passes, off the event loop, one torch thread

    async def _score_rows(self, rows) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._scorer, self.pair.score_id, rows)

    def __is_ready__(self) -> bool:
        return self.pair.explainer_loaded or not self._with_explainer

    async def _score_batch(self, parts: tuple) -> list[np.ndarray]:
        """One forward pass over every request the dispatcher released together (each part: one request's
        feature rows, `Prepared.features`)."""
        sizes = [len(p) for p in parts]
        probs = await self._score_rows(concat_rows(parts))
        BATCH_ROWS.observe(len(probs))
        BATCH_REQUESTS.observe(len(parts))
        return list(np.split(probs, np.cumsum(sizes)[:-1]))

    async def _score(self, features) -> np.ndarray:
        """A lone request skips the batcher (nothing to merge with, and its 1 ms ticks and wake-ups cost more
        than the forward pass); a request arriving while another is scored waits in it to be merged."""
        lone = self._scoring == 0
        self._scoring += 1
        try:
            probs = (await self._score_batch((features,)))[0] if lone else await self._score_merged(features)
        finally:
            self._scoring -= 1
        return np.asarray(probs, dtype=np.float64)

    async def _score_merged(self, features) -> np.ndarray:
        if self._batched is None:
            from bentoml._internal.marshal.dispatcher import CorkDispatcher  # BentoML's adaptive batcher

            self._batched = CorkDispatcher(LIMITS.max_latency_ms, LIMITS.max_batch_size, fallback=lambda: None,
                                           get_batch_size=len, batch_dim=(0, 0))(self._score_batch)
        probs = await self._batched(features)
        if probs is None or isinstance(probs, Exception):  # shed by the batcher: score alone rather than fail
            probs = await self._score_rows(features)
        return np.asarray(probs, dtype=np.float64)

    @bentoml.api(route="/predict")
    async def predict(self, candidates: list[str], user_id: str | None = None,
                      history: list[HistoryEntry] | None = None, explain: bool = False) -> PredictResponse:
        """Rank candidate items for a known user (`user_id`) or a cold-start `history`; `explain` adds one
        checked sentence per candidate whose verdict follows p_click (>= decision_threshold: "will probably
        enjoy"); p_click is then ExpCTR-Aug's unless p_source says the ID model's."""
        try:
            req = validate(PredictRequest, {"candidates": candidates, "user_id": user_id, "explain": explain,
                                            "history": None if history is None else [h.model_dump() for h in history]})
            if req.explain:
                resp = await anyio.to_thread.run_sync(self.pair.predict, req)
                _export(self.pair)
            else:
                prepared = self.pair.prepare(req)
                resp = self.pair.respond(prepared, await self._score(prepared.features))
        except RequestError as exc:
            return _error(exc)
        return _json(resp)

    @bentoml.api(route="/explain")
    async def explain(self, item_id: str, user_id: str | None = None, history: list[HistoryEntry] | None = None
                      ) -> ExplainResponse:
        """One checked explanation and its click probability for (user or cold-start history, item)."""
        try:
            req = validate(ExplainRequest, {"item_id": item_id, "user_id": user_id,
                                            "history": None if history is None else [h.model_dump() for h in history]})
            resp = await anyio.to_thread.run_sync(self.pair.explain, req)
            _export(self.pair)
        except RequestError as exc:
            return _error(exc)
        return _json(resp)


ExpCTR.add_asgi_middleware(RequestGuard, routes=ROUTES, max_body_bytes=LIMITS.max_body_bytes)
