"""The Yes/No judge: P(Yes) = softmax over the Yes/No logits at the last prompt position.

Why a last-position readout over a left-padded batch: one forward pass per batch scores every prompt; with
left padding the readout position is the same column (-1) for every row, and explicit position ids from the
attention mask make a padded row see exactly the positions it would see alone.

The Yes/No ids are resolved FROM the tokenizer, never hard-coded: each word is tokenised in the context it is
read in (right after "... So the answer is"), so tokenizers that merge the leading space (GPT-2/SmolLM2
style " Yes") and SentencePiece ones ("▁Yes") both give the right id. If a word splits into several tokens,
its first token is used (consistently, recorded in `YesNoIds.multi_token`); the Yes and No sets must be
disjoint. Case variants (" yes"/" no") that are single tokens join their side; a side's logit is the
logsumexp of its members.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from expctr.llm.prompts import READOUT_AFTER_EXPLANATION, Message, encode_messages

YES_WORDS = (" Yes", " yes")
NO_WORDS = (" No", " no")


@dataclass(frozen=True)
class YesNoIds:
    """Token ids for each side; the first of each is the primary word (" Yes" / " No")."""

    yes: tuple[int, ...]
    no: tuple[int, ...]
    multi_token: tuple[str, ...] = ()  # primary words that needed their first token only


def _continuation_ids(tokenizer, prefix: str, word: str) -> list[int]:
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
    if full[: len(base)] != base or len(full) == len(base):
        # the word merged into the prefix's last token: fall back to tokenising the word alone
        return tokenizer(word, add_special_tokens=False)["input_ids"]
    return full[len(base):]


def yes_no_token_ids(tokenizer, prefix: str = READOUT_AFTER_EXPLANATION,
                     yes_words: Sequence[str] = YES_WORDS, no_words: Sequence[str] = NO_WORDS) -> YesNoIds:
    """Resolve the Yes/No token ids from the tokenizer, in the readout context `prefix`."""
    sides: list[list[int]] = []
    multi: list[str] = []
    for words in (yes_words, no_words):
        ids: list[int] = []
        for j, word in enumerate(words):
            cont = _continuation_ids(tokenizer, prefix, word)
            if not cont:
                raise ValueError(f"tokenizer gives no tokens for {word!r}")
            if len(cont) > 1:
                if j > 0:
                    continue  # variants only count when they are one token
                multi.append(word)
            if cont[0] not in ids:
                ids.append(cont[0])
        sides.append(ids)
    yes, no = sides
    if set(yes) & set(no):
        raise ValueError(f"Yes ids {yes} and No ids {no} overlap: this tokenizer cannot tell them apart")
    return YesNoIds(yes=tuple(yes), no=tuple(no), multi_token=tuple(multi))


def judge_yes_no_logits(model, tokenizer, messages_batch: Sequence[Sequence[Message]], batch_size: int = 8,
                        ids: YesNoIds | None = None, progress: bool = False) -> np.ndarray:
    """(n, 2) array of [Yes, No] logits (logsumexp within each side) at the last prompt position.

    Prompts are sorted by length into batches (less padding) and returned in input order. Messages ending in
    an assistant turn are continued (the judge readout); otherwise the readout is the first assistant token.
    """
    import torch

    if tokenizer.padding_side != "left":
        raise ValueError("the judge needs tokenizer.padding_side == 'left' (use load_tokenizer)")
    ids = ids or yes_no_token_ids(tokenizer)
    encoded = [encode_messages(tokenizer, m) for m in messages_batch]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    out = np.zeros((len(encoded), 2), dtype=np.float64)
    yes_idx = torch.tensor(ids.yes, device=model.device)
    no_idx = torch.tensor(ids.no, device=model.device)
    with torch.inference_mode():
        bar = tqdm(total=len(encoded), desc="judge", disable=not progress, unit="prompt")
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt",
                                  padding=True).to(model.device)
            mask = batch["attention_mask"]
            position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids,
                           use_cache=False, logits_to_keep=1).logits[:, -1, :].float()
            yn = torch.stack([torch.logsumexp(logits[:, yes_idx], -1),
                              torch.logsumexp(logits[:, no_idx], -1)], dim=-1)
            out[idx] = yn.cpu().numpy()
            bar.update(len(idx))
        bar.close()
    return out


def judge_p_yes(model, tokenizer, messages_batch: Sequence[Sequence[Message]], batch_size: int = 8,
                ids: YesNoIds | None = None, progress: bool = False) -> np.ndarray:
    """P(Yes) per prompt = softmax over the [Yes, No] logits at the readout position (input order)."""
    yn = judge_yes_no_logits(model, tokenizer, messages_batch, batch_size=batch_size, ids=ids,
                             progress=progress)
    return np.exp(-np.logaddexp(0.0, yn[:, 1] - yn[:, 0]))  # sigmoid(yes - no), overflow-free


def cache_kwarg(model) -> str:
    """The forward() keyword of the KV cache: `cache` in transformers >= 5.2x, `past_key_values` before."""
    import inspect

    fn = getattr(model, "get_base_model", lambda: model)().forward
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all of `seqs` share (0 for no sequences)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for j in range(n):
        if any(s[j] != first[j] for s in seqs[1:]):
            return j
    return n


def shared_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """The part of `seqs`' common prefix that can be run once for all of them: it leaves every sequence at least
    one token of its own (the position its reading or its next token comes from)."""
    return min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1)


MIN_GLOBAL_PREFIX = 8  # tokens: a batch-wide prefix shorter than this is not worth its own pass


MAX_BATCH_ROWS = 256  # prompts a grouped batch scores at once: each holds its own copy of the shared cache rows


def _capped_batches(trees: Sequence, batch_size: int, rows_of) -> list[list]:
    """Consecutive trees in batches of `batch_size`, closed early before one would take a batch past
    MAX_BATCH_ROWS prompts (a tree is never split). Why: every prompt's row repeats its tree's key/value cache,
    so a batch of many-prompt trees (the grade ladder: 16 slates x 4 pairs x 10 grades = 640 rows, ~2 GB of
    cache) sets the stage's peak memory; batches of few-prompt groups are not affected."""
    batches: list[list] = []
    rows = 0
    for tree in trees:
        n = rows_of(tree)
        if not batches or len(batches[-1]) >= batch_size or (rows + n > MAX_BATCH_ROWS and batches[-1]):
            batches.append([])
            rows = 0
        batches[-1].append(tree)
        rows += n
    return batches


