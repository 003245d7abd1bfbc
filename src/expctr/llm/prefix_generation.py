"""Batched one-sentence generation that prefills each shared prompt prefix once (the serving path).

When one user's candidates are explained together, every prompt is the same system text and history up to
the target line: most of each prompt. On a CPU the prefill of those tokens is most of the work, so each
*group* of prompts (one user's, or any prompts that share a beginning) has its common prefix prefilled once
(all groups in one left-padded batch: batch-1 passes of a few hundred tokens use a CPU's matmuls poorly), and
each group's key/value cache is repeated for its prompts:

    row i = batch-wide beginning (cached) + padding (masked) + rest of its group's prefix (cached)
            + padding (masked) + suffix_i

The batch-wide beginning (system text and task, ~54 tokens: the same for every user) runs once, as one row
(`bench/global_prefix.py`, warmed up and alternated: ExpCTR-Aug readings 1.13x, test explanations 1.19x faster).

Several users' requests can so share one decoding batch (the service merges concurrent cold requests). The
attention mask hides the padding, and each row's positions are counted over its own real tokens, so every
row sees exactly its own prompt: greedy text equals plain `generate`'s.

Decoding is a plain loop over the model's forward pass rather than `model.generate`, for two reasons
measured to matter on a CPU: a row leaves the batch the moment it has ended its sentence (or emitted eos),
so the remaining rows do not pay for it; and only the last position's logits are computed during prefill
(`logits_to_keep=1`; the vocabulary projection of every prompt position is ~3x the cost of the last
layer). Stopping is `expctr.llm.generation`'s sentence rule, so the texts and token counts are the same.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

from expctr.llm.generation import GenerationResult, encode_prompt, generation_result, sentence_end
from expctr.llm.judge import MIN_GLOBAL_PREFIX, cache_kwarg, common_prefix_len, shared_prefix_len


def plan_groups(encoded: Sequence[Sequence[int]], groups: Sequence[Hashable] | None,
                min_prefix: int = 8) -> list[tuple[list[int], int]]:
    """(row indices, shared prefix length) per prefill group. Rows of one group that share fewer than
    `min_prefix` tokens become groups of one (prefix = their prompt but its last token)."""
    labels = list(groups) if groups is not None else [0] * len(encoded)
    if len(labels) != len(encoded):
        raise ValueError(f"{len(labels)} group labels for {len(encoded)} prompts")
    rows_of: dict[Hashable, list[int]] = {}
    for i, g in enumerate(labels):
        rows_of.setdefault(g, []).append(i)
    plan = []
    for rows in rows_of.values():
        p = shared_prefix_len([encoded[i] for i in rows])
        if len(rows) > 1 and p < min_prefix:
            plan += [([i], len(encoded[i]) - 1) for i in rows]
        else:
            plan.append((rows, p))
    return plan


def _prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt given as ids already, as rendered text, or as chat messages."""
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return encode_prompt(tokenizer, prompt)


_TIMERS: list[dict[str, float]] = []


@contextlib.contextmanager
def forward_seconds() -> Iterator[dict[str, float]]:
    """Wall seconds the generator spends in prefill (several positions a row) and in decoding (one position a
    row) while the context is open: where a request's time goes, for benchmarks."""
    acc = {"prefill": 0.0, "decode": 0.0}
    _TIMERS.append(acc)
    try:
        yield acc
    finally:
        _TIMERS.remove(acc)


def _forward(model, cache_kw: str, cache, want_hidden: bool, **inputs):
    """(last position's logits, last layer's hidden states of every input position or None)."""
    t0 = time.perf_counter()
    out = model(**inputs, **{cache_kw: cache}, use_cache=True, logits_to_keep=1, output_hidden_states=want_hidden)
    logits = out.logits[:, -1, :]
    if _TIMERS:
        kind = "decode" if inputs["input_ids"].shape[1] == 1 else "prefill"
        for acc in _TIMERS:
            acc[kind] += time.perf_counter() - t0
    return logits, (out.hidden_states[-1] if want_hidden else None)


@dataclass
class OpenedResult:
    """Per prompt, in input order: what `generate_opened` wrote after the forced opening, and what it read.

    `generation` holds the continuation after the opening (its `texts` are the first sentence of the
    continuation); `openings` the opening text each row was given; `first_logits` the logits of the requested
    tokens at the end of the prompt (before the opening: e.g. the verdict); `hidden` the mean last-layer state
    over the opening and the generated tokens, (n, d) float32, or None; `states` the last-layer state at the
    end of the prompt (where `first_logits` are read), (n, d) float32, or None."""

    generation: GenerationResult
    openings: list[str]
    first_logits: list[list[float]]
    hidden: list[list[float]] | None
    states: list[list[float]] | None = None


