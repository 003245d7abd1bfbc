"""Rewards: exact LC/IC formulas on hand-built inputs, each format penalty, combining, TRL's calling forms.

One test runs the real judge (the prepared SmolLM2 base model in `.cache/expctr/test-base-model`, the same
directory tests/llm uses): an explanation stating the true label must earn more LC reward than the opposite.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from support import TEST_THREADS as THREADS

from expctr.config import CTRParams, RewardParams
from expctr.ctr.models import build_model
from expctr.data.features import FeatureMap
from expctr.explainer.rewards.combine import CombinedReward, combine, stage_reward
from expctr.explainer.rewards.common import soft_target_reward
from expctr.explainer.rewards.format import FormatReward, copied_ngram
from expctr.explainer.rewards.ic import ICAgreementReward
from expctr.explainer.rewards.lc import LCReward
from expctr.llm.explanations import completion_text, stance
from expctr.llm.judge import JudgeScorer
from expctr.llm.prompts import EXPLAINER_TASK, explainer_messages, judge_messages

HISTORY = [
    {"title": "Toy Story", "year": 1995, "genres": ["Animation", "Children's", "Comedy"], "liked": True},
    {"title": "Heat", "year": 1995, "genres": ["Action", "Crime", "Thriller"], "liked": False},
    {"title": "Aladdin", "year": 1992, "genres": ["Animation", "Children's", "Comedy", "Musical"], "liked": True},
]
TARGET = {"title": "The Lion King", "year": 1994, "genres": ["Animation", "Children's", "Musical"]}
POS = "The user will probably enjoy The Lion King because they liked animated musicals."
NEG = "The user will probably not enjoy The Lion King because it is a children's film."


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class TableScorer:
    """A deterministic judge: P(Yes) looked up by the assistant turn's text; records what it was asked."""

    def __init__(self, table: dict[str, float]):
        self.table, self.seen = table, []

    def __call__(self, messages_batch):
        self.seen.extend(messages_batch)
        return [self.table[m[-1]["content"]] for m in messages_batch]


def readout(explanation: str) -> str:
    return judge_messages(HISTORY, TARGET, explanation)[-1]["content"]


def lc_kwargs(labels):
    n = len(labels)
    return {"history": [HISTORY] * n, "target": [TARGET] * n, "label": labels}


# --- LC ------------------------------------------------------------------------------------------------------

def test_lc_reward_is_the_judges_log_probability_of_the_true_label():
    scorer = TableScorer({readout(POS): 0.8, readout(NEG): 0.3})
    lc = LCReward(scorer, kind="logprob")
    got = lc(prompts=["p"] * 4, completions=[POS, POS, NEG, NEG], **lc_kwargs([1, 0, 1, 0]))
    assert got == pytest.approx([math.log(0.8), math.log(0.2), math.log(0.3), math.log(0.7)], abs=1e-12)
    assert scorer.seen[0] == judge_messages(HISTORY, TARGET, POS)


def test_lc_judge_without_the_history_reads_the_same_explanation_after_the_target_line_alone():
    scorer = TableScorer({readout(POS): 0.8})
    got = LCReward(scorer, kind="prob", reads_history=False)(prompts=["p"], completions=[POS], **lc_kwargs([1]))
    assert got == pytest.approx([0.8])
    assert scorer.seen[0] == judge_messages(HISTORY, TARGET, POS, show_history=False)
    assert "Liked:" not in scorer.seen[0][1]["content"] and "Target:" in scorer.seen[0][1]["content"]


def test_lc_prob_kind_clipping_and_first_sentence_only():
    scorer = TableScorer({readout(POS): 0.8, readout(NEG): 1.0})
    prob = LCReward(scorer, kind="prob")
    # the judge reads the first sentence only; labels may arrive as floats or bools
    got = prob(prompts=["p"] * 3, completions=[POS + " Also, here is more text.", POS, NEG],
               **lc_kwargs([1.0, False, 1]))
    assert got == pytest.approx([0.8, 0.2, 1.0], abs=1e-12)
    clipped = LCReward(scorer, kind="logprob")(prompts=["p"], completions=[NEG], **lc_kwargs([0]))
    assert clipped == pytest.approx([math.log(1e-4)])  # log(1 - 1.0) clipped at log(1e-4)


