"""Sentence cutting and batched generation (batched greedy must equal batch-1 greedy)."""

from __future__ import annotations

import pytest
import torch

from expctr.llm.generation import first_sentence, generate, sentence_end
from expctr.llm.prompts import Item, explainer_messages


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The user will like it. They liked Heat.", "The user will like it."),
        (" The user will enjoy Mr. Holland's Opus because it moves. Also",
         "The user will enjoy Mr. Holland's Opus because it moves."),
        ("The user will enjoy Airplane! because it is silly. Yes",
         "The user will enjoy Airplane! because it is silly."),
        ("Rated 3.5 stars on average! Next", "Rated 3.5 stars on average!"),
        ('They will enjoy "Fargo." It is dark.', 'They will enjoy "Fargo."'),
        ('They will enjoy "L.A. Confidential" as a crime film. Next', 'They will enjoy "L.A. Confidential" as a crime film.'),
        ("They will enjoy L.A. Confidential. Next", "They will enjoy L.A. Confidential."),
        ('They liked "What? Me Worry" and "Airplane!" Yes.', 'They liked "What? Me Worry" and "Airplane!"'),
        ("\nFirst line without a stop\nsecond line", "First line without a stop"),
        ("no end at all", "no end at all"),
        ("Ends at the end.", "Ends at the end."),
        ("", ""),
    ],
)
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_sentence_end_waits_for_next_token_while_generating():
    assert sentence_end("The user will like it.", final=False) is None
    assert sentence_end("The user will like it.", final=True) == len("The user will like it.")
    assert sentence_end("The user will like it. The", final=False) == len("The user will like it.")
    assert sentence_end("The user will like Dr. Strangelove", final=False) is None
    # a title's own punctuation, quoted or a dotted initialism, is not the sentence's end (served texts were
    # cut at 'enjoy "L.A.' and flagged complete)
    assert sentence_end('The user will probably enjoy "L.A. Conf', final=False) is None
    assert sentence_end("The user will probably enjoy L.A. Conf", final=False) is None


HISTORY = [
    Item("Toy Story", 1995, ("Animation", "Children's", "Comedy"), True),
    Item("Heat", 1995, ("Action", "Crime", "Thriller"), False),
    Item("Babe", 1995, ("Children's", "Comedy", "Drama"), True),
]
PROMPTS = [
    explainer_messages(HISTORY, Item("The Lion King", 1994, ("Animation", "Children's", "Musical"))),
    explainer_messages(HISTORY[:1], Item("Casino", 1995, ("Drama", "Thriller"))),
    explainer_messages(HISTORY * 3, Item("Sabrina", 1995, ("Comedy", "Romance"))),
]


def test_batched_greedy_equals_batch_one(model, tokenizer):
    """Exact text equality; if numerics ever differ, compare the first tokens (see the report)."""
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3, progress=False)
    single = [generate(model, tokenizer, [p], max_new_tokens=12, batch_size=1, progress=False)
              for p in PROMPTS]
    assert batched.raw_texts == [s.raw_texts[0] for s in single]
    assert batched.texts == [s.texts[0] for s in single]
    assert batched.n_new_tokens == [s.n_new_tokens[0] for s in single]
    assert all(0 < n <= 12 for n in batched.n_new_tokens)
    for text, done in zip(batched.texts, batched.complete):
        assert "\n" not in text
        if done:  # a finished row holds exactly one sentence
            assert first_sentence(text) == text


def test_sampling_is_seeded_and_leaves_global_rng_alone(model, tokenizer):
    state = torch.random.get_rng_state()
    kw = {"max_new_tokens": 6, "batch_size": 2, "do_sample": True, "temperature": 1.0, "top_p": 0.95,
          "progress": False}
    a = generate(model, tokenizer, PROMPTS[:2], seed=7, **kw)
    b = generate(model, tokenizer, PROMPTS[:2], seed=7, **kw)
    assert a.raw_texts == b.raw_texts
    assert torch.equal(torch.random.get_rng_state(), state)


def test_generation_needs_left_padding(model, tokenizer):
    tokenizer.padding_side = "right"
    try:
        with pytest.raises(ValueError, match="left"):
            generate(model, tokenizer, PROMPTS[:1], max_new_tokens=2, progress=False)
    finally:
        tokenizer.padding_side = "left"