def generate_shared_prefix(model, tokenizer, prompts: Sequence[str | Sequence[int]], *, groups: Sequence[Hashable] | None = None,
                           max_new_tokens: int | Sequence[int] = 48, do_sample: bool = False,
                           temperature: float = 1.0, seed: int = 0, seeds: Sequence[int] | None = None,
                           min_prefix: int = 8, banned_token_ids: Sequence[int] | None = None,
                           stop_loops: bool = False) -> GenerationResult:
    """The first sentence per prompt (greedy unless `do_sample`), all prompts in one batch. A prompt is
    rendered text (tokenised without adding special tokens) or its token ids.

    `groups` labels prompts whose common beginning should be prefilled once (default: all one group).
    `max_new_tokens` may differ per prompt. Sampling draws each row from its own generator seeded with
    `seeds[i]` (default `seed + i`), so a row's text does not depend on what it was batched with.
    `banned_token_ids` are never generated (e.g. `expctr.llm.openings.quote_token_ids`: a quote-free reason).
    `stop_loops`: a row caught in a loop (`looping`) stops there, unended, rather than at its cap.
    """
    return _generate(model, tokenizer, prompts, groups=groups, max_new_tokens=max_new_tokens, do_sample=do_sample,
                     temperature=temperature, seed=seed, seeds=seeds, min_prefix=min_prefix,
                     banned_token_ids=banned_token_ids, stop_loops=stop_loops)[0]


