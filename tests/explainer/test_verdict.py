"""The dense verdict step: the verdict tokens, the exact rewards of both verdicts, the tilted target, and one
pass on the real model that moves the verdict logit the way the rewards say while only LoRA tensors change."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from support import TEST_THREADS

from expctr.config import RLParams
from expctr.explainer.dataset import build_prompt_dataset, prompt_token_ids
from expctr.explainer.lora import attach_adapter
from expctr.explainer.rewards.combine import stage_reward
from expctr.explainer.rewards.format import FormatReward
from expctr.explainer.rewards.ic import ICAgreementReward
from expctr.explainer.rewards.lc import LCReward
from expctr.explainer.stage_rewards import verdict_rewards
from expctr.explainer.verdict import (
    expected_reward,
    prompt_units,
    quarter_means,
    score_verdicts,
    train_verdicts,
    unit_batches,
    verdict_logit,
    verdict_logit_shared,
    verdict_target,
)
from expctr.llm.base_model import load_tokenizer
from expctr.llm.prompts import judge_messages
from expctr.llm.verdicts import EXPLANATION_PREFIX, verdict_sentence, verdict_token_ids

HIST = [{"title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"], "liked": True},
        {"title": "Heat", "year": 1995, "genres": ["Action", "Crime"], "liked": False}]
TARGETS = [{"title": t, "year": 1995, "genres": g} for t, g in
           [("Babe", ["Comedy"]), ("Casino", ["Crime", "Drama"]), ("Balto", ["Animation"]), ("Nixon", ["Drama"])]]
ID_COLS = {"user_idx": 2, "item_idx": 3, "gender_idx": 2, "age_idx": 2, "occupation_idx": 2, "decade_idx": 2,
           "genre_idx": [2, 0], "hist_item_idx": [3, 4], "hist_click": [2, 1]}


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    return load_tokenizer(base_model_dir)


def pairs_frame(labels, p_id, pos, neg) -> pl.DataFrame:
    n = len(labels)
    return pl.DataFrame({"history": [HIST] * n, "target": TARGETS[:n], "label": labels, "p_id": p_id,
                         "judge_p_yes_pos": pos, "judge_p_yes_neg": neg,
                         **{c: [v] * n for c, v in ID_COLS.items()}})


def no_judge():
    """A judge scorer without a model: every reading must come from the precomputed columns (a pass would fail)."""
    from expctr.llm.judge import JudgeScorer

    return JudgeScorer(model=None, tokenizer=None)


def test_verdict_tokens_come_from_the_tokenizer(tokenizer):
    tokens = verdict_token_ids(tokenizer)
    assert tokenizer.decode([tokens.positive]).strip() == "enjoy"
    assert tokenizer.decode([tokens.negative]).strip() == "not"


def test_expected_reward_and_tilted_target_by_hand():
    z, rp, rn = torch.tensor([0.0, 2.0]), torch.tensor([0.9, 0.2]), torch.tensor([0.3, 0.6])
    pi = torch.sigmoid(z)
    assert expected_reward(z, rp, rn).tolist() == pytest.approx((pi * rp + (1 - pi) * rn).tolist())
    assert expected_reward(z, rp, rn)[0].item() == pytest.approx(0.6)
    # pi* = sigmoid((r+ - r-) / tau): the maximiser of E[r] + tau H(pi)
    assert verdict_target(rp, rn, 0.25).tolist() == pytest.approx([1 / (1 + math.exp(-2.4)),
                                                                   1 / (1 + math.exp(1.6))])
    with pytest.raises(ValueError, match="temperature"):
        verdict_target(rp, rn, 0.0)


def test_verdict_rewards_are_the_stage_reward_of_the_bare_verdicts(tokenizer):
    """r+/r- equal the LC / IC formulas applied to the judge's precomputed readings, and the judge is never run."""
    frame = pairs_frame([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1], [0.95, 0.9, 0.92, 0.97], [0.3, 0.2, 0.25, 0.35])
    dataset = build_prompt_dataset(frame, tokenizer, 120, EXPLANATION_PREFIX)
    judge = no_judge()
    lc = LCReward(judge, kind="prob", name="lc")
    # as the rounds build it: the bare verdict sentences carry no reason, so the format part is off
    weights = _weights().model_copy(update={"format_weight": 0.0})
    rp, rn = verdict_rewards(stage_reward("lc", weights, lc=lc, fmt=FormatReward()), judge, dataset)
    y, jp, jn = np.array([1, 0, 1, 0]), frame["judge_p_yes_pos"].to_numpy(), frame["judge_p_yes_neg"].to_numpy()
    assert rp == pytest.approx(np.where(y == 1, jp, 1 - jp).tolist())
    assert rn == pytest.approx(np.where(y == 1, jn, 1 - jn).tolist())
    ic = ICAgreementReward(lc, kind="prob", name="ic")
    label_free = build_prompt_dataset(frame.drop("label"), tokenizer, 120, EXPLANATION_PREFIX)
    rp, rn = verdict_rewards(stage_reward("ic", weights, lc=lc, ic=ic, fmt=FormatReward()), judge, label_free)
    t = frame["p_id"].to_numpy()
    assert rp == pytest.approx((t * jp + (1 - t) * (1 - jp)).tolist())
    assert rn == pytest.approx((t * jn + (1 - t) * (1 - jn)).tolist())
    # the keys the rewards looked up are the judge prompts of the bare verdict sentences on the fitted history
    row = dataset[0]
    assert (tuple((m["role"], m["content"]) for m in judge_messages(row["history"], row["target"],
                                                                     verdict_sentence(True, row["target"])))
            in judge._memo)


