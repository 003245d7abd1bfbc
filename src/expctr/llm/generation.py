"""Batched one-sentence generation for the explainer.

Why: explanations are one sentence, so a row stops as soon as it has ended one (a per-row stopping
criterion; the batch stops when every row has) and the text is cut at the first sentence end. Prompts are
sorted by length into batches to cut left padding, and results are returned in the caller's order.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from expctr.llm.prompts import Message, encode_messages

# Sentence terminator(s) plus closing quotes/brackets.
_END_RE = re.compile(r"[.!?]+[\"'”’)\]]*")
# Words whose trailing "." does not end a sentence (titles: "Mr. Holland's Opus", "Dr. Strangelove").
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "vol", "no", "mt", "ft", "e.g",
                            "i.e", "approx", "prof", "gen", "lt", "col", "sgt", "capt"})


_INITIALISM_RE = re.compile(r"(?:[a-z]\.)+[a-z]")  # "l.a" of "L.A.", "u.s" of "U.S." (the last dot is the match)


def _is_abbreviation(before: str) -> bool:
    word = before.rsplit(None, 1)[-1] if before.strip() else ""
    word = word.lstrip("\"'(‘“[").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or bool(_INITIALISM_RE.fullmatch(word))


def _inside_quote(before: str, terminator: str) -> bool:
    """The terminator stands inside an open double-quoted span ("L.A. Confidential") and does not close it:
    a title's punctuation, not the sentence's."""
    opened = before.count('"') % 2 == 1 or before.count("“") > before.count("”")
    return opened and not any(q in terminator for q in ('"', "”"))


def sentence_end(text: str, final: bool = True) -> int | None:
    """Index just past the first sentence's end in `text`, or None if it has not ended (yet).

    A sentence ends at a newline after some content, or at . ! ? (plus closing quotes) followed by
    whitespace and a non-lowercase character ("Airplane! because" and "Dr. No" do not end it). Punctuation
    inside an open quoted title ("L.A. Confidential", "Dude, Where's My Car? The") does not end it. With
    `final=False` (text still being generated) a terminator at the very end is undecided; with
    `final=True` it ends the sentence.
    """
    start = len(text) - len(text.lstrip())
    newline = text.find("\n", start)
    limit = newline if newline >= 0 else len(text)
    for m in _END_RE.finditer(text, start, limit):
        single_dot = m.group().startswith(".") and not m.group().startswith("..")
        if single_dot and _is_abbreviation(text[start:m.start()]):
            continue
        rest = text[m.end():limit]
        if rest.strip() and _inside_quote(text[start:m.start()], m.group()):
            continue
        if not rest.strip():
            if newline >= 0 or final:
                return m.end()
            return None  # undecided until the next token arrives
        if rest[0].isspace() and not rest.lstrip()[0].islower():
            return m.end()
    return newline if newline >= 0 else None


def first_sentence(text: str) -> str:
    """The first sentence of `text`, stripped (all of it, stripped, if no sentence end is found)."""
    end = sentence_end(text, final=True)
    return (text[:end] if end is not None else text).strip()


@dataclass
class GenerationResult:
    """Per prompt, in input order: the first sentence, the raw decoded continuation, new-token count
    (excluding eos/padding; includes the one look-ahead token that confirmed the sentence end), and whether
    the row ended by itself (False = cut by max_new_tokens: its text may be a fragment)."""

    texts: list[str]
    raw_texts: list[str]
    n_new_tokens: list[int]
    complete: list[bool]
    first_logits: list[list[float]] | None = None  # per prompt, the first step's logits of `first_token_ids`


class _SentenceStop:
    """Per-row stopping criterion: a row is done once its continuation contains an ended sentence."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.done: list[bool] | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.done is None:
            self.done = [False] * input_ids.shape[0]
        for i in range(input_ids.shape[0]):
            if not self.done[i]:
                text = self.tokenizer.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
                self.done[i] = sentence_end(text, final=False) is not None
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def encode_prompt(tokenizer, prompt: Sequence[Message] | str) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return encode_messages(tokenizer, prompt)


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[Message] | str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_sentence: bool = True,
    progress: bool = True,
    desc: str = "generate",
    first_token_ids: Sequence[int] | None = None,
) -> GenerationResult:
    """Generate a continuation per prompt (chat messages, or already-rendered text), batched.

    Greedy unless `do_sample`; sampling is seeded (`seed`) without touching the caller's global RNG state.
    The tokenizer must pad on the left (`load_tokenizer` does). With `first_token_ids`, the logits of those
    tokens at the first generated position are returned too (e.g. the verdict logit, at no extra cost).
    """
    import torch
    from transformers import StoppingCriteriaList

    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs tokenizer.padding_side == 'left' (use load_tokenizer)")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    n = len(encoded)
    raw: list[str] = [""] * n
    counts: list[int] = [0] * n
    ended: list[bool] = [False] * n  # stopped by eos or the sentence criterion before the token cap
    first: list[list[float]] = [[] for _ in range(n)]
    want_first = list(first_token_ids or [])

    gen_config, stop_ids = generation_config(model, tokenizer, max_new_tokens, do_sample, temperature, top_p)
    gen_config.update(output_logits=bool(want_first), return_dict_in_generate=True)

    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        bar = tqdm(total=n, desc=desc, disable=not progress, unit="prompt")
        for b in range(0, n, batch_size):
            idx = order[b:b + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt",
                                  padding=True).to(model.device)
            prompt_len = batch["input_ids"].shape[1]
            stops = [_SentenceStop(tokenizer, prompt_len)] if stop_at_sentence else []
            criteria = StoppingCriteriaList(stops)
            out = model.generate(**batch, generation_config=gen_config, stopping_criteria=criteria)
            if want_first:
                step0 = out.logits[0][:, want_first].float().cpu().tolist()
                for row, i in enumerate(idx):
                    first[i] = step0[row]
            out = out.sequences
            for i, (text, count, stopped) in zip(idx, decode_new_tokens(tokenizer, out[:, prompt_len:], stop_ids)):
                raw[i], counts[i], ended[i] = text, count, stopped
            bar.update(len(idx))
        bar.close()

    result = generation_result(raw, counts, ended, stop_at_sentence)
    result.first_logits = first if want_first else None
    return result