def generate_opened(model, tokenizer, prompts: Sequence[str | Sequence[int]],
                    opening: Callable[[int, list[float]], str] | None,
                    first_token_ids: Sequence[int], *, groups: Sequence[Hashable] | None = None,
                    max_new_tokens: int | Sequence[int] = 48, pool_hidden: bool = False, batch_size: int = 32,
                    min_prefix: int = 8, progress: bool = False, desc: str = "explain",
                    banned_token_ids: Sequence[int] | None = None, read_states: bool = False,
                    decode_batch_size: int | None = None, opening_known: bool = False,
                    stop_loops: bool = False) -> OpenedResult:
    """Greedy first sentences, each row continued from an opening chosen after reading the prompt.

    For every prompt: prefill it (shared prefixes once per group), read the logits of `first_token_ids` at its
    last position, ask `opening(i, logits)` for the text the assistant turn goes on with (e.g. a verdict
    phrase worded by the explainer's own confidence, or the verdict a score chose), feed that text, and decode
    until the sentence ends. One prefill serves both the reading and the generation. Rows are processed in
    batches of about `batch_size`, a group never split; results come back in input order. With
    `opening=None` and `max_new_tokens=0` it only reads (no text is written). `banned_token_ids` are never
    decoded after the opening (the opening itself is given text and may hold them). `read_states` also returns
    the last-layer state where the logits are read (the explainer's state at its verdict).
    `decode_batch_size` (default: `batch_size`): consecutive prefilled batches are decoded together up to about
    this many rows (a decoding step's fixed part is shared by more rows; prefill is best at ~32 rows).
    `opening_known`: the openings do not depend on what is read (`opening(i, [])` is asked before the prefill;
    e.g. the verdict a score chose, as served), so each row's opening is fed in the pass of its own suffix and
    the logits are read inside that pass at the prompt's end: one pass less, and one row's padding is the
    spread of suffix plus opening rather than of each (a served slate's two passes 0.79 s -> 0.66 s).
    `stop_loops`: a row caught in a loop (`looping`) stops there, unended, rather than at its cap.
    """
    import numpy as np

    n = len(prompts)
    if n == 0:
        return OpenedResult(generation_result([], [], []), [], [], [] if pool_hidden else None,
                            [] if read_states else None)
    encoded = _checked(tokenizer, prompts)
    labels = list(groups) if groups is not None else list(range(n))
    decode_rows = max(int(decode_batch_size or batch_size), 1)
    caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
    # batches of groups with similar suffix widths, then similar prefix widths: every padded position is computed
    # like a real one, and sorting by whole length would pad a batch of one-row groups (1-token suffixes) to the
    # ~55-token suffixes of a single slate in it (measured on the pipeline's pairs: 13 % of the prefill -> 2-5 %)
    plan = plan_groups(encoded, labels, min_prefix)
    batches: list[list[int]] = [[]]
    for rows, _ in sorted(plan, key=lambda g: (-(max(len(encoded[i]) for i in g[0]) - g[1]), -g[1])):
        if batches[-1] and len(batches[-1]) + len(rows) > batch_size:
            batches.append([])
        batches[-1].extend(rows)
    texts, raw, counts, complete = [""] * n, [""] * n, [0] * n, [False] * n
    openings, first = [""] * n, [[] for _ in range(n)]
    hidden: list[list[float]] = [[] for _ in range(n)]
    states: list[list[float]] = [[] for _ in range(n)]
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=desc, disable=not progress, unit="prompt")
    pending: list[tuple[list[int], _Decoding]] = []  # prefilled batches waiting to be decoded together

    def decode_pending() -> None:
        state = _merged([st for _, st in pending])
        rows = [i for r, _ in pending for i in r]
        new_tokens, ended = _decode(model, tokenizer, state, pool_hidden=pool_hidden,
                                    banned_token_ids=banned_token_ids, stop_loops=stop_loops)
        res = generation_result([tokenizer.decode(t, skip_special_tokens=True) for t in new_tokens],
                                [len(t) for t in new_tokens], ended)
        for r, (i, h) in enumerate(zip(rows, _pooled(state, len(rows)))):
            texts[i], raw[i], counts[i], complete[i] = (res.texts[r], res.raw_texts[r], res.n_new_tokens[r],
                                                        res.complete[r])
            hidden[i] = h
        bar.update(len(rows))
        pending.clear()

    for rows in (b for b in batches if b):
        state, extra = _prefill(model, tokenizer, [encoded[i] for i in rows], groups=[labels[i] for i in rows],
                                caps=[caps[i] for i in rows], min_prefix=min_prefix,
                                first_token_ids=list(first_token_ids),
                                opening=None if opening is None else (lambda r, logits, rows=rows: opening(rows[r], logits)),
                                pool_hidden=pool_hidden, opening_known=opening_known)
        for r, i in enumerate(rows):
            openings[i], first[i] = extra["openings"][r], extra["first"][r]
            if read_states:
                states[i] = extra["states"][r]
        if state is None:  # a reading only
            for i in rows:
                complete[i] = True
            bar.update(len(rows))
            continue
        pending.append((rows, state))
        if sum(len(r) for r, _ in pending) >= decode_rows:
            decode_pending()
    if pending:
        decode_pending()
    bar.close()
    gen = GenerationResult(texts=texts, raw_texts=raw, n_new_tokens=counts, complete=complete)
    return OpenedResult(gen, openings, first, [list(map(float, np.asarray(h))) for h in hidden] if pool_hidden else None,
                        states if read_states else None)


@dataclass
class _Decoding:
    """A batch between its prefill and its decoding: the cache (one row per prompt), the attention mask and next
    positions, the logits to pick the first new token from, each row's cap and sampler, and the running
    sums of pooled last-layer states."""

    cache: object
    attention: object
    next_pos: object
    logits: object
    caps: list[int]
    gens: list
    h_sum: object | None = None
    h_count: list[int] | None = None

    def pool(self, h, real, active: list[int]) -> None:
        """Add the last-layer states of the real (unmasked) new positions of the `active` rows to their sums."""
        import torch

        h = h.float()
        part = (h * torch.as_tensor(real, device=h.device, dtype=h.dtype)[..., None]).sum(1)
        if self.h_sum is None:
            self.h_sum = torch.zeros((len(self.caps), h.shape[-1]), device=h.device)
            self.h_count = [0] * len(self.caps)
        for r, i in enumerate(active):
            self.h_sum[i] += part[r]
            self.h_count[i] += int(sum(real[r]))