def judge_yes_no_logits_grouped(model, tokenizer, groups: Sequence[Sequence[Sequence[Message]]],
                                batch_size: int = 8, ids: YesNoIds | None = None,
                                progress: bool = False, outer: Sequence[Hashable] | None = None) -> list[np.ndarray]:
    """Per group, a (len(group), 2) array of [Yes, No] logits, equal to `judge_yes_no_logits` on each prompt.

    Why groups: the judge prompts of one pair (the zero-shot readout, one per explanation or per verdict, the
    completions of one RL prompt) share the system text and the user's context - most of their tokens. Each
    group's shared token prefix is run once (a batch of `batch_size` groups, left-padded, with a KV cache);
    the cache rows are then repeated for the group's prompts (`reorder_cache`) and only the differing suffixes
    are run: row = [padding + prefix | padding + suffix], the mask hides both paddings and position ids are
    counted over real tokens, so every row sees exactly its own prompt.

    `outer` labels groups that share a beginning too (one user's slate: the system text, the question and the
    history come before each pair's target line): the prompts then run as a tree of three levels - each outer
    prefix once, each group's own part once over it, each prompt's suffix over that - and `batch_size` counts
    outer groups. Below all of it, the beginning that every prompt of a batch shares (the system text and the
    question) runs once, as one row. A batch also stops before it would score more than MAX_BATCH_ROWS prompts.
    """
    import torch

    if tokenizer.padding_side != "left":
        raise ValueError("the judge needs tokenizer.padding_side == 'left' (use load_tokenizer)")
    ids = ids or yes_no_token_ids(tokenizer)
    encoded = [[encode_messages(tokenizer, m) for m in group] for group in groups]
    out = [np.zeros((len(g), 2), dtype=np.float64) for g in encoded]
    labels = list(outer) if outer is not None else list(range(len(encoded)))
    if len(labels) != len(encoded):
        raise ValueError(f"{len(labels)} outer labels for {len(encoded)} groups")
    trees: dict[Hashable, list[int]] = {}
    for g, lab in enumerate(labels):
        if encoded[g]:
            trees.setdefault(lab, []).append(g)
    dev, pad = model.device, tokenizer.pad_token_id
    yes_idx = torch.tensor(ids.yes, device=dev)
    no_idx = torch.tensor(ids.no, device=dev)
    # each group's shared part: its common prefix, leaving each of its prompts at least one token
    shared_of = {g: shared_prefix_len(encoded[g]) for gs in trees.values() for g in gs}
    # batches of trees with similar suffix widths, then similar shared parts (as `generate_opened` batches): every
    # padded position costs what a real one does
    order = sorted(trees.values(), key=lambda gs: (-max(len(e) - shared_of[g] for g in gs for e in encoded[g]),
                                                   -max(shared_of[g] for g in gs)))

    def run(segs, masks, cache):
        """One level: each row's segment over the cache, left-padded, positions counted over real tokens."""
        width = max(len(x) for x in segs)
        seg_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in segs], device=dev)
        mask = torch.cat([*masks, seg_mask], dim=1)
        logits = model(input_ids=torch.tensor([[pad] * (width - len(x)) + list(x) for x in segs], device=dev),
                       attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, -width:],
                       use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache}).logits[:, -1, :]
        return logits, [*masks, seg_mask]

    def regroup(cache, masks, index):
        cache.reorder_cache(torch.tensor(index, device=dev))
        return [m[index] for m in masks]

    with torch.inference_mode():
        from transformers import DynamicCache

        bar = tqdm(total=sum(len(g) for g in encoded), desc="judge", disable=not progress, unit="prompt")
        for batch in _capped_batches(order, batch_size, lambda gs: sum(len(encoded[g]) for g in gs)):
            rows = [(t, g, j) for t, gs in enumerate(batch) for g in gs for j in range(len(encoded[g]))]
            # level 0: each tree's common prefix; with an outer level it stops a token short of every group's
            # shared part, so that each group has a part of its own (level 1) before its prompts' suffixes
            members = [[encoded[g][j] for g in gs for j in range(len(encoded[g]))] for gs in batch]
            cut0 = [min(common_prefix_len(m), min(shared_of[g] for g in gs) - (outer is not None))
                    for m, gs in zip(members, batch)]
            if min(cut0) < 1:
                raise ValueError("every judge prompt needs at least three tokens")
            cache, masks = DynamicCache(), []
            # the batch's common beginning (system text and question: the same for every pair) runs once, as
            # one row, and is repeated for the trees; each tree's level 0 then starts after it
            glob = shared_prefix_len([m[0][:c] for m, c in zip(members, cut0)]) if len(batch) > 1 else 0
            if glob >= MIN_GLOBAL_PREFIX:
                _, masks = run([members[0][0][:glob]], [], cache)
                masks = regroup(cache, masks, [0] * len(batch))
            else:
                glob = 0
            _, masks = run([m[0][glob:c] for m, c in zip(members, cut0)], masks, cache)
            begin = {(t, g): cut0[t] for t, g, _ in rows}
            if outer is None:
                parent = [t for t, _, _ in rows]
            else:  # level 1: each group's own shared part after its tree's prefix (its pair's target line)
                nodes = list(dict.fromkeys((t, g) for t, g, _ in rows))
                for t, g in nodes:
                    begin[t, g] = shared_of[g]
                masks = regroup(cache, masks, [t for t, _ in nodes])
                _, masks = run([encoded[g][0][cut0[t]:begin[t, g]] for t, g in nodes], masks, cache)
                parent = [nodes.index((t, g)) for t, g, _ in rows]
            masks = regroup(cache, masks, parent)
            logits, _ = run([encoded[g][j][begin[t, g]:] for t, g, j in rows], masks, cache)
            logits = logits.float()
            yn = torch.stack([torch.logsumexp(logits[:, yes_idx], -1),
                              torch.logsumexp(logits[:, no_idx], -1)], dim=-1).cpu().numpy()
            for r, (_, g, j) in enumerate(rows):
                out[g][j] = yn[r]
            bar.update(len(rows))
        bar.close()
    return out


