"""Reward functions for the explainer's RL stages, in TRL's reward signature.

Every reward is a plain callable object `f(prompts, completions, **kwargs) -> list[float]` (one float per
completion) with an instance `__name__` (TRL names its logged columns `rewards/<__name__>/mean` with
`getattr(f, "__name__", ...)`). None of them is an `nn.Module`: TRL would take a Module for a reward MODEL.
They are picklable when what they hold is (models, tokenizers, the JudgeScorer class; no closures).

How TRL 1.16 calls them (GRPOTrainer._calculate_rewards): `prompts` and `completions` are lists of length
B*G; the dataset's other columns arrive as kwargs lists aligned with them (`history`, `target`, `label`,
`user_idx`, ...), plus `completion_ids`, `trainer_state`, `log_extra` and `log_metric`. A completion is a
plain string for text prompts, or `[{"role": "assistant", "content": ...}]` for conversational prompts
(content may also be a list of `{"type": "text", "text": ...}` blocks); `completion_text` accepts all.

Formulas (y = the pair's true label, s = the first sentence of the completion, `generation.first_sentence`,
i.e. exactly what the explainer ships; p_min = 1e-4):

- LC (explanation <-> LLM-CTR):  p = P_judge(Yes | judge_messages(history, target, s)), the frozen base
  model's softmax over its Yes/No logits after "<s> So the answer is";  p_true = p if y = 1 else 1 - p;
  kind="logprob": r = log max(p_true, p_min);  kind="prob": r = p_true.
- IC (explanation <-> ID-CTR):  p_aug = sigmoid(f_aug(x, e(s))) under the frozen ExpCTR-Aug model, e = the
  all-MiniLM-L6-v2 embedding;  p_true as above from p_aug;  r = log max(p_true, p_min) or p_true;
  with consistency_weight w > 0:  r -= w * |p_aug - p_id|,  p_id = sigmoid(f_id(x)) of the plain ID model.
- Format (no model): 0 for a good explanation, else the sum of the penalties that apply
  (FormatReward.DEFAULT_PENALTIES): empty -2.0 (alone: nothing else is checked); more than one sentence
  -0.5; no explicit verdict (`stance(s) == 0`) -1.0; copying the prompt (an 8-word run of the prompt's
  template/instruction text, item titles and their "(year; genres)" excluded) -1.0; longer than 50 words
  -0.5.

Combining: `combine([(lc, 1.0), (fmt, 1.0)])` returns ONE callable whose value is sum_k w_k * r_k and which
logs every part through TRL's `log_metric` (`<name>/<part>` means) and `log_extra` (per-completion columns).
Why one callable rather than TRL's `reward_weights`: under TRL's default aggregation (sum_then_normalize)
both give the same advantages, but the combined callable skips zero-weight parts (no judge forward pass
when lambda = 0), keeps the stage formula in one tested place (`stage_reward`), and still logs each part.
Passing the parts separately with `reward_weights` remains possible (each part is a valid TRL reward).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from expctr.llm.generation import first_sentence
from expctr.llm.prompts import judge_messages

MIN_PROB = 1e-4
KINDS = ("logprob", "prob")

RewardFn = Callable[..., list[float]]


# --- completions and prompts as TRL passes them -------------------------------------------------------------

def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content blocks: [{"type": "text", "text": ...}, ...]
        return "".join(str(b.get("text") or "") if isinstance(b, Mapping) else str(b) for b in content)
    return str(content)


def completion_text(completion: Any, prefix: str | None = None) -> str:
    """The text of one completion: a string, a message dict, or a list of messages (assistant turns).

    With `prefix` (the dataset's `explanation_prefix`: the assistant text the policy continued, e.g.
    "The user will probably"), the prefix is put back so the explanation reads as one sentence."""
    if isinstance(completion, str):
        text = completion
    elif isinstance(completion, Mapping):
        text = _content_text(completion.get("content"))
    elif isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        text = ("".join(str(m) for m in completion) if not msgs else
                "".join(_content_text(m.get("content")) for m in msgs if m.get("role", "assistant") == "assistant"))
    else:
        text = "" if completion is None else str(completion)
    if prefix:
        text = prefix + text if text[:1].isspace() or text[:1] in ".,;:!?" else f"{prefix} {text}"
    return text


def prefixes(kwargs: Mapping[str, Any], n: int) -> list[str | None]:
    """The per-completion `explanation_prefix` column (None each when the dataset has no prefix)."""
    col = kwargs.get("explanation_prefix")
    return [None] * n if col is None else list(col)


def prompt_text(prompt: Any) -> str:
    """The text of one prompt: a rendered string, or a list of chat messages (contents joined by newlines)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        return _content_text(prompt.get("content"))
    if isinstance(prompt, Sequence):
        return "\n".join(_content_text(m.get("content")) if isinstance(m, Mapping) else str(m)
                         for m in prompt)
    return "" if prompt is None else str(prompt)


