"""One ExpCTR round: LC stage -> explanations -> text-augmented CTR stage -> IC stage (DESIGN.md §1), then the
round's evaluation on the test pairs. Round 0 is the base explainer before any RL, evaluated the same way.

Each RL stage (`expctr.explainer.rl.run_rl_stage`) is a dense verdict step over `rl.verdict_prompts` pool
prompts (exact rewards of both verdicts; `expctr.explainer.verdict`) followed by a few GRPO steps that train the
reason under a fixed verdict. The LC stage's reward is the judge's probability of the real click; the IC stage's
is the judge's agreement with the ID model (`reward.ic_form: agree`, no label needed) or ExpCTR-Aug's probability
of the label (`aug`). Round k continues the adapter of round k-1 (a fresh LoRA adapter in round 1).

Evaluation: the round's final (IC-stage) adapter writes greedy explanations for the first n test pairs (n =
`pairs.test` for the last round, `evaluation.round_test_pairs` before it), which the judge reads (ExpCTR-LLM) and
ExpCTR-Aug reads with the ID features (ExpCTR-Aug); the same pairs carry the zero-shot judge, the history rules and
the ID model, so every figure of a round compares like with like. ExpCTR-Aug itself is trained on explanations of
the LC-stage adapter (the paper's order: LC -> CTR -> IC).

Everything a round produces lands in one staged directory that replaces `models/rounds/round_k` only when the
round succeeds; explanations and metrics are written after that, so a failed round leaves the previous artifacts
whole. Versioned metrics hold only paths relative to the project root.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from expctr.config import Params
from expctr.ctr.batch import CTRData
from expctr.ctr.checkpoint import load_id_model
from expctr.ctr.text_augmented import ic_probability, save_text_ctr, train_text_ctr, with_text
from expctr.data.features import SPLITS, FeatureMap
from expctr.distributed import should_launch
from expctr.errors import ExpCTRError
from expctr.evaluation.metrics import auc_with_ci, paired_auc_difference, verdict_confusion
from expctr.explainer import rl_launch
from expctr.explainer.rewards import (
    FormatReward,
    ICAgreementReward,
    ICReward,
    JudgeScorer,
    LCReward,
    explanation_of,
    stage_reward,
    stance,
)
from expctr.explainer.rl import build_prompt_dataset, load_explainer, run_rl_stage
from expctr.explainer.verdict import quarter_means, verdict_token_ids
from expctr.io import atomic_path, write_json
from expctr.llm.base_model import load_model, load_tokenizer
from expctr.llm.encoder import embed, load_encoder
from expctr.llm.generation import generate
from expctr.llm.prompts import EXPLANATION_PREFIX, judge_messages, verdict_sentence
from expctr.paths import ProjectPaths

ADAPTER = "adapter"  # the round's final (IC-stage) adapter
ADAPTER_LC = "adapter_lc"


def adapter_of_round(paths: ProjectPaths, k: int) -> Path | None:
    """The adapter round k+1 starts from (None before round 1)."""
    return None if k < 1 else paths.round_dir(k) / ADAPTER


def round_test_pairs(params: Params, k: int) -> int:
    """How many test pairs round k is evaluated on: all for the last round, the first n before it."""
    return params.pairs.test if k == params.rounds else min(params.pairs.test, params.evaluation.round_test_pairs)


def stage_sample(pool: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """n distinct pool pairs (seeded; all of them, shuffled, when the pool is smaller)."""
    return pool.sample(min(n, pool.height), seed=seed, shuffle=True)


def explain(model, tokenizer, dataset, params: Params, desc: str, verdict_tokens=None) -> dict[str, list]:
    """Greedy one-sentence explanations for every prompt of a prompt dataset (the RL prompts, so the same
    assistant prefix is continued and put back); with `verdict_tokens`, also the verdict logit z of each prompt
    (the first generated position's logit(" enjoy") - logit(" not"))."""
    res = generate(model, tokenizer, dataset["prompt"], max_new_tokens=params.llm.max_new_tokens,
                   batch_size=params.llm.gen_batch_size, do_sample=False, seed=params.seed, desc=desc,
                   first_token_ids=None if verdict_tokens is None else [verdict_tokens.positive,
                                                                         verdict_tokens.negative])
    prefix = dataset["explanation_prefix"] if "explanation_prefix" in dataset.column_names else [None] * len(res.raw_texts)
    texts = [explanation_of(raw, pre) for raw, pre in zip(res.raw_texts, prefix)]
    out = {"explanation": texts, "n_tokens": list(res.n_new_tokens), "complete": list(res.complete),
           "raw": list(res.raw_texts)}
    if res.first_logits is not None:
        out["verdict_logit"] = [a - b for a, b in res.first_logits]
    return out


def explanation_stats(expl: dict[str, list]) -> dict[str, float]:
    texts = expl["explanation"]
    words = [len(t.split()) for t in texts]
    # a complete sentence within the token cap (the generator stops at the first sentence end)
    one_sentence = [bool(c) and bool(t.strip()) for c, t in zip(expl["complete"], texts)]
    stances = [stance(t) for t in texts]
    return {
        "n": len(texts),
        "mean_words": float(np.mean(words)) if words else 0.0,
        "mean_new_tokens": float(np.mean(expl["n_tokens"])) if texts else 0.0,
        "share_one_sentence": float(np.mean(one_sentence)) if texts else 0.0,
        "share_positive_stance": float(np.mean([s > 0 for s in stances])) if texts else 0.0,
        "share_negative_stance": float(np.mean([s < 0 for s in stances])) if texts else 0.0,
        "share_no_stance": float(np.mean([s == 0 for s in stances])) if texts else 0.0,
    }


def verdict_rewards(reward, judge: JudgeScorer, dataset) -> tuple[list[float], list[float]]:
    """(r+, r-) per prompt: the stage reward of the two bare verdict sentences, computed by the same reward
    callable as the GRPO step, with the frozen judge's readings taken from the pool's precomputed columns
    (`judge_p_yes_pos` / `judge_p_yes_neg`, written by llm_pairs on the same fitted history)."""
    rows = dataset.to_list()
    sentences = [(verdict_sentence(True, r["target"]), verdict_sentence(False, r["target"])) for r in rows]
    if "judge_p_yes_pos" in dataset.column_names:
        for j, col in enumerate(("judge_p_yes_pos", "judge_p_yes_neg")):
            judge.remember([judge_messages(r["history"], r["target"], s[j]) for r, s in zip(rows, sentences)],
                           dataset[col])
    columns = [c for c in dataset.column_names if c != "prompt"]
    kwargs = {c: [r[c] for r in rows for _ in (0, 1)] for c in columns}
    kwargs["explanation_prefix"] = [EXPLANATION_PREFIX] * (2 * len(rows))
    completions = [s[j][len(EXPLANATION_PREFIX):] for s in sentences for j in (0, 1)]
    prompts = [r["prompt"] for r in rows for _ in (0, 1)]
    values = reward(prompts=prompts, completions=completions, **kwargs)
    return list(values[0::2]), list(values[1::2])


def make_lc(params: Params, tokenizer, judge_model) -> tuple[JudgeScorer, LCReward]:
    """The frozen judge (grouped, memoised) and the LC reward it scores."""
    judge = JudgeScorer(judge_model, tokenizer, batch_size=params.llm.judge_batch_size)
    return judge, LCReward(judge, kind=params.reward.kind, name="lc")


def make_ic(params: Params, lc: LCReward, id_model, aug=None, encoder=None):
    """The IC reward of `reward.ic_form`: agreement of the judge with the ID model, or ExpCTR-Aug's P(label)."""
    if params.reward.ic_form == "agree":
        return ICAgreementReward(lc, id_model=id_model, kind=params.reward.kind, name="ic")
    if aug is None:
        raise ExpCTRError("reward.ic_form 'aug' needs the round's ExpCTR-Aug model")
    return ICReward(aug, encoder, kind=params.reward.kind, id_model=id_model,
                    consistency_weight=params.reward.consistency_weight, name="ic")


def build_stage_reward(stage: str, params: Params, paths: ProjectPaths, aug_path: Path | None = None):
    """A stage's reward rebuilt from the params alone (for the processes `rl_launch` starts)."""
    from expctr.ctr.text_augmented import load_text_ctr

    tokenizer = load_tokenizer(paths.base_llm)
    _, lc = make_lc(params, tokenizer, load_model(paths.base_llm, dtype=params.llm.dtype, device=params.llm.device))
    if stage == "lc":
        return stage_reward("lc", params.reward, lc=lc, fmt=FormatReward())
    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    aug = encoder = None
    if params.reward.ic_form == "aug":
        aug = load_text_ctr(aug_path, fmap).eval()
        encoder = load_encoder(paths.resolve(params.data.cache_dir), device=params.llm.device)
    return stage_reward("ic", params.reward, lc=lc, ic=make_ic(params, lc, id_model, aug, encoder),
                        fmt=FormatReward())


def _auc(labels: np.ndarray, scores: np.ndarray, params: Params, is_probability: bool = True) -> dict[str, Any]:
    return auc_with_ci(labels, scores, seed=params.seed, n_boot=params.evaluation.bootstrap,
                       is_probability=is_probability)


def evaluate_explainer(explainer, tokenizer, test: pl.DataFrame, lc: LCReward, params: Params, k: int,
                       aug=None, encoder=None) -> tuple[dict[str, Any], pl.DataFrame]:
    """Explain the test pairs with `explainer` and score every predictor on them: (metrics, per-pair frame)."""
    dataset = build_prompt_dataset(test, tokenizer, params.llm.max_prompt_tokens, EXPLANATION_PREFIX)
    expl = explain(explainer, tokenizer, dataset, params, f"round {k} explain test",
                   verdict_tokens=verdict_token_ids(tokenizer))
    p_judge = lc.p_yes(expl["explanation"], dataset["history"], dataset["target"])
    labels = test["label"].to_numpy().astype(int)
    p_id = test["p_id"].to_numpy()
    stances = np.array([stance(t) for t in expl["explanation"]])
    frame = test.select("user_id", "item_id", "label", "p_id").with_columns(
        pl.Series("explanation", expl["explanation"]),
        pl.Series("n_tokens", expl["n_tokens"], dtype=pl.Int32),
        pl.Series("complete", expl["complete"]),
        pl.Series("stance", stances, dtype=pl.Int8),
        pl.Series("verdict_logit", expl["verdict_logit"]),
        pl.Series("p_yes_judge", p_judge),
    )
    metrics: dict[str, Any] = {
        "test_pairs": len(labels),
        "test_click_rate": float(labels.mean()),
        "expctr_llm": _auc(labels, p_judge, params),
        "verdict_logit": _auc(labels, np.asarray(expl["verdict_logit"]), params, is_probability=False),
        "id_only": _auc(labels, p_id, params),
        "zero_shot_judge": _auc(labels, test["p_yes_zero_shot"].to_numpy(), params),
        "rules": {c.removeprefix("rule_"): _auc(labels, test[c].to_numpy(), params, is_probability=False)
                  for c in test.columns if c.startswith("rule_")},
        "verdicts": verdict_confusion(stances, labels, p_id >= 0.5),
        "explanations": explanation_stats(expl),
    }
    if aug is not None:
        p_aug = ic_probability(aug, with_text(CTRData.from_frame(test), embed(encoder, expl["explanation"])))
        frame = frame.with_columns(pl.Series("p_click_aug", p_aug))
        metrics["expctr_aug"] = _auc(labels, p_aug, params)
        metrics["aug_minus_id"] = paired_auc_difference(labels, p_aug, p_id, seed=params.seed,
                                                        n_boot=params.evaluation.bootstrap)
    return metrics, frame


def _relative(paths: ProjectPaths, p: Path) -> str:
    return str(Path(p).resolve().relative_to(paths.root.resolve()))


def _curves(run: dict[str, Any]) -> dict[str, list]:
    return {"verdict": [r["reward"] for r in run["verdict_steps"]],
            "reason": [r.get("reward") for r in run["steps"]]}


def _rise(curve: list) -> dict[str, Any]:
    """Mean reward of the first vs the last quarter of a stage's steps (`rises` is None below two steps)."""
    first, last = quarter_means(curve)
    return {"first_quarter": first, "last_quarter": last, "steps": len(curve),
            "rises": bool(last > first) if len(curve) >= 2 else None}


def write_reward_curves(paths: ProjectPaths, k: int, runs: dict[str, dict]) -> None:
    """Per stage and phase, a CSV of (step, reward) under metrics/rewards/round_k/ (a DVC plot)."""
    with atomic_path(paths.metric(f"rewards/round_{k}")) as tmp:
        tmp.mkdir(parents=True)
        for stage, run in runs.items():
            for phase, curve in _curves(run).items():
                if curve:
                    pl.DataFrame({"step": list(range(1, len(curve) + 1)), "reward": curve}).write_csv(
                        tmp / f"{stage}_{phase}.csv")


def run_round(params: Params, paths: ProjectPaths, k: int) -> dict[str, Any]:
    """Round k >= 1 (three stages, then its evaluation), or round 0 (the base explainer's evaluation)."""
    started = time.perf_counter()
    llm, rl = params.llm, params.rl
    torch.set_num_threads(llm.threads)
    base_dir = paths.base_llm
    init_adapter = adapter_of_round(paths, k - 1)
    if init_adapter is not None and not init_adapter.exists():
        raise ExpCTRError(f"{init_adapter} not found: run explainer round {k - 1} first")
    pairs = {s: pl.read_parquet(paths.llm_pairs / f"{s}.parquet") for s in SPLITS}
    test = pairs["test"].head(round_test_pairs(params, k))
    tokenizer = load_tokenizer(base_dir)
    judge_model = load_model(base_dir, dtype=llm.dtype, device=llm.device)
    judge, lc = make_lc(params, tokenizer, judge_model)
    timings: dict[str, float] = {}

    if k == 0:
        t0 = time.perf_counter()
        evaluation, test_frame = evaluate_explainer(judge_model, tokenizer, test, lc, params, 0)
        timings["eval_s"] = time.perf_counter() - t0
        with atomic_path(paths.explanations(0)) as tmp:
            tmp.mkdir()
            test_frame.write_parquet(tmp / "test.parquet")
        metrics = {"round": 0, **evaluation, "timings": _rounded(timings),
                   "seconds": round(time.perf_counter() - started, 2)}
        write_json(paths.metric("round_0.json"), metrics)
        return metrics

    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    fmt = FormatReward()
    pool = pairs["train"]
    seed = params.seed + 1000 * k
    budget = llm.max_prompt_tokens

    def stage_inputs(stage: str, offset: int, drop_label: bool = False, **parts):
        """(verdict prompts, their (r+, r-), GRPO reason pairs) of a stage. The verdict rewards leave the format
        part out: it judges the reason, and the bare verdict sentences have none (it would only shift both)."""
        frame = stage_sample(pool, rl.verdict_prompts, seed + offset)
        if drop_label:  # the IC reward needs no label: prove it by training without one
            frame = frame.drop("label")
        data = build_prompt_dataset(frame, tokenizer, budget, EXPLANATION_PREFIX) if frame.height else None
        reason = stage_sample(pool, rl.prompts_per_step * max(rl.lc_steps, rl.ic_steps, 1), seed + offset + 7)
        if drop_label:
            reason = reason.drop("label")
        verdict_reward = stage_reward(stage, params.reward.model_copy(update={"format_weight": 0.0}), **parts)
        return data, (verdict_rewards(verdict_reward, judge, data) if data is not None else None), reason

    def rl_stage(stage: str, reward, out_dir: Path, stage_seed: int, inputs, steps: int, init: Path | None,
                 aug_path: Path | None = None) -> dict[str, Any]:
        """The stage in this process, or as N processes under `accelerate launch` (`rl_launch`)."""
        data, rewards, reason = inputs
        log = out_dir.parent / f"rl_{stage}.jsonl"
        if should_launch(params.distributed, "explainer_rl"):
            return rl_launch.launch(params, paths, stage=stage, seed=stage_seed, out_adapter_dir=out_dir,
                                    init_adapter_dir=init, log_path=log, verdict_dataset=data,
                                    verdict_rewards=rewards, reason_pairs=reason, reason_steps=steps,
                                    aug_path=aug_path)
        return run_rl_stage(base_dir, out_dir, reward, rl, llm, stage_seed, verdict_dataset=data,
                            verdict_rewards=rewards, reason_pairs=reason, reason_steps=steps,
                            init_adapter_dir=init, log_path=log)

    with atomic_path(paths.round_dir(k)) as out:
        out.mkdir()
        # 1. LC stage
        t0 = time.perf_counter()
        lc_reward = stage_reward("lc", params.reward, lc=lc, fmt=fmt)
        lc_run = rl_stage("lc", lc_reward, out / ADAPTER_LC, seed, stage_inputs("lc", 0, lc=lc), rl.lc_steps,
                          init_adapter)
        timings["lc_stage_s"] = time.perf_counter() - t0

        # 2. explanations of the LC-stage explainer for ExpCTR-Aug's train / valid pairs
        t0 = time.perf_counter()
        aug_pairs = {"train": stage_sample(pool, params.text_ctr.train_pairs, seed + 2), "valid": pairs["valid"]}
        explainer, _ = load_explainer(base_dir, out / ADAPTER_LC, llm)
        expl = {s: explain(explainer, tokenizer, build_prompt_dataset(df, tokenizer, budget, EXPLANATION_PREFIX),
                           params, f"round {k} explain {s}") for s, df in aug_pairs.items()}
        del explainer
        timings["explain_s"] = time.perf_counter() - t0

        # 3. CTR stage: ExpCTR-Aug on ID features + explanation embeddings
        t0 = time.perf_counter()
        encoder = load_encoder(paths.resolve(params.data.cache_dir), device=llm.device)
        data_ctr = {s: with_text(CTRData.from_frame(aug_pairs[s]), embed(encoder, expl[s]["explanation"]))
                    for s in aug_pairs}
        aug, fit_res = train_text_ctr(copy.deepcopy(id_model), data_ctr["train"], data_ctr["valid"], params.text_ctr,
                                      seed, device=params.ctr.device, desc=f"round {k} ExpCTR-Aug")
        save_text_ctr(out / "text_ctr.pt", aug, params.ctr, {"best_epoch": fit_res.best_epoch,
                                                              "valid_auc": fit_res.best_valid_auc})
        aug.eval()
        timings["ctr_stage_s"] = time.perf_counter() - t0

        # 4. IC stage (text-CTR frozen)
        t0 = time.perf_counter()
        ic = make_ic(params, lc, id_model, aug, encoder)
        ic_reward = stage_reward("ic", params.reward, lc=lc, ic=ic, fmt=fmt)
        label_free = params.reward.ic_form == "agree" and params.reward.ic_lc_weight == 0
        ic_run = rl_stage("ic", ic_reward, out / ADAPTER, seed + 1,
                          stage_inputs("ic", 1, drop_label=label_free, lc=lc, ic=ic), rl.ic_steps, out / ADAPTER_LC,
                          aug_path=out / "text_ctr.pt")
        timings["ic_stage_s"] = time.perf_counter() - t0

        # 5. evaluation of the round's final explainer on the test pairs
        t0 = time.perf_counter()
        explainer, _ = load_explainer(base_dir, out / ADAPTER, llm)
        evaluation, test_frame = evaluate_explainer(explainer, tokenizer, test, lc, params, k, aug=aug,
                                                    encoder=encoder)
        del explainer
        timings["eval_s"] = time.perf_counter() - t0

    with atomic_path(paths.explanations(k)) as tmp:
        tmp.mkdir()
        for s, df in aug_pairs.items():
            df.select("user_id", "item_id", "label").with_columns(
                pl.Series("explanation", expl[s]["explanation"]),
                pl.Series("n_tokens", expl[s]["n_tokens"], dtype=pl.Int32),
                pl.Series("stance", [stance(t) for t in expl[s]["explanation"]], dtype=pl.Int8),
            ).write_parquet(tmp / f"{s}.parquet")
        test_frame.write_parquet(tmp / "test.parquet")
    runs = {"lc": lc_run, "ic": ic_run}
    write_reward_curves(paths, k, runs)
    metrics = {
        "round": k,
        **evaluation,
        "aug_train_explanations": {s: explanation_stats(expl[s]) for s in expl},
        # epoch 0 = the untrained head won on validation, i.e. Aug kept the ID model (explanations did not help)
        "text_ctr_fit": {"best_epoch": fit_res.best_epoch, "best_valid_auc": fit_res.best_valid_auc,
                         "curve": fit_res.curve},
        "rl": {stage: run["summary"] for stage, run in runs.items()},
        "reward_curves": {stage: _curves(run) for stage, run in runs.items()},
        "rewards_rise": {stage: {phase: _rise(c) for phase, c in _curves(run).items()} for stage, run in runs.items()},
        "artifacts": {"round_dir": _relative(paths, paths.round_dir(k)),
                      "explanations": _relative(paths, paths.explanations(k))},
        "samples": test_frame.head(5).select("user_id", "item_id", "label", "explanation").to_dicts(),
        "timings": _rounded(timings),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(paths.metric(f"round_{k}.json"), metrics)
    return metrics


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {key: round(v, 2) for key, v in timings.items()}