def p_yes_from_logits(yes_no: np.ndarray) -> np.ndarray:
    """P(Yes) = softmax over [Yes, No] logits = sigmoid(yes - no), overflow-free."""
    yes_no = np.asarray(yes_no, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, yes_no[..., 1] - yes_no[..., 0]))


def judge_p_yes_grouped(model, tokenizer, groups: Sequence[Sequence[Sequence[Message]]], batch_size: int = 8,
                        ids: YesNoIds | None = None, progress: bool = False,
                        outer: Sequence[Hashable] | None = None) -> list[np.ndarray]:
    """P(Yes) per prompt of each group (see `judge_yes_no_logits_grouped`), in input order."""
    return [p_yes_from_logits(g) for g in judge_yes_no_logits_grouped(model, tokenizer, groups, batch_size, ids,
                                                                      progress, outer)]


def _grouped_part(model, tokenizer, part, batch_size: int, progress: bool) -> list[np.ndarray]:
    groups, outer = part
    return judge_p_yes_grouped(model, tokenizer, groups, batch_size, None, progress, outer)


def judge_p_yes_side_by_side(pool, model, tokenizer, load, groups: Sequence[Sequence[Sequence[Message]]],
                             batch_size: int = 8, progress: bool = False,
                             outer: Sequence[Hashable] | None = None) -> list[np.ndarray]:
    """`judge_p_yes_grouped` with the groups cut into contiguous parts (never between groups of one `outer`
    label) that run side by side in `pool` (`expctr.llm.side_by_side.SideBySide`): the first here with `model`,
    the others on workers holding the model `load` gives (the same judge). No pool, or an inactive one, runs
    `judge_p_yes_grouped` as it is."""
    labels = list(outer) if outer is not None else list(range(len(groups)))
    ranges = pool.ranges(labels) if pool is not None else []
    if len(ranges) < 2:
        return judge_p_yes_grouped(model, tokenizer, groups, batch_size, None, progress, outer)
    parts = [(list(groups[a:b]), None if outer is None else labels[a:b]) for a, b in ranges]
    return [g for done in pool.run(_grouped_part, parts, model, tokenizer, load, batch_size, progress) for g in done]


