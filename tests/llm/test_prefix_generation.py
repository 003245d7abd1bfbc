"""Shared-prefix generation returns what plain batched generation returns, with the real embedded LLM."""

from __future__ import annotations

import pytest
from support import recorded_input_shapes

from expctr.llm.base_model import load_model, load_tokenizer
from expctr.llm.generation import generate
from expctr.llm.prefix_generation import (
    common_prefix_len,
    forward_seconds,
    generate_opened,
    generate_shared_prefix,
    looping,
    plan_groups,
)
from expctr.llm.prompts import Item, explainer_messages, rendered_prompt
from expctr.llm.verdicts import EXPLANATION_PREFIX, verdict_token_ids

HISTORY = [Item("Toy Story", 1995, ("Animation", "Comedy"), True), Item("Heat", 1995, ("Action", "Crime"), False),
           Item("Fargo", 1996, ("Crime", "Drama"), True), Item("Casino", 1995, ("Drama",), False)]
TARGETS = [Item("Jumanji", 1995, ("Adventure",)), Item("Sabrina", 1995, ("Comedy", "Romance")),
           Item("Balto", 1995, ("Animation", "Children's")), Item("Nixon", 1995, ("Drama",))]


@pytest.fixture(scope="module")
def llm(base_model_dir):
    return load_model(base_model_dir), load_tokenizer(base_model_dir)


def prompts_for(tok, history):
    return [rendered_prompt(tok, explainer_messages(history, t) + [{"role": "assistant", "content": EXPLANATION_PREFIX}])
            for t in TARGETS]


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5], [6]]) == 0 and common_prefix_len([]) == 0


def test_same_text_as_plain_batched_generation(llm):
    model, tok = llm
    prompts = prompts_for(tok, HISTORY)
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # the system text and the whole history (everything before the target line) are shared
    head = tok(prompts[0][:prompts[0].index("Target:")], add_special_tokens=False)["input_ids"]
    assert common_prefix_len(enc) >= len(head) - 1 > 0.3 * min(map(len, enc))
    plain = generate(model, tok, prompts, max_new_tokens=16, batch_size=4, progress=False)
    shared = generate_shared_prefix(model, tok, prompts, max_new_tokens=16)
    assert shared.raw_texts == plain.raw_texts
    assert shared.n_new_tokens == plain.n_new_tokens


def test_unrelated_prompts_fall_back_to_plain_generation(llm):
    model, tok = llm
    prompts = ["Name a colour.", "Count to three."]
    assert generate_shared_prefix(model, tok, prompts, max_new_tokens=6).raw_texts == \
        generate(model, tok, prompts, max_new_tokens=6, batch_size=2, progress=False).raw_texts


def test_several_users_in_one_batch_write_what_each_would_alone(llm):
    """Two histories (two prefill groups, different prefix lengths) in one decoding batch, rows ending at
    different steps: each row's text and token count equal plain batched generation's."""
    model, tok = llm
    other = [Item("Alien", 1979, ("Horror", "Sci-Fi"), True), Item("Grease", 1978, ("Musical",), False)]
    prompts = prompts_for(tok, HISTORY)[:3] + prompts_for(tok, other)[:3]
    plan = plan_groups([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], ["a"] * 3 + ["b"] * 3)
    assert [rows for rows, _ in plan] == [[0, 1, 2], [3, 4, 5]] and plan[0][1] != plan[1][1]
    plain = generate(model, tok, prompts, max_new_tokens=14, batch_size=6, progress=False)
    with recorded_input_shapes(model) as shapes:
        mixed = generate_shared_prefix(model, tok, prompts, groups=["a"] * 3 + ["b"] * 3, max_new_tokens=14)
    assert mixed.raw_texts == plain.raw_texts and mixed.n_new_tokens == plain.n_new_tokens
    assert mixed.complete == plain.complete
    # the two users' common beginning (system text, task) ran once, as one row, before their own prefixes
    system = tok(prompts[0][:prompts[0].index("Liked:")], add_special_tokens=False)["input_ids"]
    assert shapes[0][0] == 1 and shapes[0][1] >= len(system) - 1 and shapes[1][0] == 2


