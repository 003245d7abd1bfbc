"""The model pair behind the service: rank candidates with ExpCTR-Aug / the ID model, explain them.

Request flow: `resolve_user` and `candidate_rows` turn ids into rows (or raise a typed 4xx),
`pack` builds one int64 feature row per candidate (so a batcher can concatenate requests), `score_id`
scores packed rows with the ID model, and `explanations` writes one sentence per candidate with the
explainer (greedy, batched, cached), re-generating once (sampled) when the faithfulness check finds a
title outside the user's history and the target, and flagging it if the second try fails too. With
explanations, the click probability is ExpCTR-Aug's (ID features + the explanation's embedding).
"""

from __future__ import annotations

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
from expctr.evaluation.faithfulness import TitleIndex, unseen_mentions
from expctr.explainer.rewards import explanation_of
from expctr.explainer.rl import load_explainer
from expctr.llm.base_model import set_threads
from expctr.llm.prompts import Item, explainer_messages, fit_history, rendered_prompt
from expctr.serving.bundle import read_manifest
from expctr.serving.cache import ExplanationCache, explanation_key
from expctr.serving.errors import DuplicateIds, InvalidRequest, LimitExceeded, UnknownId
from expctr.serving.prefix_generation import generate_shared_prefix
from expctr.serving.schemas import (
    ExplainRequest,
    ExplainResponse,
    PredictRequest,
    PredictResponse,
    ScoredItem,
    Versions,
)