SIDE_BY_SIDE_MIN_GROUPS = 64  # fewer groups (an RL step's completions) are not worth a worker's round trip


class JudgeScorer:
    """messages_batch -> P(Yes) array with a causal LM judge, in eval mode, without grad.

    Prompts that share their context (the completions of one RL prompt, the two verdict sentences of a pair)
    are scored with the grouped judge (`judge_p_yes_grouped`: the shared tokens run once). Scores are memoised
    by prompt (up to `memo_size`), so the LC and IC parts of one stage reward, or a sentence scored twice,
    cost one judge pass. `disable_adapter=True` scores with a peft model's adapter switched off, i.e. with the
    frozen base model under the explainer's LoRA (one copy of the weights in memory). The model's train/eval
    mode is restored. With `pool` and `load` set (an open `expctr.llm.side_by_side.SideBySide` and the loader
    of this same judge), grouped reads of at least SIDE_BY_SIDE_MIN_GROUPS groups are split over its processes.
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, disable_adapter: bool = False,
                 memo_size: int = 4096):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.disable_adapter = int(batch_size), bool(disable_adapter)
        self.memo_size = int(memo_size)
        self._memo: dict[tuple, float] = {}
        # set while a `SideBySide` pool is open (with the loader of this same judge): large grouped reads split
        self.pool, self.load = None, None

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
                    pool = self.pool if len(groups) >= SIDE_BY_SIDE_MIN_GROUPS and not self.disable_adapter \
                        else None
                    grouped = judge_p_yes_side_by_side(pool, self.model, self.tokenizer, self.load,
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