def test_sampling_is_per_row_and_caps_are_per_row(llm):
    model, tok = llm
    prompts = prompts_for(tok, HISTORY)
    together = generate_shared_prefix(model, tok, prompts, max_new_tokens=10, do_sample=True, temperature=0.8,
                                      seeds=[7, 8, 9, 10])
    alone = generate_shared_prefix(model, tok, prompts[2:], max_new_tokens=10, do_sample=True, temperature=0.8,
                                   seeds=[9, 10])
    assert together.raw_texts[2:] == alone.raw_texts  # a row's sample does not depend on its batch
    capped = generate_shared_prefix(model, tok, prompts[:2], max_new_tokens=[3, 40])
    assert capped.n_new_tokens[0] <= 3 and capped.n_new_tokens[1] > 3


def test_opened_generation_reads_the_prompt_then_continues_the_chosen_opening(llm):
    """One prefill serves the verdict reading and the generation: the first logits are the prompt's last-position
    logits, the text equals plain generation from prompt + opening, and the pooled state is the mean last-layer
    state over the opening and the generated tokens (computed here by one plain forward pass)."""
    import torch

    model, tok = llm
    prompts = prompts_for(tok, HISTORY)[:3]
    vt = verdict_token_ids(tok)
    chosen = {}

    def opening(i, logits):
        chosen[i] = logits
        return ' surely enjoy "X" because' if logits[0] > logits[1] else ' likely not enjoy "X" because'

    with forward_seconds() as secs:
        res = generate_opened(model, tok, prompts, opening, [vt.positive, vt.negative], groups=["u"] * 3,
                              max_new_tokens=10, pool_hidden=True, batch_size=2)
    assert secs["prefill"] > 0 and secs["decode"] > 0
    for i, p in enumerate(prompts):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            last = model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert res.first_logits[i] == pytest.approx([last[vt.positive].item(), last[vt.negative].item()], abs=1e-3)
        assert res.first_logits[i] == chosen[i]
        plain = generate(model, tok, [p + res.openings[i]], max_new_tokens=10, batch_size=1, progress=False)
        assert res.generation.raw_texts[i] == plain.raw_texts[0]
        forced = tok(res.openings[i], add_special_tokens=False)["input_ids"]
        new = tok(res.generation.raw_texts[i], add_special_tokens=False)["input_ids"]
        full = ids + forced + new
        with torch.inference_mode():
            h = model(input_ids=torch.tensor([full]), output_hidden_states=True).hidden_states[-1][0]
        # the opening's positions and every generated token but the last (whose state is never needed)
        want = h[len(ids):len(ids) + len(forced) + len(new) - 1].mean(0)
        assert torch.allclose(torch.tensor(res.hidden[i]), want, atol=2e-3)


def test_banned_tokens_are_never_decoded_but_the_opening_may_hold_them(llm):
    """A quote-free reason: no quotation mark after the opening, even where the unconstrained greedy text
    quotes a title; the forced opening keeps its own quotes; the other rows' texts are what they would be."""
    from expctr.llm.openings import quote_token_ids

    model, tok = llm
    prompts = [p + ' enjoy "Jumanji" because, like' for p in prompts_for(tok, HISTORY)[:1]] + \
        ["Write the title of a famous movie in double quotes:"]
    banned = quote_token_ids(tok)
    free = generate_shared_prefix(model, tok, prompts, groups=[0, 1], max_new_tokens=12)
    assert any('"' in t for t in free.raw_texts), free.raw_texts  # left alone, it quotes
    quiet = generate_shared_prefix(model, tok, prompts, groups=[0, 1], max_new_tokens=12, banned_token_ids=banned)
    assert not any(q in t for t in quiet.raw_texts for q in ('"', "\u201c", "\u201d", "`")), quiet.raw_texts
    vt = verdict_token_ids(tok)
    opened = generate_opened(model, tok, prompts_for(tok, HISTORY)[:2], lambda i, _: ' enjoy "Jumanji" because,',
                             [vt.positive, vt.negative], max_new_tokens=12, banned_token_ids=banned)
    assert opened.openings[0].count('"') == 2 and '"' not in "".join(opened.generation.raw_texts)