def test_lc_accepts_conversational_completions_and_trl_extras():
    scorer = TableScorer({readout(POS): 0.8})
    lc = LCReward(scorer)
    logged = {}
    conv = [[{"role": "assistant", "content": POS}], [{"role": "assistant", "content": [{"type": "text", "text": POS}]}]]
    got = lc(prompts=[[{"role": "user", "content": "x"}]] * 2, completions=conv, completion_ids=[[1], [2]],
             trainer_state=None, log_metric=lambda *a: None,
             log_extra=lambda col, vals: logged.__setitem__(col, vals), **lc_kwargs([1, 1]))
    assert got == pytest.approx([math.log(0.8)] * 2)
    assert logged == {"lc_reward/p_yes": pytest.approx([0.8, 0.8])}


def test_lc_errors_are_clear():
    with pytest.raises(KeyError, match="'label'"):
        LCReward(TableScorer({}))(prompts=["p"], completions=[POS], history=[HISTORY], target=[TARGET])
    with pytest.raises(ValueError, match="kind"):
        LCReward(TableScorer({}), kind="margin")


# --- IC, agreement form -------------------------------------------------------------------------------------

def test_soft_target_reward_by_hand():
    p, t = [0.8, 0.8, 0.3, 0.5], [0.9, 0.1, 0.25, 0.5]
    # logprob: t log p + (1 - t) log(1 - p)  (= -BCE(t, p))
    want_log = [0.9 * math.log(0.8) + 0.1 * math.log(0.2), 0.1 * math.log(0.8) + 0.9 * math.log(0.2),
                0.25 * math.log(0.3) + 0.75 * math.log(0.7), math.log(0.5)]
    assert soft_target_reward(p, t, "logprob") == pytest.approx(want_log, abs=1e-12)
    # prob: t p + (1 - t)(1 - p)  (the chance that the two agree)
    want_prob = [0.9 * 0.8 + 0.1 * 0.2, 0.1 * 0.8 + 0.9 * 0.2, 0.25 * 0.3 + 0.75 * 0.7, 0.5]
    assert soft_target_reward(p, t, "prob") == pytest.approx(want_prob, abs=1e-12)
    # hard targets give exactly the LC forms: log p_true and p_true
    assert soft_target_reward([0.8, 0.8], [1, 0], "logprob") == pytest.approx([math.log(0.8), math.log(0.2)])
    assert soft_target_reward([1.0], [0.0], "logprob") == pytest.approx([math.log(1e-4)])  # clipped
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        soft_target_reward([0.5], [1.5], "prob")


def test_ic_agreement_reward_by_hand_and_without_labels():
    """r_IC = soft_target_reward(p_judge, p_id): the judge reading the explanation agrees with the ID model.
    No `label` column is passed: the IC reward needs none."""
    scorer = TableScorer({readout(POS): 0.8, readout(NEG): 0.3})
    ic = ICAgreementReward(LCReward(scorer), kind="prob", name="ic")
    logged = {}
    got = ic(prompts=["p"] * 3, completions=[POS, NEG, POS], history=[HISTORY] * 3, target=[TARGET] * 3,
             p_id=[0.9, 0.9, 0.2], log_extra=lambda col, vals: logged.__setitem__(col, vals))
    assert got == pytest.approx([0.9 * 0.8 + 0.1 * 0.2, 0.9 * 0.3 + 0.1 * 0.7, 0.2 * 0.8 + 0.8 * 0.2])
    assert logged == {"ic/p_judge": pytest.approx([0.8, 0.3, 0.8]), "ic/p_id": pytest.approx([0.9, 0.9, 0.2])}
    neg_bce = ICAgreementReward(LCReward(scorer), kind="logprob")(
        prompts=["p"], completions=[POS], history=[HISTORY], target=[TARGET], p_id=[0.9])
    assert neg_bce == pytest.approx([0.9 * math.log(0.8) + 0.1 * math.log(0.2)])
    with pytest.raises(KeyError, match="p_id"):
        ic(prompts=["p"], completions=[POS], history=[HISTORY], target=[TARGET])