def _weights():
    from expctr.config import RewardParams

    return RewardParams(kind="prob", ic_lc_weight=0.0)


def test_one_verdict_pass_moves_the_verdict_toward_the_better_reward(base_model_dir, tokenizer):
    """Real SmolLM2: rewards that favour "not" for every prompt pull z down; base weights never change."""
    from expctr.llm.base_model import load_model

    torch.manual_seed(0)
    model = load_model(base_model_dir, threads=TEST_THREADS)
    rl = RLParams(lora_layers_from=26)
    policy = attach_adapter(model, rl)
    frame = pairs_frame([0, 0, 0, 0], [0.1] * 4, [0.9] * 4, [0.2] * 4)
    ids = prompt_token_ids(build_prompt_dataset(frame, tokenizer, 120, EXPLANATION_PREFIX), tokenizer)
    tokens = verdict_token_ids(tokenizer)
    before = score_verdicts(policy, tokenizer, ids, tokens)
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    logs = train_verdicts(policy, tokenizer, ids * 3, [0.1] * 12, [0.8] * 12, learning_rate=5e-3, batch_size=4,
                          temperature=0.25, seed=0)
    after = score_verdicts(policy, tokenizer, ids, tokens)
    assert len(logs) == 3 and {"reward", "p_positive", "agree", "seconds"} <= set(logs[0])
    assert (after < before).all(), (before, after)
    assert logs[-1]["reward"] > logs[0]["reward"]  # E[r] rises as pi(enjoy) falls
    assert all(torch.equal(p, base_before[n]) for n, p in policy.named_parameters() if "lora_" not in n)
    lora_layers = {int(n.split("layers.")[1].split(".")[0]) for n, _ in policy.named_parameters() if "lora_" in n}
    assert lora_layers == set(range(26, model.config.num_hidden_layers))


def test_slates_are_batched_whole():
    units = prompt_units(7, ["a", "a", "b", "c", "c", "c", "d"])
    assert units == [[0, 1], [2], [3, 4, 5], [6]]
    assert unit_batches(units, [2, 0, 1, 3], 4) == [[[3, 4, 5]], [[0, 1], [2], [6]]]
    # one-prompt units: the plain batches of `batch_size` prompts in the shuffled order
    assert unit_batches(prompt_units(5, None), [4, 2, 0, 1, 3], 2) == [[[4], [2]], [[0], [1]], [[3]]]
    with pytest.raises(ValueError, match="labels"):
        prompt_units(3, ["a"])


def test_shared_prefix_verdict_logit_and_gradients_equal_each_prompt_run_alone(base_model_dir, tokenizer):
    """A slate's shared prefix runs once, yet every prompt's z and the LoRA gradients are those of running each
    prompt whole (float32, no dropout)."""
    from expctr.llm.base_model import load_model

    torch.manual_seed(0)
    model = load_model(base_model_dir, threads=TEST_THREADS)
    policy = attach_adapter(model, RLParams(lora_layers_from=26, lora_dropout=0.0))
    for n, p in policy.named_parameters():  # a non-zero B, so both LoRA factors get gradients
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    other = [{"title": "Fargo", "year": 1996, "genres": ["Crime"], "liked": True}]
    frame = pl.concat([pairs_frame([1, 0, 1], [0.5] * 3, [0.9] * 3, [0.2] * 3),
                       pairs_frame([1], [0.5], [0.9], [0.2]).with_columns(pl.Series("history", [other]))])
    data = build_prompt_dataset(frame, tokenizer, 120, EXPLANATION_PREFIX)
    ids, groups = prompt_token_ids(data, tokenizer), data["prefix_group"]
    assert len(set(groups)) == 2  # three prompts of one history, one of another
    tokens = verdict_token_ids(tokenizer)

    def run(shared: bool):
        policy.zero_grad()
        if shared:
            z = verdict_logit_shared(policy, ids, groups, tokens, tokenizer.pad_token_id)
        else:
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True)
            z = verdict_logit(policy, batch["input_ids"], batch["attention_mask"], tokens)
        (z * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        return z.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    z_plain, g_plain = run(False)
    z_shared, g_shared = run(True)
    assert torch.allclose(z_shared, z_plain, atol=1e-3), (z_shared, z_plain)
    assert g_plain.keys() == g_shared.keys() and g_plain
    for n in g_plain:
        assert torch.allclose(g_shared[n], g_plain[n], rtol=1e-3, atol=1e-5), n


def test_quarter_means():
    assert quarter_means([1, 2, 3, 4, 5, 6, 7, 8]) == (1.5, 7.5)
    assert quarter_means([0.2]) == (0.2, 0.2)