def generation_config(model, tokenizer, max_new_tokens: int, do_sample: bool, temperature: float = 1.0,
                      top_p: float = 1.0):
    """(GenerationConfig, stop token ids): the model's own config with our decoding settings (greedy unless
    `do_sample`; no top-k), and the ids that end a row (eos and padding)."""
    gen_config = copy.deepcopy(model.generation_config)
    eos = gen_config.eos_token_id if gen_config.eos_token_id is not None else tokenizer.eos_token_id
    gen_config.update(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=eos)
    if do_sample:
        gen_config.update(temperature=temperature, top_p=top_p, top_k=None)
    else:
        gen_config.update(temperature=None, top_p=None, top_k=None)
    stop_ids = {tokenizer.pad_token_id, *(eos if isinstance(eos, list) else [eos])}
    return gen_config, stop_ids


def decode_new_tokens(tokenizer, new_tokens, stop_ids) -> list[tuple[str, int, bool]]:
    """Per row of generated ids: (text up to the first stop id, its token count, whether a stop id ended it)."""
    out = []
    for toks in new_tokens.tolist():
        k = next((j for j, t in enumerate(toks) if t in stop_ids), len(toks))
        out.append((tokenizer.decode(toks[:k], skip_special_tokens=True), k, k < len(toks)))
    return out


def generation_result(raw: list[str], counts: list[int], ended: list[bool],
                      stop_at_sentence: bool = True) -> GenerationResult:
    """The result a generator returns: a row is complete when it stopped by itself or ended a sentence."""
    complete = [e or sentence_end(r, final=False) is not None for e, r in zip(ended, raw)]
    texts = [first_sentence(r) if stop_at_sentence else r.strip() for r in raw]
    return GenerationResult(texts=texts, raw_texts=list(raw), n_new_tokens=list(counts), complete=complete)