def test_ic_agreement_reward_computes_p_id_from_the_id_model(id_model):
    """Without a `p_id` column the ID model scores the pair's ID features (again no label)."""
    base, columns = id_model, IC_COLUMNS
    scorer = TableScorer({readout(POS): 0.8})
    n = len(columns["user_idx"])
    ic = ICAgreementReward(LCReward(scorer), id_model=base, kind="prob")
    kwargs = {k: v for k, v in columns.items() if k != "label"}
    got = ic(prompts=["p"] * n, completions=[POS] * n, history=[HISTORY] * n, target=[TARGET] * n, **kwargs)
    from expctr.ctr.text_augmented import batch_from_columns

    with torch.no_grad():
        p_id = torch.sigmoid(base(batch_from_columns(kwargs))).double().numpy()
    assert got == pytest.approx(p_id * 0.8 + (1 - p_id) * 0.2)


def test_judge_scorer_groups_memoises_and_remembers(judge):
    """One judge pass per distinct prompt; known readings (llm_pairs' precomputed ones) cost no pass at all."""
    model, tok = judge
    calls = []
    scorer = JudgeScorer(model, tok, batch_size=4)
    real_forward = model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("input_ids").shape)
        return real_forward(*args, **kwargs)

    model.forward = counting
    try:
        first = scorer([judge_messages(HISTORY, TARGET, POS), judge_messages(HISTORY, TARGET, NEG)])
        n = len(calls)
        again = scorer([judge_messages(HISTORY, TARGET, NEG), judge_messages(HISTORY, TARGET, POS)])
        assert len(calls) == n and again == pytest.approx(first[::-1])
        scorer.remember([judge_messages(HISTORY, TARGET, "The user will probably enjoy it.")], [0.123])
        assert scorer([judge_messages(HISTORY, TARGET, "The user will probably enjoy it.")]) == pytest.approx([0.123])
        assert len(calls) == n
    finally:
        del model.forward


@pytest.fixture(scope="module")
def judge(base_model_dir):
    from expctr.llm.base_model import load_model, load_tokenizer

    return load_model(base_model_dir, threads=THREADS), load_tokenizer(base_model_dir)


def test_real_judge_rewards_an_explanation_that_states_the_true_label(judge):
    model, tokenizer = judge
    cases = [  # (target, label)
        ({"title": "Aladdin and the King of Thieves", "year": 1996, "genres": ["Animation", "Children's"]}, 1),
        ({"title": "Casino", "year": 1995, "genres": ["Drama", "Thriller"]}, 0),
        ({"title": "Pocahontas", "year": 1995, "genres": ["Animation", "Children's", "Musical"]}, 1),
        ({"title": "GoldenEye", "year": 1995, "genres": ["Action", "Adventure", "Thriller"]}, 0),
    ]
    lc = LCReward(model, tokenizer, kind="logprob", batch_size=8)
    completions, kw = [], {"history": [], "target": [], "label": []}
    for target, label in cases:
        for verdict in ("will probably enjoy", "will probably not enjoy"):
            completions.append(f"The user {verdict} {target['title']} because of its genres.")
            kw["history"].append(HISTORY)
            kw["target"].append(target)
            kw["label"].append(label)
    r = np.array(lc(prompts=["p"] * len(completions), completions=completions, **kw)).reshape(-1, 2)
    print("\nLC rewards [enjoy, not enjoy] per pair:\n", np.round(r, 3))
    labels = np.array([label for _, label in cases])
    stated_true = np.where(labels == 1, r[:, 0], r[:, 1])
    stated_false = np.where(labels == 1, r[:, 1], r[:, 0])
    assert (stated_true > stated_false).all()
    assert (r <= 0).all() and (r >= math.log(1e-4)).all()


# --- IC ------------------------------------------------------------------------------------------------------

K, G = 4, 3


def toy_fmap() -> FeatureMap:
    vocab = lambda n, p: {f"{p}{i}": i + 2 for i in range(n)}
    return FeatureMap({"user": vocab(5, "u"), "item": vocab(7, "i"), "gender": vocab(2, "g"), "age": vocab(3, "a"),
                       "occupation": vocab(4, "o"), "decade": vocab(2, "d"), "genre": vocab(3, "x")}, K, G, 4.0)


