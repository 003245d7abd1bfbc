"""LC alignment: the frozen judge reading the explanation, rewarded by its probability of the real click."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from expctr.explainer.rewards.common import KINDS, MIN_PROB, column, log_extra, true_label_reward
from expctr.llm.explanations import explanation_of, prefixes
from expctr.llm.judge import JudgeScorer
from expctr.llm.prompts import judge_messages


class LCReward:
    """LC alignment: r = log max(p_true, 1e-4) (logprob) or p_true (prob), p_true the judge's P(true label).

    judge_model: a causal LM (with `tokenizer`), or - with tokenizer=None - any scorer callable
    `list[messages] -> P(Yes) per prompt` (e.g. `JudgeScorer(peft_model, tok, disable_adapter=True)`).
    Reads kwargs `history`, `target`, `label`. Logs the per-completion P(Yes) as `<name>/p_yes`.
    """

    def __init__(self, judge_model, tokenizer=None, kind: str = "logprob", batch_size: int = 8,
                 min_prob: float = MIN_PROB, name: str = "lc_reward", reads_history: bool = True):
        if kind not in KINDS:
            raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
        if tokenizer is None:
            if not callable(judge_model) or hasattr(judge_model, "generate"):
                raise TypeError("LCReward needs a tokenizer with a judge model, or a scorer callable alone")
            self.scorer = judge_model
        else:
            self.scorer = JudgeScorer(judge_model, tokenizer, batch_size=batch_size)
        self.kind, self.min_prob, self.__name__ = kind, float(min_prob), name
        self.reads_history = bool(reads_history)  # False: the judge sees the target line, not the history

    def p_yes(self, completions: Sequence[Any], history: Sequence[Any], target: Sequence[Any],
              prefix: Sequence[str | None] | None = None) -> np.ndarray:
        prefix = prefix or [None] * len(completions)
        messages = [judge_messages(list(h or []), t, explanation_of(c, pre), show_history=self.reads_history)
                    for c, h, t, pre in zip(completions, history, target, prefix, strict=True)]
        p = np.asarray(self.scorer(messages), dtype=np.float64).reshape(-1)
        if p.shape != (len(messages),):
            raise ValueError(f"the judge scorer returned {p.shape} scores for {len(messages)} prompts")
        return p

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        if n == 0:
            return []
        who = self.__name__
        history, target, labels = (column(kwargs, c, n, who) for c in ("history", "target", "label"))
        p = self.p_yes(completions, history, target, prefixes(kwargs, n))  # columns checked first: the judge pass is the cost
        log_extra(kwargs, f"{who}/p_yes", p)
        return true_label_reward(p, labels, self.kind, self.min_prob).tolist()