COLD_START = "cold-start"


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
    faithful: bool
    regenerated: bool
    embedding: np.ndarray  # all-MiniLM-L6-v2 embedding of `text` (what ExpCTR-Aug reads)
    cached: bool = False


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
        self.items = [Item(title=t, year=y, genres=tuple(g or ())) for t, y, g in
                      zip(cat["title"].to_list(), cat["year"].to_list(), cat["genres"].to_list())]
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
        self._llm_lock = threading.Lock()
        self._explainer: tuple[Any, Any] | None = None
        self._encoder = None

    # ------------------------------------------------------------------ metadata
    def versions(self) -> Versions:
        v = self.manifest["versions"]
        return Versions(model=v["model"], ctr_model=v["ctr_model"], explainer_adapter=v["explainer_adapter"],
                        base_llm=v["base_llm"], git_commit=self.manifest.get("git_commit", "unknown"))

    def load_explainer(self) -> None:
        """Load the explainer (base + merged adapter) and the sentence encoder; idempotent."""
        with self._llm_lock:
            if self._explainer is None:
                llm = LLMParams(dtype=self.manifest["llm"]["dtype"], device=self.device, threads=self.limits.threads)
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
    def _history_items(self, user: UserContext) -> list[Item]:
        out = []
        for row, liked in user.history:
            it = self.items[row]
            out.append(Item(it.title, it.year, it.genres, liked))
        return out

    def _prompt(self, history: list[Item], target: Item) -> tuple[str, list[Item]]:
        def build(h, t):
            return explainer_messages(h, t) + [{"role": "assistant", "content": self.prefix}]

        tok = self._explainer[1]
        fitted = fit_history(tok, history, target, int(self.manifest["max_prompt_tokens"]), build=build)
        return rendered_prompt(tok, build(fitted, target)), fitted

    def _generate(self, prompts: list[str], sample: bool, seed: int) -> list[str]:
        """One batch per call: one user's prompts share system text + history, prefilled once."""
        model, tok = self._explainer
        out: list[str] = []
        for b in range(0, len(prompts), self.limits.gen_batch_size):
            res = generate_shared_prefix(model, tok, prompts[b:b + self.limits.gen_batch_size],
                                         max_new_tokens=self.limits.max_new_tokens, do_sample=sample,
                                         temperature=0.8, seed=seed)
            out += [explanation_of(raw, self.prefix) for raw in res.raw_texts]
        return out

    def _unfaithful(self, text: str, history: list[Item], target: Item) -> bool:
        hist = [{"title": h.title, "year": h.year} for h in history]
        return bool(unseen_mentions(self.title_index, text, hist, {"title": target.title, "year": target.year}))

    def explanations(self, user: UserContext, rows: list[int]) -> list[Explained]:
        """One sentence per candidate row: cached, else generated in one batch; faithfulness-guarded.

        The cache key is what determines the prompt (history item ids with liked flags, target id, prompt
        budget) plus the adapter version, so a hit needs no tokenisation; the value carries the sentence
        embedding too, so an all-cached request costs one small forward pass of ExpCTR-Aug.
        """
        self.load_explainer()
        version = f"{self.manifest['versions']['explainer_adapter']}/{self.manifest['max_prompt_tokens']}"
        hist_key = [(self.item_ids[r], liked) for r, liked in user.history]
        out: list[Explained | None] = [None] * len(rows)
        keys = [explanation_key(hist_key, self.item_ids[row], version) for row in rows]
        todo = self._from_cache(keys, range(len(rows)), out)
        if not todo:
            return out  # type: ignore[return-value]
        with self._llm_lock:
            # another request may have generated some of these while this one waited for the lock
            todo = self._from_cache(keys, todo, out)
            if not todo:
                return out  # type: ignore[return-value]
            history = self._history_items(user)
            targets = [self.items[rows[n]] for n in todo]
            prompts, fitted = zip(*(self._prompt(history, t) for t in targets))
            texts = self._generate(list(prompts), sample=False, seed=0)
            faithful = [not self._unfaithful(t, fitted[j], targets[j]) for j, t in enumerate(texts)]
            bad = [j for j, ok in enumerate(faithful) if not ok]
            if bad:
                seed = int(keys[todo[bad[0]]][:8], 16)
                for j, text in zip(bad, self._generate([prompts[j] for j in bad], sample=True, seed=seed)):
                    texts[j] = text
                    faithful[j] = not self._unfaithful(text, fitted[j], targets[j])
            emb = self._embed(texts)
        for j, n in enumerate(todo):
            value = (texts[j], faithful[j], j in bad, emb[j])
            self.cache.put(keys[n], value)
            out[n] = Explained(*value)
        return out  # type: ignore[return-value]

    def _from_cache(self, keys: list[str], todo, out: list[Explained | None]) -> list[int]:
        """Fill `out[n]` for the cached keys among `todo`; return the indices still to generate."""
        missing = []
        for n in todo:
            hit = self.cache.get(keys[n])
            if hit is None:
                missing.append(n)
            else:
                out[n] = Explained(*hit, cached=True)
        return missing

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

    def respond(self, prepared: Prepared, probs: np.ndarray, expl: list[Explained] | None = None
                ) -> PredictResponse:
        return PredictResponse(user=prepared.user.name, scorer="expctr_aug" if expl is not None else "id_model",
                               items=self._ranked(prepared.rows, np.asarray(probs, dtype=np.float64),
                                                  expl or [None] * len(prepared.rows)),
                               versions=self.versions())

    def predict(self, req: PredictRequest) -> PredictResponse:
        """Rank the candidates (explained: ExpCTR-Aug with the explanations; else the ID model)."""
        prepared = self.prepare(req)
        if not req.explain:
            return self.respond(prepared, self.score_id(prepared.packed))
        expl = self.explanations(prepared.user, prepared.rows)
        probs = self.score_aug(prepared.packed, np.stack([e.embedding for e in expl]))
        return self.respond(prepared, probs, expl)

    def explain(self, req: ExplainRequest) -> ExplainResponse:
        user = self.resolve_user(req)
        rows = self.candidate_rows([req.item_id], "item_id", 1)
        expl = self.explanations(user, rows)
        probs = self.score_aug(self.pack(user, rows), np.stack([e.embedding for e in expl]))
        return ExplainResponse(user=user.name, item=self._ranked(rows, probs, expl)[0], versions=self.versions())

    def _ranked(self, rows: list[int], probs: np.ndarray, expl: list[Explained | None]) -> list[ScoredItem]:
        order = sorted(range(len(rows)), key=lambda j: (-probs[j], j))
        out = []
        for rank, j in enumerate(order, 1):
            e = expl[j]
            out.append(ScoredItem(item_id=self.item_ids[rows[j]], title=self.items[rows[j]].title, rank=rank,
                                  p_click=float(probs[j]),
                                  explanation=e.text if e else None, faithful=e.faithful if e else None,
                                  regenerated=e.regenerated if e else False, cached=e.cached if e else False))
        return out


__all__ = ["COLD_START", "Explained", "ModelPair", "Prepared", "UserContext"]