IC_COLUMNS = {
    "user_idx": [2, 3, 4], "item_idx": [5, 2, 8], "gender_idx": [2, 3, 2], "age_idx": [2, 4, 3],
    "occupation_idx": [3, 5, 2], "decade_idx": [2, 3, 3],
    "genre_idx": [[2, 3, 0], [4, 0, 0], [2, 0, 0]],
    "hist_item_idx": [[0, 3, 4, 5], [0, 0, 2, 6], [7, 8, 2, 3]],
    "hist_click": [[0, 2, 1, 2], [0, 0, 1, 1], [2, 2, 1, 2]],
    "label": [1, 0, 1],
}
@pytest.fixture
def id_model():
    return build_model("din", toy_fmap(), CTRParams(embed_dim=4, mlp_dims=[8]), seed=0).eval()


# --- format --------------------------------------------------------------------------------------------------

PROMPT = explainer_messages(HISTORY, TARGET)
PEN = FormatReward.DEFAULT_PENALTIES


@pytest.mark.parametrize(("text", "expected"), [
    ("The user will probably enjoy The Lion King because they liked Aladdin.", 1),
    ("The user will probably not enjoy Casino, although they didn't like Heat either.", -1),
    ("They would love it.", 1),
    ("The user won't like this one.", -1),
    ("The user is unlikely to enjoy this slow drama.", -1),
    ("The user is likely to enjoy the musical numbers.", 1),
    ("The user will dislike it.", -1),
    ("The user’ll probably not... no: the user will not enjoy it.", -1),
    ("The Lion King is a 1994 animated musical like Aladdin.", 0),
    ("The user liked Toy Story and disliked Heat.", 0),
    ("", 0),
])
def test_stance(text, expected):
    assert stance(text) == expected


@pytest.mark.parametrize(("completion", "violations"), [
    (POS, []),
    ("   ", ["empty"]),
    ("...", ["empty"]),
    (POS + " It is also a classic.", ["multi_sentence"]),
    ("The Lion King is a 1994 animated musical about a young lion.", ["no_verdict"]),
    ("The user will probably enjoy it: in one sentence, will the user enjoy the target movie, sure.", ["copy"]),
    ("The user will probably enjoy it because " + "it has songs and " * 12 + "lions.", ["too_long"]),
    ("The Lion King is a film. In one sentence, will the user enjoy the target movie, and why.",
     ["multi_sentence", "no_verdict", "copy"]),
])
def test_format_penalties(completion, violations):
    fmt = FormatReward()
    assert fmt.violations(completion, PROMPT) == violations
    expected = sum(PEN[v] for v in violations)
    assert fmt(prompts=[PROMPT], completions=[completion]) == [expected]
    conv = [{"role": "assistant", "content": completion}]
    assert fmt(prompts=[PROMPT], completions=[conv]) == [expected]


@pytest.mark.parametrize(("completion", "violations"), [
    ('The user will probably enjoy "The Lion King" because they liked "Aladdin".', []),
    ("The user will probably enjoy it because they love animated films.", []),  # a shared genre
    ("The user will probably enjoy it because of its similarity to the Liked movies.", ["ungrounded"]),
    ('The user will probably enjoy it like "The Shawshiels" because it is animated.', ["outside_title"]),
    ('The user will probably enjoy "Movies the user rated recently".', ["ungrounded", "outside_title"]),
])
def test_format_grounding_penalties_with_the_pairs_context(completion, violations):
    """With the pair's history and target, the reason must name a history item or a shared genre, and every
    quoted title must be one of them (invented titles and prompt text quoted as a title are penalised)."""
    fmt = FormatReward()
    assert fmt.violations(completion, PROMPT, history=HISTORY, target=TARGET) == violations
    got = fmt(prompts=[PROMPT], completions=[completion], history=[HISTORY], target=[TARGET])
    assert got == [sum(PEN[v] for v in violations)]


