"""ExpCTR-Aug on explained candidates: what it reads, and which probability an explanation is returned with.

The one place that decides ExpCTR-Aug's serving input: `aug_inputs` builds, per explained candidate, the
blocks the packaged model reads besides the ID features, in its own order (`TextAugmentedCTR.blocks`): the
prompt's facts, the explainer's verdict logit, the explanation's sentence embedding - the same values training
read (`expctr.ctr.aug_inputs`), from what `Explained` carries (expctr.serving.explaining).

The verdict was chosen from the ID model's probability before the explainer wrote; ExpCTR-Aug's probability
is returned when it stays on that side of the threshold, else the ID model's (a score that depends on the
text never overrides the verdict the text was written for).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from expctr.ctr.batch import CTRData
from expctr.ctr.text_augmented import AugModel, with_text
from expctr.ctr.trainer import predict
from expctr.llm.prompts import FACT_NAMES
from expctr.serving.explaining import Explained
from expctr.serving.verdict import DECISION_THRESHOLD


def _block(name: str, e: Explained) -> list[float]:
    if name == "facts":
        return [float(e.facts[n]) for n in FACT_NAMES]
    if name == "verdict":
        return [float(e.verdict_logit)]
    if name == "text":
        return [float(x) for x in e.embedding]
    raise ValueError(f"ExpCTR-Aug reads a {name!r} block that serving does not compute (the explainer's "
                     "hidden states): package a model trained on facts, verdict and text")


def aug_inputs(model: AugModel, explained: Sequence[Explained]) -> np.ndarray:
    """(n, D) float32: what ExpCTR-Aug reads of each explained candidate besides its ID features."""
    return np.array([[x for name, _ in model.blocks for x in _block(name, e)] for e in explained], dtype=np.float32)


def aug_probability(model: AugModel, rows: CTRData, explained: Sequence[Explained],
                    device: str = "cpu") -> np.ndarray:
    """P(click) of ExpCTR-Aug for each explained row; float64 (n,)."""
    data = with_text(rows, aug_inputs(model, explained))
    return predict(model, data, batch_size=len(data), device=device).astype(np.float64)


def explained_scores(model: AugModel, rows: CTRData, p_id: np.ndarray, explained: Sequence[Explained],
                     device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """The probability each explanation is returned with (ExpCTR-Aug's when it agrees with the verdict,
    else the ID model's `p_id`) and which model each came from."""
    p_aug = aug_probability(model, rows, explained, device)
    agree = (p_aug >= DECISION_THRESHOLD) == np.array([e.positive for e in explained])
    return np.where(agree, p_aug, p_id), ["expctr_aug" if a else "id_model" for a in agree]


__all__ = ["aug_inputs", "aug_probability", "explained_scores"]
