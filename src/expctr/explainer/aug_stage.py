"""The CTR stage of a round: ExpCTR-Aug and its two controls, trained on explained valid-period pairs.

The pairs come from the valid period (after the ID model's training period, before the test period) as slates
of same-time pairs of one user (`expctr.data.pairs.sample_slates`): the ID model was not fit on them, and every
pair has another pair of its user to take a shuffled explanation from. A seeded share of the slates
(`text_ctr.holdout`) is held out for early stopping. The three variants (`expctr.ctr.aug_inputs.VARIANTS`)
share the architecture, the recipe and the seed; only their inputs differ.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from expctr.config import Params
from expctr.ctr.aug_inputs import VARIANTS, same_user_donors, variant_inputs
from expctr.ctr.batch import CTRData
from expctr.ctr.text_augmented import TextAugmentedCTR, aug_probability, train_text_ctr, with_text
from expctr.ctr.trainer import FitResult
from expctr.errors import ExpCTRError
from expctr.llm.encoder import embed


@dataclass
class AugInputs:
    """An explained-pairs frame joined back to its ID features, with what every variant reads."""

    frame: pl.DataFrame  # the pair frame (ID feature columns) + the explanation columns, row-aligned
    embeddings: np.ndarray | None  # (n, 384) sentence embeddings of the explanations, when a variant reads text
    donors: np.ndarray  # per row, the row whose explanation the shuffled variant reads (-1: none)
    cross_user_donors: int = 0  # pairs whose donor had to come from another user

    def data(self, variant: str, blocks: Sequence[str], rows: np.ndarray | None = None
             ) -> tuple[CTRData, list[tuple[str, int]]]:
        x, dims = variant_inputs(self.frame, variant, blocks, self.embeddings,
                                 self.donors if variant == "shuffled" else None)
        frame = self.frame
        if rows is not None:
            x, frame = x[rows], frame[rows.tolist()]
        return with_text(CTRData.from_frame(frame), x), dims


def join_explanations(pairs: pl.DataFrame, explained: pl.DataFrame, encoder, blocks: Sequence[str], seed: int,
                      donor_pairs: pl.DataFrame | None = None, donor_explained: pl.DataFrame | None = None,
                      fill_missing: bool = False) -> AugInputs:
    """The Aug inputs of `pairs` (row-aligned with `explained`, as `explain_pairs` returns them).

    Donors are other pairs of the same user in the same set; a user with a single pair takes its donor from
    `donor_explained` (one extra explained pair of that user, row-aligned with `donor_pairs`), appended after the
    pairs (those rows are never scored themselves). With `fill_missing`, a pair left without a donor takes
    another user's (seeded; `AugInputs.cross_user_donors` counts them)."""
    if pairs.height != explained.height:
        raise ExpCTRError(f"{explained.height} explanations for {pairs.height} pairs")
    extra = ["explanation", "verdict_logit", "grade", "stance", *[c for c in explained.columns if c.startswith("fact_")]]
    if "hidden" in explained.columns:
        extra.append("hidden")
    frame = pairs.drop([c for c in extra if c in pairs.columns]).with_columns(explained.select(extra))
    n = frame.height
    donors = same_user_donors(frame["user_id"].to_list(), seed)
    if donor_pairs is not None and donor_explained is not None and donor_pairs.height:
        more = donor_pairs.drop([c for c in extra if c in donor_pairs.columns]).with_columns(donor_explained.select(extra))
        frame = pl.concat([frame, more.select([c for c in frame.columns if c in more.columns])],
                          how="diagonal_relaxed")
        first_of = {}
        for j, u in enumerate(more["user_id"].to_list()):
            first_of.setdefault(str(u), n + j)
        users = frame["user_id"].to_list()
        donors = np.concatenate([donors, np.full(more.height, -1, dtype=np.int64)])
        for i in range(n):
            if donors[i] < 0 and str(users[i]) in first_of:
                donors[i] = first_of[str(users[i])]
    missing = np.flatnonzero(donors[:n] < 0)
    if fill_missing and len(missing):
        # a user with no other pair anywhere: another user's explanation (counted in the metrics)
        rng = np.random.default_rng(seed + 1)
        for i in missing:
            j = int(rng.integers(n - 1))
            donors[i] = j + (j >= i)
    embeddings = None
    if "text" in blocks:
        embeddings = embed(encoder, frame["explanation"].to_list())
    return AugInputs(frame, embeddings, donors, len(missing) if fill_missing else 0)


def holdout_rows(frame: pl.DataFrame, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): whole slates (user, timestamp) held out, seeded."""
    keys = [f"{u}|{t}" for u, t in zip(frame["user_id"].to_list(), frame["timestamp"].to_list())]
    slates = sorted(set(keys))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(slates), size=max(1, round(share * len(slates))), replace=False).tolist())
    held_keys = {slates[i] for i in held}
    mask = np.array([k in held_keys for k in keys])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclass
class TrainedVariant:
    variant: str
    model: TextAugmentedCTR
    fit: FitResult
    blocks: list[tuple[str, int]]

    def summary(self) -> dict[str, Any]:
        return {"blocks": [list(b) for b in self.blocks], "best_epoch": self.fit.best_epoch,
                "best_valid_auc": self.fit.best_valid_auc, "curve": self.fit.curve}


def train_variants(id_model, aug: AugInputs, params: Params, seed: int, variants: Sequence[str] = VARIANTS,
                   desc: str = "ExpCTR-Aug") -> dict[str, TrainedVariant]:
    """Each variant trained with the same recipe and seed on the same train / held-out slates. Only rows that
    have a donor are used (all of them, with slates of two or more pairs)."""
    tp = params.text_ctr
    usable = np.flatnonzero(aug.donors >= 0)
    scored = aug.frame[usable.tolist()]
    tr, va = holdout_rows(scored, tp.holdout, seed)
    tr, va = usable[tr], usable[va]
    out = {}
    for v in variants:
        train, dims = aug.data(v, tp.explanation_blocks, tr)
        valid, _ = aug.data(v, tp.explanation_blocks, va)
        model, fit = train_text_ctr(copy.deepcopy(id_model), dims, train, valid, tp, seed, device=params.ctr.device,
                                    desc=f"{desc} ({v})")
        out[v] = TrainedVariant(v, model, fit, dims)
    return out


def score_variant(trained: TrainedVariant, aug: AugInputs, blocks: Sequence[str], n: int) -> np.ndarray:
    """P(click) of the first n rows of `aug` under a trained variant."""
    data, _ = aug.data(trained.variant, blocks, np.arange(n))
    return aug_probability(trained.model, data)


__all__ = ["AugInputs", "TrainedVariant", "holdout_rows", "join_explanations", "score_variant", "train_variants"]