def test_batches_prefilled_apart_decode_together_as_they_would_apart(llm):
    """Prefill batches of 2 rows (two users: different prefix and cache widths) decoded as one batch of 6
    (`decode_batch_size`): the caches are left-padded to one width, and every row writes and pools what it
    writes and pools when each prefill batch decodes alone; the verdict readings do not move."""
    import torch

    model, tok = llm
    other = [Item("Alien", 1979, ("Horror", "Sci-Fi"), True), Item("Grease", 1978, ("Musical",), False)]
    prompts = prompts_for(tok, HISTORY)[:3] + prompts_for(tok, other)[:3]
    vt = verdict_token_ids(tok)

    def opening(i, logits):
        return ' surely enjoy "X" because,' if i % 2 else ' likely not enjoy "X" because'

    def run(decode_batch_size):
        with recorded_input_shapes(model) as shapes:
            res = generate_opened(model, tok, prompts, opening, [vt.positive, vt.negative], groups=list("aabccd"),
                                  max_new_tokens=[14, 6, 14, 14, 3, 14], pool_hidden=True, batch_size=2,
                                  decode_batch_size=decode_batch_size)
        return res, max(rows for rows, q in shapes if q == 1)

    apart, apart_rows = run(None)
    together, together_rows = run(6)
    assert apart_rows <= 2 and together_rows == 6  # one-token steps: a prefill batch apart, all 6 together
    assert together.generation == apart.generation and together.openings == apart.openings
    assert together.first_logits == apart.first_logits
    for a, b in zip(together.hidden, apart.hidden):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


def test_a_known_opening_is_fed_in_the_suffix_pass_with_what_two_passes_read_and_write(llm):
    """`opening_known` (the served path: the score chose the verdict): each row's opening rides in the pass of
    its own suffix, one pass less; the logits read at the prompt's end, the states there, the texts written and
    the states pooled over the opening and the text are those of a separate opening pass (float32 rounding)."""
    import torch

    model, tok = llm
    other = [Item("Alien", 1979, ("Horror", "Sci-Fi"), True), Item("Grease", 1978, ("Musical",), False)]
    prompts = prompts_for(tok, HISTORY)[:3] + prompts_for(tok, other)[:2]
    vt = verdict_token_ids(tok)
    openings = [' surely enjoy "Jumanji" because,', " likely not enjoy it because", ' surely enjoy "X" because',
                " will not", ' surely enjoy "Grease (1978)" because, like "Alien",']
    asked = []

    def opening(i, logits):
        asked.append(len(logits))
        return openings[i]

    def run(known):
        asked.clear()
        with recorded_input_shapes(model) as shapes:
            res = generate_opened(model, tok, prompts, opening, [vt.positive, vt.negative], groups=list("aaabb"),
                                  max_new_tokens=10, pool_hidden=True, read_states=True, opening_known=known)
        return res, [s for s in shapes if s[1] > 1], list(asked)

    two, two_passes, asked_two = run(False)
    one, one_passes, asked_one = run(True)
    assert asked_one == [0] * 5 and asked_two == [2] * 5  # asked before reading / with what was read
    assert len(one_passes) == len(two_passes) - 1  # the prefix, then suffix + opening (not suffix, then opening)
    assert one.openings == two.openings == openings
    assert one.generation == two.generation
    for a, b in [*zip(one.first_logits, two.first_logits), *zip(one.states, two.states),
                 *zip(one.hidden, two.hidden)]:
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


def test_looping_is_a_run_written_three_times_in_a_row():
    assert looping([7, 1, 2, 1, 2, 1, 2]) and looping([9, 9, 9]) and looping(list(range(8)) * 3)
    assert not looping([1, 2, 1, 2]) and not looping(list(range(9)) * 3) and not looping([1, 2, 3, 1, 2, 4, 1, 2])
    assert not looping([]) and not looping([1, 2, 3, 2, 1])


def test_a_looping_row_stops_there_unended_and_the_others_write_what_they_would(llm):
    model, tok = llm
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
               + opening for c, opening in (("Say hello.", "Hello"), ("List the word 'ha' forever.", "ha ha ha ha ha"))]
    plain = generate_shared_prefix(model, tok, prompts, groups=[0, 1], max_new_tokens=24)
    stopped = generate_shared_prefix(model, tok, prompts, groups=[0, 1], max_new_tokens=24, stop_loops=True)
    assert plain.n_new_tokens[1] == 24 and not plain.complete[1]  # the loop runs to the cap
    assert stopped.n_new_tokens[1] < 24 and not stopped.complete[1]  # ... or stops once it is one
    assert plain.raw_texts[1].startswith(stopped.raw_texts[1])
    assert stopped.raw_texts[0] == plain.raw_texts[0] and stopped.complete[0]