def _merged(parts: list[_Decoding]) -> _Decoding:
    """One decoding batch from several prefilled ones: each cache and mask left-padded (masked zeros) to the
    widest, then stacked. A decoding step costs a fixed part (the weights read once, ~30 layers of small ops)
    plus a part per row (`bench/decode_batches.py`: 256 test pairs decoded in 15.6 s at 32 rows, 10.7 s at 128),
    while prefill is best at ~32 rows."""
    import torch

    if len(parts) == 1:
        return parts[0]
    width = max(p.attention.shape[1] for p in parts)

    def left(t, dim: int):
        short = width - t.shape[dim]
        if not short:
            return t
        shape = list(t.shape)
        shape[dim] = short
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    cache = parts[0].cache
    for li, layer in enumerate(cache.layers):
        others = [p.cache.layers[li] for p in parts]
        layer.keys = torch.cat([left(o.keys, 2) for o in others])
        layer.values = torch.cat([left(o.values, 2) for o in others])
    pooled = any(p.h_sum is not None for p in parts)
    return _Decoding(
        cache=cache, attention=torch.cat([left(p.attention, 1) for p in parts]),
        next_pos=torch.cat([p.next_pos for p in parts]), logits=torch.cat([p.logits for p in parts]),
        caps=[c for p in parts for c in p.caps], gens=[g for p in parts for g in p.gens],
        h_sum=torch.cat([p.h_sum for p in parts]) if pooled else None,
        h_count=[c for p in parts for c in p.h_count] if pooled else None)


LOOP_REPEATS, LOOP_LONGEST = 3, 8


def looping(tokens: Sequence[int], repeats: int = LOOP_REPEATS, longest: int = LOOP_LONGEST) -> bool:
    """Whether the tokens end in one run of 1 to `longest` tokens written `repeats` times in a row.

    Why: a greedy reason that falls into a loop ("a classic, classic, classic, ..." or "the audience of the
    audience of the ...") never ends its sentence: it runs to the cap, fails the completeness check and is
    written again anyway, while its slate decodes on for it alone (6 of 160 served rows ran to the cap of 40
    tokens, every one in such a loop, each ~15 steps of ~40 ms after the rest of its slate had ended)."""
    for k in range(1, longest + 1):
        if len(tokens) < repeats * k:
            break
        tail = list(tokens[-k:])
        if all(list(tokens[len(tokens) - (r + 1) * k: len(tokens) - r * k]) == tail for r in range(1, repeats)):
            return True
    return False


def _stop_ids(model, tokenizer) -> set:
    eos = model.generation_config.eos_token_id
    return {tokenizer.pad_token_id, *(eos if isinstance(eos, list) else [eos if eos is not None else
                                                                       tokenizer.eos_token_id])}


def _opening_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    forced = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if min(len(f) for f in forced) < 1:
        raise ValueError("every opening needs at least one token")
    return forced


