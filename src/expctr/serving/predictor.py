"""The model pair behind the service: rank candidates with ExpCTR-Aug / the ID model, explain them.

Request flow: `resolve_user` and `candidate_rows` turn ids into rows (or raise a typed 4xx),
`pack` builds one int64 feature row per candidate (so a batcher can concatenate requests), `score_id`
scores packed rows with the ID model, and `explanations` writes one sentence per candidate.

Explanations agree with the score they are returned with. The ID model's probability decides the verdict
(p >= DECISION_THRESHOLD: "will probably enjoy") and the explainer's assistant turn is opened with it
(`expctr.serving.prompt.served_opening`: by default also the target's title and a history item on the
verdict's side as the reason's anchor), so the explainer writes only the reason. ExpCTR-Aug then reads the
explanation; its
probability is returned when it stays on the same side of the threshold, otherwise the ID model's (which chose
the verdict) is returned and `p_source` says so: a text-dependent score never overrides the verdict it was
computed from, and no explanation is generated twice to chase it.

The prompt is the one the explainer was trained on (`expctr.serving.prompt.served_prompt`): the same fitted
history, and a target carrying the statistics training prompts state about it (viewers and smoothed share of
likes over the training ratings, computed when the bundle is packaged).

Each explanation is checked (`expctr.serving.checks`: one complete sentence, only the pair's titles, a
grounded reason); one that fails is written again once (sampled; twice the token cap if it was cut) and the
better try is returned with its flags. Explanations are cached, identical ones in flight are coalesced and concurrent
cold requests share generation batches (`expctr.serving.batcher`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from expctr.config import LLMParams, ServingParams
from expctr.ctr.text_augmented import load_text_ctr
from expctr.data.features import HIST_CLICK_NO, HIST_CLICK_YES, OOV, PAD, SCALAR_FIELDS, FeatureMap
from expctr.evaluation.faithfulness import TitleIndex
from expctr.explainer.rl import load_explainer
from expctr.llm.base_model import set_threads
from expctr.llm.prompts import Item, verdict_prefix
from expctr.serving.batcher import ExplanationBatcher, Job
from expctr.serving.bundle import read_manifest
from expctr.serving.cache import ExplanationCache, explanation_key
from expctr.serving.checks import ExplanationChecks, check_explanation, finished_text
from expctr.serving.errors import DuplicateIds, InvalidRequest, LimitExceeded, UnknownId
from expctr.serving.prefix_generation import generate_shared_prefix
from expctr.serving.prompt import served_prompt
from expctr.serving.schemas import (
    ExplainRequest,
    ExplainResponse,
    PredictRequest,
    PredictResponse,
    ScoredItem,
    Versions,
)

COLD_START = "cold-start"
# p_click at or above it: "the user will probably enjoy" (more likely than not to click: the probabilities are
# calibrated by log-loss training, and "probably" means > 50 %).
DECISION_THRESHOLD = 0.5
RETRY_TEMPERATURE = 0.8


@dataclass(frozen=True)
class UserContext:
    """Who is asking: ID feature indices and (item row, liked) history, most recent last, at most K."""

    name: str
    user_idx: int
    gender_idx: int
    age_idx: int
    occupation_idx: int
    history: tuple[tuple[int, bool], ...]


@dataclass(frozen=True)
class Prepared:
    user: UserContext
    rows: list[int]
    packed: np.ndarray


@dataclass(frozen=True)
class Explained:
    text: str
    positive: bool  # the verdict it opens with ("will probably enjoy")
    faithful: bool
    grounded: bool
    complete: bool
    regenerated: bool
    anchor: str | None  # the history title the served opening named (None: the explainer chose the reason)
    embedding: np.ndarray  # all-MiniLM-L6-v2 embedding of `text` (what ExpCTR-Aug reads)
    cached: bool = False


@dataclass(frozen=True)
class _Request:
    """What one explanation job needs: the user's (item row, liked) history, the target row, the verdict."""

    history: tuple[tuple[int, bool], ...]
    row: int
    positive: bool
    seed: int


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN then runs bfloat16 matmuls natively (elsewhere they are emulated, slower)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(probe()) for probe in probes if probe is not None)


