"""The reward of each RL stage, built from the params, and the exact rewards of both verdicts per prompt.

One place for both the round (one process) and `rl_launch` (the processes `accelerate launch` starts), so
each builds the same frozen judge, ID model and reward formula from the params alone.
"""

from __future__ import annotations

from expctr.config import Params
from expctr.ctr.checkpoint import load_id_model
from expctr.data.features import FeatureMap
from expctr.explainer.rewards.combine import CombinedReward, stage_reward
from expctr.explainer.rewards.format import FormatReward
from expctr.explainer.rewards.ic import ICAgreementReward
from expctr.explainer.rewards.lc import LCReward
from expctr.llm.base_model import load_model, load_tokenizer, reading_params
from expctr.llm.judge import JudgeScorer
from expctr.llm.prompts import judge_messages
from expctr.llm.verdicts import EXPLANATION_PREFIX, verdict_sentence
from expctr.paths import ProjectPaths

# llm_pairs stores the frozen judge's reading of each plain verdict sentence of a pool pair under these names
JUDGE_COLUMNS = ("judge_p_yes_pos", "judge_p_yes_neg")


def make_lc(params: Params, tokenizer, judge_model) -> tuple[JudgeScorer, LCReward]:
    """The frozen judge (grouped, memoised) and the LC reward it scores."""
    judge = JudgeScorer(judge_model, tokenizer, batch_size=params.llm.judge_batch_size)
    return judge, LCReward(judge, kind=params.reward.kind, name="lc", reads_history=params.llm.judge_reads_history)


def make_ic(params: Params, lc: LCReward, id_model) -> ICAgreementReward:
    """IC: the judge reading the explanation agrees with the ID model (no label needed)."""
    return ICAgreementReward(lc, id_model=id_model, kind=params.reward.kind, name="ic")


def build_stage_reward(stage: str, params: Params, paths: ProjectPaths) -> CombinedReward:
    """A stage's reward rebuilt from the params alone (for the processes `rl_launch` starts)."""
    tokenizer = load_tokenizer(paths.base_llm)
    llm = reading_params(params.llm)
    _, lc = make_lc(params, tokenizer, load_model(paths.base_llm, dtype=llm.dtype, device=llm.device))
    if stage == "lc":
        return stage_reward("lc", params.reward, lc=lc, fmt=FormatReward())
    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    return stage_reward("ic", params.reward, lc=lc, ic=make_ic(params, lc, id_model), fmt=FormatReward())


def verdict_rewards(reward, judge: JudgeScorer, dataset, reads_history: bool = True
                    ) -> tuple[list[float], list[float]]:
    """(r+, r-) per prompt: the stage reward of the two plain verdict sentences, computed by the same reward
    callable as the GRPO step, with the frozen judge's readings taken from the pool's precomputed columns
    (`JUDGE_COLUMNS`, written by llm_pairs on the same fitted history) when the dataset has them."""
    rows = dataset.to_list()
    sentences = [(verdict_sentence(True, r["target"]), verdict_sentence(False, r["target"])) for r in rows]
    if all(c in dataset.column_names for c in JUDGE_COLUMNS):
        for j, col in enumerate(JUDGE_COLUMNS):
            judge.remember([judge_messages(r["history"], r["target"], s[j], show_history=reads_history)
                            for r, s in zip(rows, sentences)],
                           dataset[col])
    columns = [c for c in dataset.column_names if c != "prompt"]
    kwargs = {c: [r[c] for r in rows for _ in (0, 1)] for c in columns}
    kwargs["explanation_prefix"] = [EXPLANATION_PREFIX] * (2 * len(rows))
    completions = [s[j][len(EXPLANATION_PREFIX):] for s in sentences for j in (0, 1)]
    prompts = [r["prompt"] for r in rows for _ in (0, 1)]
    values = reward(prompts=prompts, completions=completions, **kwargs)
    return list(values[0::2]), list(values[1::2])


__all__ = ["JUDGE_COLUMNS", "build_stage_reward", "make_ic", "make_lc", "verdict_rewards"]