def _prefill(model, tokenizer, encoded, *, groups, caps, do_sample: bool = False, row_seeds=(), min_prefix: int = 8,
             first_token_ids: Sequence[int] | None = None, opening: Callable[[int, list[float]], str] | None = None,
             pool_hidden: bool = False, opening_known: bool = False) -> tuple[_Decoding | None, dict]:
    """One batch's prefill (shared prefixes once), optionally the first-token logits read and an opening fed
    (in the suffixes' pass when `opening_known`, else in a pass after the reading).
    Returns the batch ready to decode (None for a reading only: nothing to write) and what was read."""
    import torch
    from transformers import DynamicCache

    n = len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = model.device
    cache_kw = cache_kwarg(model)
    plan = plan_groups(encoded, groups, min_prefix)
    group_of = {i: g for g, (rows, _) in enumerate(plan) for i in rows}
    p_len = [plan[group_of[i]][1] for i in range(n)]
    extra: dict[str, list] = {"openings": [""] * n, "first": [[] for _ in range(n)], "hidden": [None] * n,
                              "states": [None] * n}

    with torch.inference_mode():
        # 0. the beginning every group shares (system text and task: the same for every user) runs once, as one
        # row repeated for the groups; 1. every group's own part of its prefix, once, the groups side by side
        # (left-padded to the longest), after it
        prefixes = [encoded[rows[0]][:p] for rows, p in plan]
        glob = shared_prefix_len(prefixes) if len(plan) > 1 else 0
        glob = glob if glob >= MIN_GLOBAL_PREFIX else 0
        cache = DynamicCache()
        if glob:
            _forward(model, cache_kw, cache, False, input_ids=torch.tensor([prefixes[0][:glob]], device=dev),
                     attention_mask=torch.ones((1, glob), dtype=torch.long, device=dev),
                     position_ids=torch.arange(glob, device=dev)[None])
            cache.reorder_cache(torch.zeros(len(plan), dtype=torch.long, device=dev))
        own = [x[glob:] for x in prefixes]
        o_max = max(len(x) for x in own)
        prefix_rows = [[1] * glob + [0] * (o_max - len(x)) + [1] * len(x) for x in own]
        prefix_mask = torch.tensor(prefix_rows, device=dev)
        _forward(model, cache_kw, cache, False,
                 input_ids=torch.tensor([[pad] * (o_max - len(x)) + x for x in own], device=dev),
                 attention_mask=prefix_mask, position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0)[:, glob:])
        cache.reorder_cache(torch.tensor([group_of[i] for i in range(n)], device=dev))  # one cache row per prompt

        # 2. every row's own suffix (and its opening, when known), left-padded, positions continuing its prefix
        suffixes = [encoded[i][p_len[i]:] for i in range(n)]
        fed: list[list[int]] = [[] for _ in range(n)]
        if opening is not None and opening_known:
            extra["openings"] = [opening(i, []) for i in range(n)]
            fed = _opening_ids(tokenizer, extra["openings"])
        rows_ids = [s + f for s, f in zip(suffixes, fed)]
        width = max(len(s) for s in rows_ids)
        ids = [[pad] * (width - len(s)) + s for s in rows_ids]
        mask = [prefix_rows[group_of[i]] + [0] * (width - len(s)) + [1] * len(s) for i, s in enumerate(rows_ids)]
        pos = [[0] * (width - len(s)) + list(range(p_len[i], p_len[i] + len(s))) for i, s in enumerate(rows_ids)]
        attention = torch.tensor(mask, device=dev)
        next_pos = torch.tensor([p_len[i] + len(s) for i, s in enumerate(rows_ids)], device=dev)
        want_hidden = bool(first_token_ids) or (pool_hidden and any(fed))
        logits, h_last = _forward(model, cache_kw, cache, want_hidden, input_ids=torch.tensor(ids, device=dev),
                                  attention_mask=attention, position_ids=torch.tensor(pos, device=dev))

        # 2b. the logits asked for (at the prompt's end), then each row's opening fed as forced tokens
        # (right-aligned, padding masked) unless it was fed in the suffixes' pass
        if first_token_ids:
            # in float32 from the last hidden state: a bfloat16 model's own logits are too coarse (~0.1 apart near
            # their usual size) for a difference of two of them to be a score
            at_end = h_last[torch.arange(n, device=dev), torch.tensor([width - 1 - len(f) for f in fed], device=dev)]
            head = model.get_output_embeddings()
            w = head.weight[list(first_token_ids)].float()
            picked = at_end.float() @ w.T
            if getattr(head, "bias", None) is not None:
                picked = picked + head.bias[list(first_token_ids)].float()
            extra["first"] = picked.cpu().tolist()
            extra["states"] = at_end.float().cpu().tolist()
        if max(caps) == 0 and opening is None:  # a reading only: nothing to write
            return None, extra
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in row_seeds] if do_sample else []
        state = _Decoding(cache, attention, next_pos, logits, list(caps), gens)
        if opening is not None and opening_known:
            if pool_hidden:
                state.pool(h_last, [[0] * (width - len(f)) + [1] * len(f) for f in fed], list(range(n)))
        elif opening is not None:
            texts = [opening(i, extra["first"][i]) for i in range(n)]
            extra["openings"] = texts
            forced = _opening_ids(tokenizer, texts)
            f_width = max(len(f) for f in forced)
            f_ids = [[pad] * (f_width - len(f)) + f for f in forced]
            real = [[0] * (f_width - len(f)) + [1] * len(f) for f in forced]
            f_pos = [[0] * (f_width - len(f)) + list(range(int(next_pos[i]), int(next_pos[i]) + len(f)))
                     for i, f in enumerate(forced)]
            state.attention = torch.cat([attention, torch.tensor(real, device=dev)], dim=1)
            state.logits, h = _forward(model, cache_kw, cache, pool_hidden, input_ids=torch.tensor(f_ids, device=dev),
                                       attention_mask=state.attention, position_ids=torch.tensor(f_pos, device=dev))
            if pool_hidden:
                state.pool(h, real, list(range(n)))
            state.next_pos = next_pos + torch.tensor([len(f) for f in forced], device=dev)
    return state, extra


