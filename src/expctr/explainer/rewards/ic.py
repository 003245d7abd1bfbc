"""IC alignment: the judge reading the explanation agrees with the ID-based CTR model (no label needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from expctr.explainer.rewards.common import KINDS, MIN_PROB, column, log_extra, soft_target_reward
from expctr.explainer.rewards.lc import LCReward
from expctr.llm.explanations import prefixes


class ICAgreementReward:
    """IC alignment (default form): the judge reading the explanation agrees with the ID-based CTR model.

        r_IC = soft_target_reward(p_judge, p_id, kind)
             = p_id log p_j + (1 - p_id) log(1 - p_j)  = -BCE(p_id, p_j)      (kind="logprob")
             = p_id p_j + (1 - p_id)(1 - p_j)                                  (kind="prob")

    with p_j = the frozen judge's P(Yes) given the explanation (the LC reward's judge, `lc.p_yes`) and p_id =
    sigmoid(f_id(x)) of the ID model. It carries the ID model's knowledge into the explainer and needs NO label:
    the IC stage can train on any pair the ID model scores. p_id comes from the dataset column `p_id` when it is
    there (precomputed per pair), else from `id_model` on the ID feature columns. Logs `<name>/p_judge`,
    `<name>/p_id`.
    """

    def __init__(self, lc: LCReward, id_model=None, kind: str = "prob", min_prob: float = MIN_PROB,
                 name: str = "ic_reward"):
        if kind not in KINDS:
            raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
        self.lc, self.id_model = lc, (id_model.eval() if id_model is not None else None)
        self.kind, self.min_prob, self.__name__ = kind, float(min_prob), name

    def p_id(self, kwargs: Mapping[str, Any], n: int) -> np.ndarray:
        if "p_id" in kwargs:
            return np.asarray(column(kwargs, "p_id", n, self.__name__), dtype=np.float64)
        if self.id_model is None:
            raise KeyError(f"{self.__name__} needs the dataset column 'p_id' or an id_model")
        import torch

        from expctr.ctr.text_augmented import ID_COLUMNS, batch_from_columns

        columns = {c: column(kwargs, c, n, self.__name__) for c in ID_COLUMNS}
        device = next(self.id_model.parameters()).device
        with torch.no_grad():
            return torch.sigmoid(self.id_model(batch_from_columns(columns, device=device))).double().cpu().numpy()

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        if n == 0:
            return []
        who = self.__name__
        history, target = (column(kwargs, c, n, who) for c in ("history", "target"))
        p_id = self.p_id(kwargs, n)
        p_j = self.lc.p_yes(completions, history, target, prefixes(kwargs, n))
        log_extra(kwargs, f"{who}/p_judge", p_j)
        log_extra(kwargs, f"{who}/p_id", p_id)
        return soft_target_reward(p_j, p_id, self.kind, self.min_prob).tolist()
