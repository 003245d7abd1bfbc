"""Shared-prefix generation returns what plain batched generation returns, with the real embedded LLM."""

from __future__ import annotations

import pytest

from expctr.llm.base_model import load_model, load_tokenizer
from expctr.llm.generation import generate
from expctr.llm.prompts import EXPLANATION_PREFIX, Item, explainer_messages, rendered_prompt
from expctr.serving.prefix_generation import common_prefix_len, generate_shared_prefix

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
    assert common_prefix_len(enc) > 0.5 * min(map(len, enc))  # history and system text are shared
    plain = generate(model, tok, prompts, max_new_tokens=16, batch_size=4, progress=False)
    shared = generate_shared_prefix(model, tok, prompts, max_new_tokens=16)
    assert shared.raw_texts == plain.raw_texts
    assert shared.n_new_tokens == plain.n_new_tokens


def test_unrelated_prompts_fall_back_to_plain_generation(llm):
    model, tok = llm
    prompts = ["Name a colour.", "Count to three."]
    assert generate_shared_prefix(model, tok, prompts, max_new_tokens=6).raw_texts == \
        generate(model, tok, prompts, max_new_tokens=6, batch_size=2, progress=False).raw_texts