def _decode(model, tokenizer, state: _Decoding, *, do_sample: bool = False, temperature: float = 1.0,
            pool_hidden: bool = False, banned_token_ids: Sequence[int] | None = None, stop_loops: bool = False
            ) -> tuple[list[list[int]], list[bool]]:
    """Decode a prefilled batch; a row leaves it once it has ended a sentence, emitted eos, or hit its cap (or,
    with `stop_loops`, is looping). Returns each row's new tokens and whether it ended."""
    import torch

    n, dev, cache_kw, stop_ids = len(state.caps), model.device, cache_kwarg(model), _stop_ids(model, tokenizer)
    banned = torch.tensor(sorted(set(banned_token_ids)), device=dev) if banned_token_ids else None
    cache, attention, next_pos, logits = state.cache, state.attention, state.next_pos, state.logits
    new_tokens: list[list[int]] = [[] for _ in range(n)]
    ended = [False] * n
    active = list(range(n))
    with torch.inference_mode():
        while True:
            if banned is not None:
                logits = logits.index_fill(-1, banned, float("-inf"))
            if do_sample:
                probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
                picked = [int(torch.multinomial(probs[r], 1, generator=state.gens[i]).item())
                          for r, i in enumerate(active)]
            else:
                picked = logits.argmax(dim=-1).tolist()
            keep = []
            for r, (i, tok) in enumerate(zip(active, picked)):
                if tok in stop_ids:
                    ended[i] = True
                    continue
                new_tokens[i].append(tok)
                if sentence_end(tokenizer.decode(new_tokens[i], skip_special_tokens=True), final=False) is not None:
                    ended[i] = True
                elif len(new_tokens[i]) < state.caps[i] and not (stop_loops and looping(new_tokens[i])):
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                attention, next_pos = attention[idx], next_pos[idx]
            active = [active[r] for r in keep]
            step = torch.tensor([[new_tokens[i][-1]] for i in active], device=dev)
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            logits, h = _forward(model, cache_kw, cache, pool_hidden, input_ids=step, attention_mask=attention,
                                 position_ids=next_pos[:, None])
            if pool_hidden:
                state.pool(h, [[1]] * len(active), active)
            next_pos = next_pos + 1
    return new_tokens, ended


def _pooled(state: _Decoding | None, n: int) -> list:
    """Each row's mean pooled state (numpy), or None per row where nothing was pooled."""
    if state is None or state.h_sum is None:
        return [None] * n
    return [(state.h_sum[i] / max(state.h_count[i], 1)).cpu().numpy() for i in range(n)]


def _generate(model, tokenizer, prompts, *, groups, max_new_tokens, do_sample: bool = False, temperature: float = 1.0,
              seed: int = 0, seeds=None, min_prefix: int = 8, first_token_ids: Sequence[int] | None = None,
              opening: Callable[[int, list[float]], str] | None = None, pool_hidden: bool = False,
              banned_token_ids: Sequence[int] | None = None, stop_loops: bool = False):
    """One batch: prefill (shared prefixes once), optionally read first-token logits and feed an opening, decode."""
    n = len(prompts)
    if n == 0:
        return generation_result([], [], []), {"openings": [], "first": [], "hidden": []}
    encoded = _checked(tokenizer, prompts)
    caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
    row_seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    if len(caps) != n or len(row_seeds) != n:
        raise ValueError("max_new_tokens and seeds need one value per prompt")
    state, extra = _prefill(model, tokenizer, encoded, groups=groups, caps=caps, do_sample=do_sample,
                            row_seeds=row_seeds, min_prefix=min_prefix, first_token_ids=first_token_ids,
                            opening=opening, pool_hidden=pool_hidden)
    if state is None:
        return generation_result([""] * n, [0] * n, [True] * n), extra
    new_tokens, ended = _decode(model, tokenizer, state, do_sample=do_sample, temperature=temperature,
                                pool_hidden=pool_hidden, banned_token_ids=banned_token_ids, stop_loops=stop_loops)
    if pool_hidden:
        extra["hidden"] = _pooled(state, n)
    raw = [tokenizer.decode(t, skip_special_tokens=True) for t in new_tokens]
    return generation_result(raw, [len(t) for t in new_tokens], ended), extra


def _checked(tokenizer, prompts) -> list[list[int]]:
    encoded = [_prompt_ids(tokenizer, p) for p in prompts]
    if min(len(e) for e in encoded) < 2:
        raise ValueError("every prompt needs at least two tokens")
    return encoded


__all__ = ["OpenedResult", "common_prefix_len", "forward_seconds", "generate_opened", "generate_shared_prefix",
           "plan_groups"]
