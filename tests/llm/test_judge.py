"""The Yes/No judge: ids from the tokenizer, padding-invariant readout, follows a stated stance."""

from __future__ import annotations

import numpy as np
import pytest
from support import recorded_input_shapes

from expctr.llm.judge import judge_p_yes, judge_p_yes_grouped, yes_no_token_ids
from expctr.llm.prompts import Item, judge_messages

HISTORY = [
    Item("Toy Story", 1995, ("Animation", "Children's", "Comedy"), True),
    Item("Heat", 1995, ("Action", "Crime", "Thriller"), False),
    Item("Aladdin", 1992, ("Animation", "Children's", "Comedy", "Musical"), True),
]
TARGETS = [
    Item("The Lion King", 1994, ("Animation", "Children's", "Musical")),
    Item("Casino", 1995, ("Drama", "Thriller")),
    Item("Sabrina", 1995, ("Comedy", "Romance")),
    Item("GoldenEye", 1995, ("Action", "Adventure", "Thriller")),
    Item("Jumanji", 1995, ("Adventure", "Children's", "Fantasy")),
    Item("Balto", 1995, ("Animation", "Children's")),
    Item("Nixon", 1995, ("Drama",)),
    Item("Fargo", 1996, ("Crime", "Drama", "Thriller")),
    Item("Babe", 1995, ("Children's", "Comedy", "Drama")),
    Item("Braveheart", 1995, ("Action", "Drama", "War")),
    Item("Apollo 13", 1995, ("Drama",)),
    Item("Pocahontas", 1995, ("Animation", "Children's", "Musical", "Romance")),
    Item("Twelve Monkeys", 1995, ("Drama", "Sci-Fi")),
    Item("Clueless", 1995, ("Comedy", "Romance")),
    Item("Batman Forever", 1995, ("Action", "Adventure", "Comedy", "Crime")),
    Item("Casper", 1995, ("Adventure", "Children's")),
    Item("Waterworld", 1995, ("Action", "Adventure")),
    Item("Mortal Kombat", 1995, ("Action", "Adventure")),
    Item("Species", 1995, ("Horror", "Sci-Fi")),
    Item("Dead Man Walking", 1995, ("Drama",)),
]
REASONS = ["it matches the animated comedies they liked", "its tone is close to the movies they rated",
           "it shares genres with their recent ratings", "they react strongly to this kind of story"]


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > a random negative), ties count half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_yes_no_ids_come_from_the_tokenizer(tokenizer):
    ids = yes_no_token_ids(tokenizer)
    assert ids.multi_token == ()  # SmolLM2: " Yes" and " No" are single tokens after "... is"
    assert tokenizer.decode([ids.yes[0]]).strip() == "Yes"
    assert tokenizer.decode([ids.no[0]]).strip() == "No"
    assert {tokenizer.decode([i]).strip().lower() for i in ids.yes} == {"yes"}
    assert {tokenizer.decode([i]).strip().lower() for i in ids.no} == {"no"}
    assert tokenizer(" Yes", add_special_tokens=False)["input_ids"] == [ids.yes[0]]


def test_p_yes_is_the_same_alone_and_in_a_padded_batch(model, tokenizer):
    short = judge_messages(HISTORY[:1], TARGETS[0], "The user will probably enjoy it.")
    long = judge_messages(HISTORY * 6, TARGETS[1], "The user will probably not enjoy it because " + "x " * 40)
    alone = judge_p_yes(model, tokenizer, [short], batch_size=1)
    batched = judge_p_yes(model, tokenizer, [short, long], batch_size=2)
    long_alone = judge_p_yes(model, tokenizer, [long], batch_size=1)
    assert abs(alone[0] - batched[0]) < 1e-4
    assert abs(long_alone[0] - batched[1]) < 1e-4
    assert ((batched > 0) & (batched < 1)).all()


def test_judge_follows_a_stated_stance(model, tokenizer):
    """Under the shipped readout the judge must follow the stance an explanation states."""
    pos_msgs, neg_msgs = [], []
    for k, t in enumerate(TARGETS):
        reason = REASONS[k % len(REASONS)]
        pos = f"The user will probably enjoy {t.title} because {reason}."
        neg = f"The user will probably not enjoy {t.title} because {reason}."
        pos_msgs.append(judge_messages(HISTORY, t, pos))
        neg_msgs.append(judge_messages(HISTORY, t, neg))
    p = judge_p_yes(model, tokenizer, pos_msgs + neg_msgs, batch_size=8)
    pos, neg = p[: len(TARGETS)], p[len(TARGETS):]
    separation = auc(pos, neg)
    print(f"\njudge stance: mean P(Yes) enjoy={pos.mean():.3f} not-enjoy={neg.mean():.3f} "
          f"AUC={separation:.3f}")
    assert pos.mean() - neg.mean() > 0.3
    assert separation >= 0.9