def test_naming_items_from_the_prompt_is_not_copying():
    # long titles and their (year; genres) are data the explanation may cite
    title = "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb"
    history = [{"title": title, "year": 1963, "genres": ["Sci-Fi", "War", "Comedy", "Drama", "Action", "Crime"],
                "liked": True}]
    prompt = explainer_messages(history, TARGET)
    text = f'The user will probably enjoy it because they liked "{title}" (1963; Sci-Fi, War, Comedy, Drama, Action).'
    assert not copied_ngram(text, prompt_as_text(prompt))
    parroted = "Sure: " + EXPLAINER_TASK.rsplit(". ", 1)[-1]  # the instruction itself, copied back
    assert len(parroted.split()) >= 9 and copied_ngram(parroted, prompt_as_text(prompt))


def prompt_as_text(messages):
    return "\n".join(m["content"] for m in messages)


def test_format_penalty_values_are_configurable():
    fmt = FormatReward(penalties={"no_verdict": -3.0})
    assert fmt(prompts=["p"], completions=["A film about lions."]) == [-3.0]
    with pytest.raises(ValueError, match="unknown"):
        FormatReward(penalties={"rude": -1.0})


# --- combining and TRL plumbing ------------------------------------------------------------------------------

def test_combine_weights_parts_and_logs_each_part():
    scorer = TableScorer({readout(POS): 0.8, readout("A film about lions."): 0.5})
    lc, fmt = LCReward(scorer), FormatReward()
    comb = combine([(lc, 2.0), (fmt, 0.5)], name="lc_stage")
    metrics, extras = {}, {}
    got = comb(prompts=[PROMPT] * 2, completions=[POS, "A film about lions."], **lc_kwargs([1, 0]),
               log_metric=lambda k, v: metrics.__setitem__(k, v),
               log_extra=lambda k, v: extras.__setitem__(k, v))
    lc_parts = [math.log(0.8), math.log(0.5)]
    fmt_parts = [0.0, PEN["no_verdict"] + PEN["ungrounded"]]  # history and target arrive as columns
    assert got == pytest.approx([2 * a + 0.5 * b for a, b in zip(lc_parts, fmt_parts)])
    assert comb.last_parts == {"lc_reward": pytest.approx(lc_parts), "format_reward": fmt_parts}
    assert metrics == {"lc_stage/lc_reward": pytest.approx(np.mean(lc_parts)),
                       "lc_stage/format_reward": pytest.approx(np.mean(fmt_parts))}
    assert set(extras) == {"lc_stage/lc_reward", "lc_stage/format_reward", "lc_reward/p_yes"}


def test_stage_reward_follows_reward_params_and_skips_zero_weights():
    def never(**kwargs):
        raise AssertionError("a zero-weight part must not be computed")

    never.__name__ = "never"
    fmt = FormatReward()
    params = RewardParams(lc_weight=1.0, ic_weight=2.0, ic_lc_weight=0.0, format_weight=1.5)
    ic_stage = stage_reward("ic", params, lc=never, ic=lambda prompts, completions, **kw: [1.0] * len(completions),
                            fmt=fmt)
    assert ic_stage.__name__ == "ic_reward"
    assert ic_stage(prompts=["p"], completions=["A film."]) == [2.0 + 1.5 * PEN["no_verdict"]]
    with pytest.raises(ValueError, match="no lc reward"):
        stage_reward("lc", params, fmt=fmt)
    with pytest.raises(ValueError, match="at least one"):
        combine([(fmt, 0.0)])


def test_rewards_are_plain_named_picklable_callables():
    from trl.trainer.utils import get_callable_name

    fmt = FormatReward()
    lc = LCReward(_module_level_scorer)
    comb = combine([(lc, 1.0), (fmt, 1.0)], name="lc_stage")
    for fn, name in ((fmt, "format_reward"), (lc, "lc_reward"), (comb, "lc_stage")):
        assert get_callable_name(fn) == name
        assert not isinstance(fn, torch.nn.Module)  # TRL would treat a Module as a reward model
        clone = pickle.loads(pickle.dumps(fn))
        assert get_callable_name(clone) == name
    assert isinstance(comb, CombinedReward)
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]) == "a"


def _module_level_scorer(messages_batch):
    return [0.5] * len(messages_batch)