def explanation_of(completion: Any, prefix: str | None = None) -> str:
    """What the explainer ships for a completion: its first sentence (prefix put back)."""
    return first_sentence(completion_text(completion, prefix))


def _is_click(label: Any) -> bool:
    return float(label) >= 0.5


def true_label_reward(p_click: np.ndarray, labels: Sequence[Any], kind: str, min_prob: float = MIN_PROB
                      ) -> np.ndarray:
    """p_true = p if y = 1 else 1 - p;  logprob: log max(p_true, min_prob);  prob: p_true."""
    if kind not in KINDS:
        raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
    p = np.asarray(p_click, dtype=np.float64)
    y = np.array([_is_click(v) for v in labels], dtype=bool)
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} probabilities for {len(y)} labels")
    p_true = np.where(y, p, 1.0 - p)
    return np.log(np.maximum(p_true, min_prob)) if kind == "logprob" else p_true


def soft_target_reward(p_click: np.ndarray, target: Sequence[float], kind: str, min_prob: float = MIN_PROB
                       ) -> np.ndarray:
    """The reward of predicting P(click) = p for a soft target t in [0, 1] (the ID model's probability):

    logprob: t log p + (1 - t) log(1 - p) = -BCE(t, p);   prob: t p + (1 - t)(1 - p) (the probability that
    p and t, each read as a coin, agree). p is clipped to [min_prob, 1 - min_prob]. For t in {0, 1} these are
    exactly `true_label_reward`'s log p_true and p_true: IC is LC with the ID model's belief in place of the label.
    """
    if kind not in KINDS:
        raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
    p = np.clip(np.asarray(p_click, dtype=np.float64), min_prob, 1.0 - min_prob)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{len(p)} probabilities for {len(t)} targets")
    if ((t < 0) | (t > 1)).any():
        raise ValueError("soft targets must lie in [0, 1]")
    if kind == "logprob":
        return t * np.log(p) + (1.0 - t) * np.log(1.0 - p)
    return t * p + (1.0 - t) * (1.0 - p)


def _column(kwargs: Mapping[str, Any], name: str, n: int, who: str) -> list[Any]:
    if name not in kwargs:
        raise KeyError(f"{who} needs the dataset column {name!r} (TRL passes extra columns as kwargs)")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"{who}: column {name!r} has {len(values)} values for {n} completions")
    return values


def _log_extra(kwargs: Mapping[str, Any], column: str, values: Sequence[float]) -> None:
    log = kwargs.get("log_extra")
    if callable(log):
        log(column, [float(v) for v in values])


# --- stance ------------------------------------------------------------------------------------------------

_VERB = r"(?:enjoy|like|love|appreciate|be\s+(?:interested|drawn|a\s+fan|into))"
_ADV = r"(?:(?:probably|likely|most\s+likely|very\s+likely|definitely|certainly|really|also|still|much)\s+)*"
_NEG_PATTERNS = (
    rf"\b(?:will|would|does|do|did|could|can|may|might|should|is\s+going\s+to)\s+{_ADV}not\s+{_ADV}{_VERB}\b",
    rf"\b(?:won't|wouldn't|doesn't|don't|can't|cannot|shouldn't|isn't\s+going\s+to)\s+{_ADV}{_VERB}\b",
    rf"\b(?:unlikely|not\s+likely|not\s+going)\s+to\s+{_ADV}{_VERB}\b",
    r"\b(?:will|would)\s+(?:probably\s+|likely\s+|most\s+likely\s+)?(?:dislike|hate)\b",
)
_POS_PATTERNS = (
    rf"\b(?:will|would|should|is\s+going\s+to|likely\s+to|bound\s+to|sure\s+to)\s+{_ADV}{_VERB}\b",
)
_NEG_RE = re.compile("|".join(_NEG_PATTERNS), re.IGNORECASE)
_POS_RE = re.compile("|".join(_POS_PATTERNS), re.IGNORECASE)


