"""Explanations for served candidates: written, checked, retried once, embedded, cached, batched.

The verdict is given (chosen from the ID model's probability by the caller, and worded by it) and the
explainer's assistant turn is opened with it (`expctr.serving.prompt.served_opening`), so the explainer writes
only the reason. The prompt is the one the explainer was trained on (`expctr.serving.prompt.served_prompt`);
its prefill also gives the explainer's own verdict logit (read where training reads it) and the prompt's
facts, which ExpCTR-Aug reads beside the sentence (`expctr.serving.aug_scoring`). Each text is
checked (`expctr.serving.checks`: one complete sentence, only the pair's titles, a grounded reason); one that
fails is written again once (sampled; twice the token cap if it was cut) and the better try is kept with its
flags. Texts are cached, identical ones in flight coalesced and concurrent cold requests share generation
batches (`expctr.serving.batcher`).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expctr.config import LLMParams, ServingParams
from expctr.evaluation.faithfulness import TitleIndex
from expctr.llm.adapters import load_explainer
from expctr.llm.base_model import cpu_has_native_bf16
from expctr.llm.openings import quote_token_ids
from expctr.llm.prefix_generation import generate_opened, generate_shared_prefix
from expctr.llm.prompts import Item, fitted_history, prompt_facts
from expctr.llm.verdicts import grade_of, verdict_prefix, verdict_token_ids
from expctr.serving.batcher import ExplanationBatcher, Job
from expctr.serving.cache import ExplanationCache, explanation_key
from expctr.serving.catalogue import Catalogue
from expctr.serving.checks import ExplanationChecks, check_explanation, finished_text
from expctr.serving.lookup import UserContext
from expctr.serving.prompt import served_prompt
from expctr.serving.verdict import DECISION_THRESHOLD

RETRY_TEMPERATURE = 0.8


@dataclass(frozen=True)
class Explained:
    text: str
    positive: bool  # the verdict it opens with ("will probably enjoy")
    faithful: bool
    grounded: bool
    complete: bool
    regenerated: bool
    anchor: str | None  # the history title the served opening named (None: the explainer chose the reason)
    embedding: np.ndarray  # all-MiniLM-L6-v2 embedding of `text` (empty when ExpCTR-Aug does not read text)
    verdict_logit: float  # the explainer's own z at the end of the prompt (whatever verdict the score chose)
    facts: dict[str, float]  # the numbers the prompt states (`expctr.llm.prompts.prompt_facts`)
    cached: bool = False


@dataclass(frozen=True)
class _Request:
    """What one explanation job needs: the user's (item row, liked) history, the target row, the score that
    chooses and words the verdict."""

    history: tuple[tuple[int, bool], ...]
    row: int
    p: float
    seed: int

    @property
    def positive(self) -> bool:
        return self.p >= DECISION_THRESHOLD


def explainer_dtype(setting: str, device: str, packaged: str) -> str:
    """The dtype the explainer is served in: the setting, or for `auto` the packaged one off the CPU and on a
    CPU bfloat16 where it is native (bench/opening_bench.py: prefill and decoding 1.6-2x faster;
    the trust bench's checks hold), else float32."""
    if setting != "auto":
        return setting
    if device != "cpu":
        return packaged
    return "bfloat16" if cpu_has_native_bf16() else "float32"


class Explainer:
    """The explainer LLM (base + merged adapter) and, where ExpCTR-Aug reads it, the sentence encoder, loaded on
    first use, with the explanation cache and batcher in front of them."""

    def __init__(self, bundle_dir: Path, manifest: dict[str, Any], limits: ServingParams, catalogue: Catalogue,
                 device: str = "cpu", embeds: bool = True):
        self.dir, self.manifest, self.limits, self.device = bundle_dir, manifest, limits, device
        # the sentence encoder runs only for a packaged ExpCTR-Aug that reads the explanation's embedding (the
        # default reads the verdict logit and the facts): it is not loaded, and a slate does not wait for it
        self.embeds = bool(embeds)
        self.catalogue = catalogue
        self.title_index = TitleIndex.from_catalogue(catalogue.titles, catalogue.years)
        self.cache = ExplanationCache(limits.explanation_cache_size)
        self.batcher = ExplanationBatcher(self._explain_batch, self.cache, max_rows=limits.gen_batch_size)
        self.version = "/".join(str(v) for v in (manifest["versions"]["explainer_adapter"],
                                                 manifest["max_prompt_tokens"], limits.max_new_tokens))
        self._load_lock = threading.Lock()
        self.model: tuple[Any, Any] | None = None  # (LLM, tokenizer)
        self.encoder = None

    def load(self) -> None:
        """Load the explainer and the sentence encoder; idempotent."""
        with self._load_lock:
            if self.model is None:
                dtype = explainer_dtype(self.limits.explainer_dtype, self.device, self.manifest["llm"]["dtype"])
                llm = LLMParams(dtype=dtype, device=self.device, threads=self.limits.threads)
                self.model = load_explainer(self.dir / "llm" / "base", self.dir / "llm" / "adapter", llm)
            if self.encoder is None and self.embeds:
                from sentence_transformers import SentenceTransformer

                self.encoder = SentenceTransformer(str(self.dir / "encoder"), device=self.device,
                                                   local_files_only=True).eval()

    @property
    def banned_ids(self) -> list[int] | None:
        """Tokens the reason is decoded without: quotation marks when the pair was trained quote-free."""
        return quote_token_ids(self.model[1]) if self.manifest["llm"].get("quote_free_reason") else None

    @property
    def loaded(self) -> bool:
        return self.model is not None and (self.encoder is not None or not self.embeds)

    def history_items(self, history: tuple[tuple[int, bool], ...]) -> list[Item]:
        out = []
        for row, liked in history:
            it = self.catalogue.items[row]
            out.append(Item(it.title, it.year, it.genres, liked))
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not self.embeds:
            return np.zeros((len(texts), 0), dtype=np.float32)
        emb = self.encoder.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True,
                                  show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def _write(self, prompts: list[list[int]], openings: list[str], groups: list, seeds: list[int], sample: bool,
               caps: list[int] | None = None) -> list[str]:
        """A retry batch (prompt ids already ending in the opening); each row's shipped text."""
        model, tok = self.model
        res = generate_shared_prefix(model, tok, prompts, groups=groups,
                                     max_new_tokens=caps or [self.limits.max_new_tokens] * len(prompts),
                                     do_sample=sample, temperature=RETRY_TEMPERATURE, seeds=seeds,
                                     banned_token_ids=self.banned_ids)
        return [finished_text(raw, opening, done) for raw, opening, done in zip(res.raw_texts, openings, res.complete)]

    def _first_try(self, served: list, groups: list) -> tuple[list[str], list[float]]:
        """The greedy first try of a batch: each row's shipped text and the verdict logit read at its opening.
        The opening is chosen by the score, not by what is read, so it is fed in the pass of the row's own
        suffix (`opening_known`). A row caught in a loop runs on to the cap: stopping it there (`stop_loops`)
        shortened the slates with a retry (trust bench p95 4.50 s against 4.90 s) but changes which try is
        served, and keeping the finished try on a tie then served 1 invented title in 1,200: not taken."""
        model, tok = self.model
        vt = verdict_token_ids(tok)
        first = generate_opened(model, tok, [s.ids for s in served], lambda i, _: served[i].continuation,
                                [vt.positive, vt.negative], groups=groups, max_new_tokens=self.limits.max_new_tokens,
                                batch_size=len(served), banned_token_ids=self.banned_ids, opening_known=True)
        texts = [finished_text(raw, s.opening, done)
                 for raw, s, done in zip(first.generation.raw_texts, served, first.generation.complete)]
        return texts, [float(lg[0] - lg[1]) for lg in first.first_logits]

    def _explain_batch(self, jobs: list[Job]) -> list[Explained]:
        """Write, check, retry once what fails, embed: one batch of jobs (any users), holding the explainer."""
        tok = self.model[1]
        reqs: list[_Request] = [j.payload for j in jobs]
        targets = [self.catalogue.items[r.row] for r in reqs]
        budget = int(self.manifest["max_prompt_tokens"])
        fitted_of: dict = {}
        for r in reqs:  # one fit per history: every candidate of a user keeps the same one
            if r.history not in fitted_of:
                fitted_of[r.history] = fitted_history(tok, self.history_items(r.history), budget)
        served = [served_prompt(tok, [], t, r.p, budget, self.limits.reason_opening, fitted=fitted_of[r.history])
                  for r, t in zip(reqs, targets)]
        groups = [r.history for r in reqs]
        texts, verdict_logits = self._first_try(served, groups)
        checks: list[ExplanationChecks] = [check_explanation(t, served[j].history, targets[j], self.title_index)
                                           for j, t in enumerate(texts)]
        bad = [j for j, c in enumerate(checks) if not c.passed]
        if bad:  # sampled; a sentence cut at the token cap gets twice the cap
            caps = [self.limits.max_new_tokens * (1 if checks[j].complete else 2) for j in bad]
            prompts = [served[j].ids + tok(served[j].continuation, add_special_tokens=False)["input_ids"] for j in bad]
            again = self._write(prompts, [served[j].opening for j in bad], [groups[j] for j in bad],
                                [reqs[j].seed for j in bad], sample=True, caps=caps)
            for j, text in zip(bad, again):
                c = check_explanation(text, served[j].history, targets[j], self.title_index)
                if c.score > checks[j].score:  # the better try; the first one on a tie
                    texts[j], checks[j] = text, c
        emb = self._embed(texts)
        return [Explained(texts[j], reqs[j].positive, c.faithful, c.grounded, c.complete, j in bad,
                          served[j].anchor.title if served[j].anchor is not None else None, emb[j],
                          verdict_logits[j],
                          prompt_facts(served[j].history, targets[j]))
                for j, c in enumerate(checks)]

    def explanations(self, user: UserContext, rows: list[int], probs: list[float]) -> list[Explained]:
        """One checked sentence per candidate row, opened with the verdict its score `probs[i]` chooses and
        words: cached, coalesced with an identical one in flight, or generated in a batch shared with
        concurrent requests.

        The cache key is what determines the prompt (history item ids with liked flags, target id, verdict)
        plus the adapter version and prompt/token budgets, so a hit needs no tokenisation; the value carries
        the sentence embedding too, so an all-cached request costs one small forward pass of ExpCTR-Aug.
        """
        self.load()
        ids = self.catalogue.ids
        hist_key = [(ids[r], liked) for r, liked in user.history]
        jobs = []
        for row, p in zip(rows, probs, strict=True):
            opening = f"{verdict_prefix(float(p))}|{grade_of(float(p)).hedge}|{self.limits.reason_opening}"
            key = explanation_key(hist_key, ids[row], self.version, opening)  # the opening's words are in the key
            jobs.append(Job(key, _Request(user.history, row, float(p), int(key[:8], 16))))
        return [dataclasses.replace(o.value, cached=True) if o.how == "cache" else o.value
                for o in self.batcher.run(jobs)]


__all__ = ["Explained", "Explainer", "cpu_has_native_bf16", "explainer_dtype"]