def test_judge_reads_the_graded_verdicts_in_order(model, tokenizer):
    """The graded openings carry the explainer's confidence only if the judge reads them in order: the mean
    P(Yes) over targets falls grade by grade, and the two sides stay far apart."""
    from expctr.llm.verdicts import VERDICT_GRADES, verdict_sentence

    groups = [[judge_messages(HISTORY, t, verdict_sentence(g.min_p, t)) for g in VERDICT_GRADES] for t in TARGETS]
    p = np.array(judge_p_yes_grouped(model, tokenizer, groups, batch_size=4))
    means = p.mean(0)
    print("\njudge P(Yes) per grade:", dict(zip((g.words + g.hedge for g in VERDICT_GRADES), means.round(3))))
    assert (np.diff(means) < 0).all(), means
    positive = np.array([g.positive for g in VERDICT_GRADES])
    assert means[positive].min() - means[~positive].max() > 0.2


def test_grouped_judge_equals_the_plain_judge(model, tokenizer):
    """The shared-context judge (prefix once, suffixes per prompt) reads exactly what each prompt alone reads,
    for groups of different sizes and prompt lengths, including a group of one and the zero-shot readout."""
    from expctr.llm.judge import judge_p_yes_grouped

    groups = []
    for k, t in enumerate(TARGETS[:7]):
        reasons = [None, f"The user will probably enjoy {t.title}.",
                   f"The user will probably not enjoy {t.title} because {REASONS[k % len(REASONS)]}."]
        groups.append([judge_messages(HISTORY[: 1 + k % 3], t, r) for r in reasons[: 1 + k % 3]])
    flat = [m for g in groups for m in g]
    plain = judge_p_yes(model, tokenizer, flat, batch_size=4)
    with recorded_input_shapes(model) as shapes:
        grouped = np.concatenate(judge_p_yes_grouped(model, tokenizer, groups, batch_size=3))
    assert grouped.shape == plain.shape
    np.testing.assert_allclose(grouped, plain, atol=1e-4)
    # each batch of 3 groups ran the beginning they all share (the system text) once, as one row
    assert shapes[0][0] == 1 and shapes[0][1] >= 8 and shapes[1][0] == 3


def test_nested_groups_equal_the_plain_judge(model, tokenizer):
    """Groups nested in outer groups (a user's slate: one history, several targets, several sentences each) read
    exactly what each prompt alone reads; a one-group tree and a one-prompt group included."""
    from expctr.llm.judge import judge_p_yes_grouped

    other = HISTORY[:2]
    groups, outer = [], []
    for k, t in enumerate(TARGETS[:6]):
        history, user = (HISTORY, "u1") if k < 4 else (other, f"u{k}")
        sentences = [None, f"The user will probably enjoy {t.title}.", f"The user will likely not enjoy {t.title}."]
        groups.append([judge_messages(history, t, x) for x in sentences[: 1 + k % 3]])
        outer.append(user)
    flat = [m for g in groups for m in g]
    plain = judge_p_yes(model, tokenizer, flat, batch_size=4)
    nested = np.concatenate(judge_p_yes_grouped(model, tokenizer, groups, batch_size=2, outer=outer))
    np.testing.assert_allclose(nested, plain, atol=1e-4)
    with pytest.raises(ValueError, match="outer labels"):
        judge_p_yes_grouped(model, tokenizer, groups, outer=outer[:2])


def test_grouped_batches_stop_before_too_many_rows():
    from expctr.llm.judge import MAX_BATCH_ROWS, _capped_batches

    def size(tree):
        return tree[1]

    big = [(i, 40) for i in range(16)]  # the grade ladder: 4 pairs x 10 grades a slate
    batches = _capped_batches(big, 16, size)
    assert all(sum(size(t) for t in b) <= MAX_BATCH_ROWS for b in batches)
    assert [t for b in batches for t in b] == big  # order kept, nothing lost
    assert len(batches[0]) == MAX_BATCH_ROWS // 40
    small = [(i, 8) for i in range(40)]  # slates of 4 pairs x 2 verdicts: batch_size decides
    assert [len(b) for b in _capped_batches(small, 16, size)] == [16, 16, 8]
    huge = [(0, 5), (1, 1000), (2, 5)]  # a tree above the cap gets a batch of its own, never split
    assert _capped_batches(huge, 16, size) == [[(0, 5)], [(1, 1000)], [(2, 5)]]