def stance(text: str) -> int:
    """+1 if `text` states the user will like/enjoy the target, -1 if it states they will not, 0 if neither.

    A verdict is a modal + liking verb ("will probably enjoy", "would love", "is likely to like") or its
    negation ("will probably not enjoy", "won't like", "unlikely to enjoy", "will dislike"). The EARLIEST
    verdict in the text decides (the explainer is asked to open with it), so a reason that mentions the
    past ("... although they didn't like Heat") does not flip it; at the same position the negation wins.
    Bare "like" (as in "movies like Heat") and statements about the past are not verdicts.
    """
    t = str(text).replace("\u2019", "'").replace("\u2018", "'")
    neg, pos = _NEG_RE.search(t), _POS_RE.search(t)
    if neg is None and pos is None:
        return 0
    if pos is None:
        return -1
    if neg is None:
        return 1
    return -1 if neg.start() <= pos.start() else 1


# --- LC ----------------------------------------------------------------------------------------------------

class JudgeScorer:
    """messages_batch -> P(Yes) array with a causal LM judge, in eval mode, without grad.

    Prompts that share their context (the completions of one RL prompt, the two verdict sentences of a pair)
    are scored with the grouped judge (`judge_p_yes_grouped`: the shared tokens run once). Scores are memoised
    by prompt (up to `memo_size`), so the LC and IC parts of one stage reward, or a sentence scored twice,
    cost one judge pass. `disable_adapter=True` scores with a peft model's adapter switched off, i.e. with the
    frozen base model under the explainer's LoRA (one copy of the weights in memory). The model's train/eval
    mode is restored.
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, disable_adapter: bool = False,
                 memo_size: int = 4096):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.disable_adapter = int(batch_size), bool(disable_adapter)
        self.memo_size = int(memo_size)
        self._memo: dict[tuple, float] = {}

    def remember(self, messages_batch: Sequence[Sequence[Mapping[str, str]]], p_yes: Sequence[float]) -> None:
        """Store known P(Yes) values (readings precomputed by the same frozen judge, e.g. in llm_pairs)."""
        if len(messages_batch) != len(p_yes):
            raise ValueError(f"{len(p_yes)} values for {len(messages_batch)} prompts")
        self._memo.update((self._key(m), float(p)) for m, p in zip(messages_batch, p_yes))

    @staticmethod
    def _messages(key: tuple) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in key]

    @staticmethod
    def _key(messages: Sequence[Mapping[str, str]]) -> tuple:
        return tuple((m["role"], m["content"]) for m in messages)

    def __call__(self, messages_batch: Sequence[Sequence[Mapping[str, str]]]) -> np.ndarray:
        from expctr.llm.judge import judge_p_yes, judge_p_yes_grouped

        keys = [self._key(m) for m in messages_batch]
        todo: dict[tuple, list[tuple]] = {}  # context (all but the last turn) -> prompts to score
        for k in keys:
            if k not in self._memo:
                group = todo.setdefault(k[:-1], [])
                if k not in group:
                    group.append(k)
        if todo:
            # groups of one gain nothing from sharing their context: one plain pass scores them
            single = [g[0] for g in todo.values() if len(g) == 1]
            groups = [g for g in todo.values() if len(g) > 1]
            was_training = self.model.training
            self.model.eval()
            ctx = self.model.disable_adapter() if self.disable_adapter else contextlib.nullcontext()
            try:
                with ctx:
                    plain = judge_p_yes(self.model, self.tokenizer, [self._messages(k) for k in single],
                                        batch_size=self.batch_size) if single else []
                    grouped = judge_p_yes_grouped(self.model, self.tokenizer,
                                                  [[self._messages(k) for k in g] for g in groups],
                                                  batch_size=self.batch_size) if groups else []
            finally:
                if was_training:
                    self.model.train()
            if len(self._memo) > self.memo_size:
                self._memo.clear()
            self._memo.update(zip(single, (float(x) for x in plain)))
            for g, sc in zip(groups, grouped):
                self._memo.update(zip(g, (float(x) for x in sc)))
        return np.array([self._memo[k] for k in keys], dtype=np.float64)


class LCReward:
    """LC alignment: r = log max(p_true, 1e-4) (logprob) or p_true (prob), p_true the judge's P(true label).

    judge_model: a causal LM (with `tokenizer`), or - with tokenizer=None - any scorer callable
    `list[messages] -> P(Yes) per prompt` (e.g. `JudgeScorer(peft_model, tok, disable_adapter=True)`).
    Reads kwargs `history`, `target`, `label`. Logs the per-completion P(Yes) as `<name>/p_yes`.
    """

    def __init__(self, judge_model, tokenizer=None, kind: str = "logprob", batch_size: int = 8,
                 min_prob: float = MIN_PROB, name: str = "lc_reward"):
        if kind not in KINDS:
            raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
        if tokenizer is None:
            if not callable(judge_model) or hasattr(judge_model, "generate"):
                raise TypeError("LCReward needs a tokenizer with a judge model, or a scorer callable alone")
            self.scorer = judge_model
        else:
            self.scorer = JudgeScorer(judge_model, tokenizer, batch_size=batch_size)
        self.kind, self.min_prob, self.__name__ = kind, float(min_prob), name

    def p_yes(self, completions: Sequence[Any], history: Sequence[Any], target: Sequence[Any],
              prefix: Sequence[str | None] | None = None) -> np.ndarray:
        prefix = prefix or [None] * len(completions)
        messages = [judge_messages(list(h or []), t, explanation_of(c, pre))
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
        history, target, labels = (_column(kwargs, c, n, who) for c in ("history", "target", "label"))
        p = self.p_yes(completions, history, target, prefixes(kwargs, n))  # columns checked first: the judge pass is the cost
        _log_extra(kwargs, f"{who}/p_yes", p)
        return true_label_reward(p, labels, self.kind, self.min_prob).tolist()


# --- IC ----------------------------------------------------------------------------------------------------

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
            return np.asarray(_column(kwargs, "p_id", n, self.__name__), dtype=np.float64)
        if self.id_model is None:
            raise KeyError(f"{self.__name__} needs the dataset column 'p_id' or an id_model")
        import torch

        from expctr.ctr.text_augmented import ID_COLUMNS, batch_from_columns

        columns = {c: _column(kwargs, c, n, self.__name__) for c in ID_COLUMNS}
        device = next(self.id_model.parameters()).device
        with torch.no_grad():
            return torch.sigmoid(self.id_model(batch_from_columns(columns, device=device))).double().cpu().numpy()

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        if n == 0:
            return []
        who = self.__name__
        history, target = (_column(kwargs, c, n, who) for c in ("history", "target"))
        p_id = self.p_id(kwargs, n)
        p_j = self.lc.p_yes(completions, history, target, prefixes(kwargs, n))
        _log_extra(kwargs, f"{who}/p_judge", p_j)
        _log_extra(kwargs, f"{who}/p_id", p_id)
        return soft_target_reward(p_j, p_id, self.kind, self.min_prob).tolist()


class ICReward:
    """IC alignment, "aug" form (selectable with reward.ic_form): r = log max(p_true, 1e-4) (or p_true) under the frozen ExpCTR-Aug model,
    minus consistency_weight * |p_aug - p_id| (p_id from `id_model`, default the Aug model's own base).

    encoder: a sentence-transformers model (embedded with `expctr.llm.encoder.embed`) or a callable
    `list[str] -> (n, text_dim) array`. Reads the ID feature columns (`text_augmented.ID_COLUMNS`) and
    `label` from kwargs. Logs `<name>/p_aug` (and `<name>/p_id` with a consistency term).
    """

    def __init__(self, text_ctr_model, encoder, kind: str = "logprob", id_model=None,
                 consistency_weight: float = 0.0, min_prob: float = MIN_PROB, embed_batch_size: int = 64,
                 name: str = "ic_reward"):
        if kind not in KINDS:
            raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
        if consistency_weight < 0:
            raise ValueError("consistency_weight must be >= 0")
        self.model = text_ctr_model.eval()
        self.encoder = encoder
        self.id_model = (id_model if id_model is not None else text_ctr_model.base).eval()
        self.kind, self.consistency_weight = kind, float(consistency_weight)
        self.min_prob, self.embed_batch_size, self.__name__ = float(min_prob), int(embed_batch_size), name

    def embed(self, texts: list[str]) -> np.ndarray:
        if hasattr(self.encoder, "encode"):
            from expctr.llm.encoder import embed

            return embed(self.encoder, texts, batch_size=self.embed_batch_size)
        return np.asarray(self.encoder(texts), dtype=np.float32)

    def probabilities(self, completions: Sequence[Any], columns: Mapping[str, Sequence[Any]],
                      prefix: Sequence[str | None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(p_aug, p_id or None): click probabilities with and without the explanation."""
        import torch

        from expctr.ctr.text_augmented import batch_from_columns

        device = next(self.model.parameters()).device
        batch = batch_from_columns(columns, device=device)
        prefix = prefix or [None] * len(completions)
        text = torch.as_tensor(self.embed([explanation_of(c, pre) for c, pre in zip(completions, prefix)]),
                               device=device)
        self.model.eval()
        with torch.no_grad():
            p_aug = torch.sigmoid(self.model({**batch, "text": text})).double().cpu().numpy()
            p_id = None
            if self.consistency_weight > 0:
                self.id_model.eval()
                p_id = torch.sigmoid(self.id_model(batch)).double().cpu().numpy()
        return p_aug, p_id

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        from expctr.ctr.text_augmented import ID_COLUMNS

        n = len(completions)
        if n == 0:
            return []
        who = self.__name__
        columns = {c: _column(kwargs, c, n, who) for c in ID_COLUMNS}
        labels = _column(kwargs, "label", n, who)
        p_aug, p_id = self.probabilities(completions, columns, prefixes(kwargs, n))
        _log_extra(kwargs, f"{who}/p_aug", p_aug)
        r = true_label_reward(p_aug, labels, self.kind, self.min_prob)
        if p_id is not None:
            _log_extra(kwargs, f"{who}/p_id", p_id)
            r = r - self.consistency_weight * np.abs(p_aug - p_id)
        return r.tolist()


# --- format ------------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z0-9]+")
# A rendered item: "Title" optionally followed by its "(year; genres)" - data the explanation may cite.
_ITEM_RE = re.compile(r'"[^"\n]*"(?:\s*\([^()\n]*\))?')


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def copied_ngram(completion: str, prompt: str, n: int = 8) -> bool:
    """True if `completion` contains a run of `n` words of the prompt's own text (items excluded).

    Item titles and their "(year; genres)" are cut out of the prompt first (quoted data the explanation
    may legitimately name); a run never spans a cut.
    """
    prompt_grams: set[tuple[str, ...]] = set()
    for segment in _ITEM_RE.split(prompt):
        prompt_grams |= _ngrams(_words(segment), n)
    return bool(prompt_grams) and not prompt_grams.isdisjoint(_ngrams(_words(completion), n))


class FormatReward:
    """0 for a good one-sentence verdict with a grounded reason, else the sum of the penalties that apply
    (DEFAULT_PENALTIES).

    empty: no letters or digits at all (alone: the other checks are skipped); multi_sentence: anything with a
    letter or digit after the first sentence; no_verdict: `stance(first sentence) == 0`; copy: the whole
    completion shares a `copy_ngram`-word run with the prompt's own text (`copied_ngram`); too_long: the
    first sentence has more than `max_words` words. With the pair's `history` and `target` (TRL passes them as
    columns): ungrounded: the reason names no history item and no genre the target shares with the history
    (`expctr.evaluation.grounding`); outside_title: a quoted span names neither a history item nor the target
    (an invented title, or prompt text quoted as one; `faithfulness.quoted_outside`).
    """

    DEFAULT_PENALTIES: ClassVar[dict[str, float]] = {
        "empty": -2.0, "multi_sentence": -0.5, "no_verdict": -1.0, "copy": -1.0, "too_long": -0.5,
        "ungrounded": -0.5, "outside_title": -1.0}

    def __init__(self, penalties: Mapping[str, float] | None = None, copy_ngram: int = 8, max_words: int = 50,
                 name: str = "format_reward"):
        unknown = set(penalties or {}) - set(self.DEFAULT_PENALTIES)
        if unknown:
            raise ValueError(f"unknown format penalties {sorted(unknown)}")
        self.penalties = {**self.DEFAULT_PENALTIES, **(penalties or {})}
        self.copy_ngram, self.max_words, self.__name__ = int(copy_ngram), int(max_words), name

    def violations(self, completion: Any, prompt: Any = "", prefix: str | None = None, history=None,
                   target=None) -> list[str]:
        """The names of the checks a completion fails (empty list = a good explanation)."""
        text = completion_text(completion, prefix).strip()
        if not _words(text):
            return ["empty"]
        sentence = first_sentence(text)
        out = []
        if _words(text[len(sentence):]):
            out.append("multi_sentence")
        if stance(sentence) == 0:
            out.append("no_verdict")
        if copied_ngram(text, prompt_text(prompt), self.copy_ngram):
            out.append("copy")
        if len(sentence.split()) > self.max_words:
            out.append("too_long")
        if target is not None:
            from expctr.evaluation.faithfulness import quoted_outside
            from expctr.evaluation.grounding import grounded

            if not grounded(sentence, history or [], target):
                out.append("ungrounded")
            if quoted_outside(sentence, history or [], target):
                out.append("outside_title")
        return out

    def score(self, completion: Any, prompt: Any = "", prefix: str | None = None, history=None,
              target=None) -> float:
        return float(sum(self.penalties[v] for v in self.violations(completion, prompt, prefix, history, target)))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        history = kwargs.get("history") or [None] * n
        target = kwargs.get("target") or [None] * n
        return [self.score(c, p, pre, h, t)
                for p, c, pre, h, t in zip(prompts, completions, prefixes(kwargs, n), history, target)]


# --- combining ---------------------------------------------------------------------------------------------

def reward_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class CombinedReward:
    """r = sum_k w_k * r_k over (reward, weight) parts; zero-weight parts are not computed.

    Each part's per-completion values go to TRL's `log_extra` as `<name>/<part>` and their mean to
    `log_metric`; the last call's parts are kept in `last_parts` (for tests and stage logs).
    """

    def __init__(self, parts: Sequence[tuple[RewardFn, float]], name: str = "reward"):
        self.parts = [(fn, float(w)) for fn, w in parts if float(w) != 0.0]
        if not self.parts:
            raise ValueError("combine() needs at least one reward with a non-zero weight")
        names = [reward_name(fn) for fn, _ in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"reward parts need distinct names, got {names}")
        self.__name__ = name
        self.last_parts: dict[str, list[float]] = {}

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        total = np.zeros(len(completions), dtype=np.float64)
        self.last_parts = {}
        for fn, w in self.parts:
            part = [math.nan if v is None else float(v) for v in fn(prompts=prompts, completions=completions,
                                                                    **kwargs)]
            if len(part) != len(completions):
                raise ValueError(f"{reward_name(fn)} returned {len(part)} rewards for "
                                 f"{len(completions)} completions")
            key = reward_name(fn)
            self.last_parts[key] = part
            total += w * np.asarray(part)
            _log_extra(kwargs, f"{self.__name__}/{key}", part)
            log_metric = kwargs.get("log_metric")
            if callable(log_metric) and part:
                log_metric(f"{self.__name__}/{key}", float(np.nanmean(part)))
        return total.tolist()


def combine(rewards_with_weights: Sequence[tuple[RewardFn, float]], name: str = "reward") -> CombinedReward:
    """One TRL reward callable: the weighted sum of its parts, each part logged (see CombinedReward)."""
    return CombinedReward(rewards_with_weights, name=name)


def stage_reward(stage: str, params, lc: RewardFn | None = None, ic: RewardFn | None = None,
                 fmt: RewardFn | None = None) -> CombinedReward:
    """The reward of an RL stage from RewardParams (weights) and the part rewards.

    lc stage: lc_weight * LC + format_weight * Format;
    ic stage: ic_weight * IC + ic_lc_weight * LC + format_weight * Format (lambda = ic_lc_weight).
    A part whose weight is non-zero must be given; zero-weight parts may be None.
    """
    if stage == "lc":
        spec = [(lc, params.lc_weight, "lc"), (fmt, params.format_weight, "format")]
    elif stage == "ic":
        spec = [(ic, params.ic_weight, "ic"), (lc, params.ic_lc_weight, "lc"),
                (fmt, params.format_weight, "format")]
    else:
        raise ValueError(f"unknown RL stage {stage!r}; choose 'lc' or 'ic'")
    parts = []
    for fn, w, label in spec:
        if w == 0:
            continue
        if fn is None:
            raise ValueError(f"the {stage} stage has {label} weight {w} but no {label} reward was given")
        parts.append((fn, w))
    return combine(parts, name=f"{stage}_reward")


__all__ = [
    "KINDS",
    "MIN_PROB",
    "CombinedReward",
    "FormatReward",
    "ICAgreementReward",
    "ICReward",
    "JudgeScorer",
    "LCReward",
    "combine",
    "completion_text",
    "copied_ngram",
    "explanation_of",
    "prompt_text",
    "soft_target_reward",
    "stage_reward",
    "stance",
    "true_label_reward",
]
