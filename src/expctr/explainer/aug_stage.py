"""The CTR stage of a round: ExpCTR-Aug and its two controls, trained on explained valid-period pairs.

The pairs come from the valid period (after the ID model's training period, before the test period) as slates
of same-time pairs of one user (`expctr.data.pairs.sample_slates`): the ID model was not fit on them, and every
pair has another pair of its user to take a shuffled explanation from. A seeded share of the slates
(`text_ctr.holdout`) is held out for early stopping, or - with `text_ctr.folds` K >= 2, the default - the
slates are split into K folds and K heads are trained, each early-stopped on its own fold, then averaged
(`BaggedTextCTR`). The three variants (`expctr.ctr.aug_inputs.VARIANTS`) share the architecture, the recipe,
the folds and the seed; only their inputs differ.
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
from expctr.ctr.text_augmented import AugModel, BaggedTextCTR, aug_probability, train_text_ctr, with_text
from expctr.ctr.trainer import FitResult, binary_metrics
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
    extra += [c for c in ("hidden", "state") if c in explained.columns]
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


def slate_folds(frame: pl.DataFrame, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per row: whole slates (user, timestamp) per fold, dealt round-robin in a seeded order,
    so fold sizes differ by at most one slate."""
    keys = [f"{u}|{t}" for u, t in zip(frame["user_id"].to_list(), frame["timestamp"].to_list())]
    slates = sorted(set(keys))
    if len(slates) < k:
        raise ExpCTRError(f"ExpCTR-Aug: {len(slates)} slates cannot fill {k} folds (lower text_ctr.folds)")
    order = np.random.default_rng(seed).permutation(len(slates))
    fold_of = {slates[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[key] for key in keys], dtype=np.int64)


@dataclass
class TrainedVariant:
    variant: str
    model: AugModel
    fits: list[FitResult]  # one per head (one, or one per fold)
    blocks: list[tuple[str, int]]
    oof: dict[str, float] | None = None  # bagged: out-of-fold AUC of the heads and of the ID model, same pairs

    @property
    def fit(self) -> FitResult:
        return self.fits[0]

    @property
    def best_epoch(self) -> int:
        """The median best epoch over the heads (0: the heads stayed the ID model)."""
        return int(np.median([f.best_epoch for f in self.fits]))

    @property
    def valid_auc(self) -> float:
        """Out-of-fold AUC (bagged), else the held-out slates' AUC at the best epoch."""
        return self.oof["auc"] if self.oof else self.fit.best_valid_auc

    def summary(self) -> dict[str, Any]:
        out = {"blocks": [list(b) for b in self.blocks], "best_epoch": self.best_epoch,
               "best_valid_auc": self.valid_auc, "curve": self.fit.curve}
        if len(self.fits) > 1:
            out["curve_of"] = "fold 0"
            out["folds"] = [{"best_epoch": f.best_epoch, "best_valid_auc": f.best_valid_auc} for f in self.fits]
        if self.oof:
            out["out_of_fold"] = dict(self.oof)
        return out


def train_variants(id_model, aug: AugInputs, params: Params, seed: int, variants: Sequence[str] = VARIANTS,
                   desc: str = "ExpCTR-Aug") -> dict[str, TrainedVariant]:
    """Each variant trained with the same recipe and seed on the same slates: one head early-stopped on a
    held-out share (`text_ctr.folds` 1), or K heads, one per slate fold, averaged. Only rows that have a donor
    are used (all of them, with slates of two or more pairs)."""
    tp = params.text_ctr
    usable = np.flatnonzero(aug.donors >= 0)
    scored = aug.frame[usable.tolist()]
    if tp.folds >= 2:
        fold = slate_folds(scored, tp.folds, seed)
        splits = [(usable[fold != f], usable[fold == f]) for f in range(tp.folds)]
    else:
        tr, va = holdout_rows(scored, tp.holdout, seed)
        splits = [(usable[tr], usable[va])]
    labels = aug.frame["label"].to_numpy()
    out = {}
    for v in variants:
        heads, fits, oof = [], [], np.zeros(len(aug.frame))
        for f, (tr, va) in enumerate(splits):
            train, dims = aug.data(v, tp.explanation_blocks, tr)
            valid, _ = aug.data(v, tp.explanation_blocks, va)
            fold_desc = f"{desc} ({v})" if len(splits) == 1 else f"{desc} ({v}, fold {f + 1}/{len(splits)})"
            model, fit = train_text_ctr(copy.deepcopy(id_model), dims, train, valid, tp, seed + f,
                                        device=params.ctr.device, desc=fold_desc)
            oof[va] = aug_probability(model, valid)
            heads.append(model)
            fits.append(fit)
        if len(heads) == 1:
            out[v] = TrainedVariant(v, heads[0], fits, dims)
            continue
        p_id = aug.frame["p_id"].to_numpy() if "p_id" in aug.frame.columns else None
        info = {"auc": binary_metrics(labels[usable], oof[usable])["auc"], "pairs": len(usable)}
        if p_id is not None:
            info["id_auc"] = binary_metrics(labels[usable], p_id[usable])["auc"]
        out[v] = TrainedVariant(v, BaggedTextCTR(heads).eval(), fits, dims, info)
    return out


def score_variant(trained: TrainedVariant, aug: AugInputs, blocks: Sequence[str], n: int) -> np.ndarray:
    """P(click) of the first n rows of `aug` under a trained variant."""
    data, _ = aug.data(trained.variant, blocks, np.arange(n))
    return aug_probability(trained.model, data)


__all__ = ["AugInputs", "TrainedVariant", "holdout_rows", "join_explanations", "score_variant", "slate_folds",
           "train_variants"]