def explainer_dtype(setting: str, device: str, packaged: str) -> str:
    """The dtype the explainer is served in: the setting, or for `auto` the packaged one off the CPU and on a
    CPU bfloat16 where it is native (bench/opening_bench.py: prefill and decoding 1.6-2x faster;
    the trust bench's checks hold), else float32."""
    if setting != "auto":
        return setting
    if device != "cpu":
        return packaged
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def _duplicates(values: list[str]) -> list[str]:
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    return dup


class ModelPair:
    """Everything a request needs, loaded once from a bundle directory (see expctr.serving.bundle)."""

    def __init__(self, bundle_dir: str | Path, limits: ServingParams | None = None, threads: int | None = None,
                 device: str = "cpu"):
        self.dir = Path(bundle_dir)
        self.manifest = read_manifest(self.dir)
        self.limits = limits or ServingParams.model_validate(self.manifest.get("serving", {}))
        self.device = device
        set_threads(threads or self.limits.threads)
        self.fmap = FeatureMap.load(self.dir / "ctr" / "feature_map.json")
        self.k, self.g = self.fmap.history_len, self.fmap.max_genres
        self.aug = load_text_ctr(self.dir / "ctr" / "text_ctr.pt", self.fmap, device=device)
        cat = pl.read_parquet(self.dir / "catalogue.parquet")
        self.item_ids: list[str] = cat["item_id"].to_list()
        self.item_row = {item: i for i, item in enumerate(self.item_ids)}
        # targets carry the training statistics the explainer's prompt states (see expctr.serving.bundle)
        self.items = [Item(title=t, year=y, genres=tuple(g or ()), viewers=v, liked_share=s) for t, y, g, v, s in
                      zip(cat["title"].to_list(), cat["year"].to_list(), cat["genres"].to_list(),
                          cat["viewers"].to_list(), cat["liked_share"].to_list())]
        self.item_idx = cat["item_idx"].to_numpy().astype(np.int64)
        self.decade_idx = cat["decade_idx"].to_numpy().astype(np.int64)
        self.genre_idx = np.array(cat["genre_idx"].to_list(), dtype=np.int64).reshape(len(cat), self.g)
        users = pl.read_parquet(self.dir / "users.parquet")
        self.users = {r["user_id"]: r for r in users.iter_rows(named=True)}
        self.threshold = float(self.manifest["click_threshold"])
        self.rating_range = tuple(self.manifest.get("rating_range", (-math.inf, math.inf)))
        self.title_index = TitleIndex.from_catalogue(cat["title"].to_list(), cat["year"].to_list())
        self.cache = ExplanationCache(self.limits.explanation_cache_size)
        self.prefix = self.manifest["explanation_prefix"]
        self.batcher = ExplanationBatcher(self._explain_batch, self.cache, max_rows=self.limits.gen_batch_size)
        self._version = "/".join(str(v) for v in (self.manifest["versions"]["explainer_adapter"],
                                                  self.manifest["max_prompt_tokens"], self.limits.max_new_tokens))
        self._load_lock = threading.Lock()
        self._explainer: tuple[Any, Any] | None = None
        self._encoder = None

    # ------------------------------------------------------------------ metadata
    def versions(self) -> Versions:
        v = self.manifest["versions"]
        return Versions(model=v["model"], ctr_model=v["ctr_model"], explainer_adapter=v["explainer_adapter"],
                        base_llm=v["base_llm"], git_commit=self.manifest.get("git_commit", "unknown"))

    def load_explainer(self) -> None:
        """Load the explainer (base + merged adapter) and the sentence encoder; idempotent."""
        with self._load_lock:
            if self._explainer is None:
                dtype = explainer_dtype(self.limits.explainer_dtype, self.device, self.manifest["llm"]["dtype"])
                llm = LLMParams(dtype=dtype, device=self.device, threads=self.limits.threads)
                self._explainer = load_explainer(self.dir / "llm" / "base", self.dir / "llm" / "adapter", llm)
            if self._encoder is None:
                from sentence_transformers import SentenceTransformer

                self._encoder = SentenceTransformer(str(self.dir / "encoder"), device=self.device,
                                                    local_files_only=True).eval()

    @property
    def explainer_loaded(self) -> bool:
        return self._explainer is not None and self._encoder is not None

    # ------------------------------------------------------------------ request -> rows
    def resolve_user(self, req: PredictRequest | ExplainRequest) -> UserContext:
        if req.user_id is not None:
            row = self.users.get(req.user_id)
            if row is None:
                raise UnknownId(f"unknown user_id {req.user_id!r} (send a `history` for a cold-start user)",
                                field="user_id")
            hist = [(self.item_row[i], float(r) >= self.threshold)
                    for i, r in zip(row["hist_item_id"], row["hist_rating"]) if i in self.item_row]
            return UserContext(req.user_id, row["user_idx"], row["gender_idx"], row["age_idx"],
                               row["occupation_idx"], tuple(hist[-self.k:]))
        entries = req.history or []
        if len(entries) > self.limits.max_history:
            raise LimitExceeded(f"history has {len(entries)} entries; the limit is {self.limits.max_history}",
                                field="history")
        ids = [e.item_id for e in entries]
        if dup := _duplicates(ids):
            raise DuplicateIds(f"history lists item(s) more than once: {dup[:5]}", field="history")
        lo, hi = self.rating_range
        hist = []
        for n, e in enumerate(entries):
            if not math.isfinite(e.rating) or not lo <= e.rating <= hi:
                raise InvalidRequest(f"history.{n}.rating: {e.rating} is outside the rating range [{lo}, {hi}]",
                                     field=f"history.{n}.rating")
            if e.item_id not in self.item_row:
                raise UnknownId(f"history.{n}.item_id: unknown item id {e.item_id!r}", field=f"history.{n}.item_id")
            hist.append((self.item_row[e.item_id], e.rating >= self.threshold))
        return UserContext(COLD_START, OOV, PAD, PAD, PAD, tuple(hist[-self.k:]))

    def candidate_rows(self, ids: list[str], field: str, limit: int, why: str = "") -> list[int]:
        """Catalogue rows of `ids`; `why` qualifies the limit in the error ("with explain=true ")."""
        if not ids:
            raise InvalidRequest(f"{field} is empty; give at least one item id", field=field)
        if len(ids) > limit:
            note = " (explanations take about a second each)" if why else ""
            raise LimitExceeded(f"{field} has {len(ids)} items; {why}the limit is {limit}{note}", field=field)
        if dup := _duplicates(ids):
            raise DuplicateIds(f"{field} lists item(s) more than once: {dup[:5]}", field=field)
        unknown = [(n, i) for n, i in enumerate(ids) if i not in self.item_row]
        if unknown:
            n, i = unknown[0]
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise UnknownId(f"{field}.{n}: unknown item id {i!r}{more}", field=f"{field}.{n}")
        return [self.item_row[i] for i in ids]

    # ------------------------------------------------------------------ scoring
    @property
    def row_width(self) -> int:
        return len(SCALAR_FIELDS) + self.g + 2 * self.k

    def pack(self, user: UserContext, rows: list[int]) -> np.ndarray:
        """(n, 6 + G + 2K) int64: scalar fields, genres, history items, history clicks (one row per item)."""
        n, k = len(rows), self.k
        out = np.zeros((n, self.row_width), dtype=np.int64)
        r = np.asarray(rows, dtype=np.int64)
        out[:, 0], out[:, 1], out[:, 2] = user.user_idx, self.item_idx[r], user.gender_idx
        out[:, 3], out[:, 4], out[:, 5] = user.age_idx, user.occupation_idx, self.decade_idx[r]
        out[:, 6:6 + self.g] = self.genre_idx[r]
        hist = user.history[-k:]
        if hist:
            h_items = np.array([self.item_idx[i] for i, _ in hist], dtype=np.int64)
            h_click = np.array([HIST_CLICK_YES if liked else HIST_CLICK_NO for _, liked in hist], dtype=np.int64)
            out[:, 6 + self.g + k - len(hist):6 + self.g + k] = h_items
            out[:, 6 + self.g + 2 * k - len(hist):] = h_click
        return out

    def unpack(self, packed: np.ndarray) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(np.asarray(packed, dtype=np.int64)).to(self.device)
        g, k = self.g, self.k
        return {"fields": t[:, :6], "genres": t[:, 6:6 + g], "hist_items": t[:, 6 + g:6 + g + k],
                "hist_clicks": t[:, 6 + g + k:6 + g + 2 * k], "labels": torch.zeros(len(t), device=self.device)}

    @torch.no_grad()
    def score_id(self, packed: np.ndarray) -> np.ndarray:
        """P(click) of the ID model (ExpCTR-Aug's base) for packed rows; float64 (n,)."""
        if len(packed) == 0:
            return np.zeros(0)
        return torch.sigmoid(self.aug.id_logit(self.unpack(packed))).double().cpu().numpy()

    def _embed(self, texts: list[str]) -> np.ndarray:
        emb = self._encoder.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True,
                                   show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    @torch.no_grad()
    def score_aug(self, packed: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """P(click) of ExpCTR-Aug given the explanations' sentence embeddings; float64 (n,)."""
        batch = {**self.unpack(packed), "text": torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).to(self.device)}
        return torch.sigmoid(self.aug(batch)).double().cpu().numpy()

    # ------------------------------------------------------------------ explanations
    def _history_items(self, history: tuple[tuple[int, bool], ...]) -> list[Item]:
        out = []
        for row, liked in history:
            it = self.items[row]
            out.append(Item(it.title, it.year, it.genres, liked))
        return out

    def _write(self, prompts: list[list[int]], openings: list[str], groups: list, seeds: list[int], sample: bool,
               caps: list[int] | None = None) -> list[str]:
        """One generation batch (rows of one history share their prefill); each row's shipped text."""
        model, tok = self._explainer
        res = generate_shared_prefix(model, tok, prompts, groups=groups,
                                     max_new_tokens=caps or [self.limits.max_new_tokens] * len(prompts),
                                     do_sample=sample, temperature=RETRY_TEMPERATURE, seeds=seeds)
        return [finished_text(raw, opening, done) for raw, opening, done in zip(res.raw_texts, openings, res.complete)]

    def _explain_batch(self, jobs: list[Job]) -> list[Explained]:
        """Write, check, retry once what fails, embed: one batch of jobs (any users), holding the explainer."""
        reqs: list[_Request] = [j.payload for j in jobs]
        targets = [self.items[r.row] for r in reqs]
        budget = int(self.manifest["max_prompt_tokens"])
        prompts, fitted, openings, anchors = zip(*(
            served_prompt(self._explainer[1], self._history_items(r.history), t, r.positive, budget,
                          self.limits.reason_opening) for r, t in zip(reqs, targets)))
        groups = [r.history for r in reqs]
        texts = self._write(list(prompts), openings, groups, [r.seed for r in reqs], sample=False)
        checks: list[ExplanationChecks] = [check_explanation(t, fitted[j], targets[j], self.title_index)
                                           for j, t in enumerate(texts)]
        bad = [j for j, c in enumerate(checks) if not c.passed]
        if bad:  # sampled; a sentence cut at the token cap gets twice the cap
            caps = [self.limits.max_new_tokens * (1 if checks[j].complete else 2) for j in bad]
            again = self._write([prompts[j] for j in bad], [openings[j] for j in bad], [groups[j] for j in bad],
                                [reqs[j].seed for j in bad], sample=True, caps=caps)
            for j, text in zip(bad, again):
                c = check_explanation(text, fitted[j], targets[j], self.title_index)
                if c.score > checks[j].score:  # the better try; the first one on a tie
                    texts[j], checks[j] = text, c
        emb = self._embed(texts)
        return [Explained(texts[j], reqs[j].positive, c.faithful, c.grounded, c.complete, j in bad,
                          anchors[j].title if anchors[j] is not None else None, emb[j])
                for j, c in enumerate(checks)]

    def explanations(self, user: UserContext, rows: list[int], positives: list[bool]) -> list[Explained]:
        """One checked sentence per candidate row, opened with the given verdict: cached, coalesced with an
        identical one in flight, or generated in a batch shared with concurrent requests.

        The cache key is what determines the prompt (history item ids with liked flags, target id, verdict)
        plus the adapter version and prompt/token budgets, so a hit needs no tokenisation; the value carries
        the sentence embedding too, so an all-cached request costs one small forward pass of ExpCTR-Aug.
        """
        self.load_explainer()
        hist_key = [(self.item_ids[r], liked) for r, liked in user.history]
        jobs = []
        for row, positive in zip(rows, positives, strict=True):
            opening = f"{verdict_prefix(positive)}|{self.limits.reason_opening}"  # fixes the served opening
            key = explanation_key(hist_key, self.item_ids[row], self._version, opening)
            jobs.append(Job(key, _Request(user.history, row, bool(positive), int(key[:8], 16))))
        return [dataclasses.replace(o.value, cached=True) if o.how == "cache" else o.value
                for o in self.batcher.run(jobs)]

    def explained_scores(self, packed: np.ndarray, p_id: np.ndarray, expl: list[Explained]
                         ) -> tuple[np.ndarray, list[str]]:
        """The probability each explanation is returned with: ExpCTR-Aug's when it agrees with the verdict
        (chosen from `p_id`), else the ID model's; and which model each came from."""
        p_aug = self.score_aug(packed, np.stack([e.embedding for e in expl]))
        agree = (p_aug >= DECISION_THRESHOLD) == np.array([e.positive for e in expl])
        return np.where(agree, p_aug, p_id), ["expctr_aug" if a else "id_model" for a in agree]

    # ------------------------------------------------------------------ endpoints
    def prepare(self, req: PredictRequest) -> Prepared:
        """Validate ids and limits (typed 4xx errors) and pack one feature row per candidate."""
        user = self.resolve_user(req)
        if req.explain:
            rows = self.candidate_rows(req.candidates, "candidates", self.limits.max_explain_candidates,
                                       why="with explain=true ")
        else:
            rows = self.candidate_rows(req.candidates, "candidates", self.limits.max_candidates)
        return Prepared(user, rows, self.pack(user, rows))

    def respond(self, prepared: Prepared, probs: np.ndarray, expl: list[Explained] | None = None,
                sources: list[str] | None = None) -> PredictResponse:
        n = len(prepared.rows)
        return PredictResponse(user=prepared.user.name, scorer="expctr_aug" if expl is not None else "id_model",
                               decision_threshold=DECISION_THRESHOLD,
                               items=self._ranked(prepared.rows, np.asarray(probs, dtype=np.float64),
                                                  expl or [None] * n, sources or ["id_model"] * n),
                               versions=self.versions())

    def predict(self, req: PredictRequest) -> PredictResponse:
        """Rank the candidates (explained: ExpCTR-Aug with the explanations; else the ID model)."""
        prepared = self.prepare(req)
        p_id = self.score_id(prepared.packed)
        if not req.explain:
            return self.respond(prepared, p_id)
        expl = self.explanations(prepared.user, prepared.rows, [bool(p >= DECISION_THRESHOLD) for p in p_id])
        probs, sources = self.explained_scores(prepared.packed, p_id, expl)
        return self.respond(prepared, probs, expl, sources)

    def explain(self, req: ExplainRequest) -> ExplainResponse:
        user = self.resolve_user(req)
        rows = self.candidate_rows([req.item_id], "item_id", 1)
        packed = self.pack(user, rows)
        p_id = self.score_id(packed)
        expl = self.explanations(user, rows, [bool(p_id[0] >= DECISION_THRESHOLD)])
        probs, sources = self.explained_scores(packed, p_id, expl)
        return ExplainResponse(user=user.name, decision_threshold=DECISION_THRESHOLD,
                               item=self._ranked(rows, probs, expl, sources)[0], versions=self.versions())

    def _ranked(self, rows: list[int], probs: np.ndarray, expl: list[Explained | None], sources: list[str]
                ) -> list[ScoredItem]:
        order = sorted(range(len(rows)), key=lambda j: (-probs[j], j))
        out = []
        for rank, j in enumerate(order, 1):
            e = expl[j]
            extra = {} if e is None else {
                "explanation": e.text, "stance": "enjoy" if e.positive else "not_enjoy", "stance_source": "score",
                "faithful": e.faithful, "grounded": e.grounded, "complete": e.complete,
                "regenerated": e.regenerated, "cached": e.cached, "anchor": e.anchor}
            out.append(ScoredItem(item_id=self.item_ids[rows[j]], title=self.items[rows[j]].title, rank=rank,
                                  p_click=float(probs[j]), p_source=sources[j], **extra))
        return out


__all__ = ["COLD_START", "DECISION_THRESHOLD", "Explained", "ModelPair", "Prepared", "UserContext",
           "explainer_dtype"]
