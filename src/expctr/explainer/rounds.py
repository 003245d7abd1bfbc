"""One ExpCTR round: LC stage -> explanations -> text-augmented CTR stage -> IC stage (DESIGN.md §1).

Round k continues the explainer adapter of round k-1 (a fresh LoRA adapter in round 1). Everything a round
produces lands in one staged directory that replaces `models/rounds/round_k` only when the round succeeds;
its explanations and metrics are written after that, so a failed round leaves the previous artifacts whole.

The per-round metrics describe the explanations written by the round's LC-stage adapter (the ones ExpCTR-Aug
is trained on); the IC-stage adapter of round k is what round k+1 starts from and what serving uses after the
last round (`final_test_eval` scores it on the test pairs once more).
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
from expctr.ctr.trainer import binary_metrics, predict
from expctr.data.features import SPLITS, FeatureMap
from expctr.explainer.rewards import (
    FormatReward,
    ICReward,
    JudgeScorer,
    LCReward,
    explanation_of,
    stage_reward,
    stance,
)
from expctr.explainer.rl import build_prompt_dataset, load_explainer, run_rl_stage
from expctr.io import atomic_path, write_json
from expctr.llm.base_model import load_model, load_tokenizer
from expctr.llm.encoder import embed, load_encoder
from expctr.llm.generation import generate
from expctr.llm.prompts import EXPLANATION_PREFIX
from expctr.paths import ProjectPaths

ADAPTER = "adapter"  # the round's final (IC-stage) adapter
ADAPTER_LC = "adapter_lc"


def adapter_of_round(paths: ProjectPaths, k: int) -> Path | None:
    """The adapter round k+1 starts from (None before round 1)."""
    return None if k < 1 else paths.round_dir(k) / ADAPTER


def explain(model, tokenizer, dataset, params: Params, desc: str) -> dict[str, list]:
    """Greedy one-sentence explanations for every prompt of a prompt dataset (the RL prompts, so the same
    assistant prefix is continued and put back)."""
    res = generate(model, tokenizer, dataset["prompt"], max_new_tokens=params.llm.max_new_tokens,
                   batch_size=params.llm.gen_batch_size, do_sample=False, seed=params.seed, desc=desc)
    prefix = dataset["explanation_prefix"] if "explanation_prefix" in dataset.column_names else [None] * len(res.raw_texts)
    texts = [explanation_of(raw, pre) for raw, pre in zip(res.raw_texts, prefix)]
    return {"explanation": texts, "n_tokens": list(res.n_new_tokens), "complete": list(res.complete),
            "raw": list(res.raw_texts)}


def explanation_stats(expl: dict[str, list]) -> dict[str, float]:
    texts = expl["explanation"]
    words = [len(t.split()) for t in texts]
    # a complete sentence within the token cap (the generator stops at the first sentence end)
    one_sentence = [bool(c) and bool(t.strip()) for c, t in zip(expl["complete"], texts)]
    stances = [stance(t) for t in texts]
    return {
        "mean_words": float(np.mean(words)) if words else 0.0,
        "mean_new_tokens": float(np.mean(expl["n_tokens"])) if texts else 0.0,
        "share_one_sentence": float(np.mean(one_sentence)) if texts else 0.0,
        "share_positive_stance": float(np.mean([s > 0 for s in stances])) if texts else 0.0,
        "share_negative_stance": float(np.mean([s < 0 for s in stances])) if texts else 0.0,
        "share_no_stance": float(np.mean([s == 0 for s in stances])) if texts else 0.0,
    }


def true_label_logprob(p: np.ndarray, labels: np.ndarray) -> float:
    pt = np.where(labels == 1, p, 1 - p)
    return float(np.mean(np.log(np.clip(pt, 1e-4, 1.0))))


def run_round(params: Params, paths: ProjectPaths, k: int) -> dict[str, Any]:
    started = time.perf_counter()
    llm, rl = params.llm, params.rl
    torch.set_num_threads(llm.threads)
    base_dir = paths.base_llm
    init_adapter = adapter_of_round(paths, k - 1)
    if init_adapter is not None and not init_adapter.exists():
        from expctr.errors import ExpCTRError

        raise ExpCTRError(f"{init_adapter} not found: run explainer round {k - 1} first")
    pairs = {s: pl.read_parquet(paths.llm_pairs / f"{s}.parquet") for s in SPLITS}
    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    tokenizer = load_tokenizer(base_dir)
    judge_model = load_model(base_dir, dtype=llm.dtype, device=llm.device)
    judge = JudgeScorer(judge_model, tokenizer, batch_size=llm.judge_batch_size)
    lc = LCReward(judge, kind=params.reward.kind, name="lc")
    fmt = FormatReward()
    datasets = {s: build_prompt_dataset(pairs[s], tokenizer, llm.max_prompt_tokens, EXPLANATION_PREFIX)
                for s in SPLITS}
    seed = params.seed + 1000 * k
    timings: dict[str, float] = {}

    with atomic_path(paths.round_dir(k)) as out:
        out.mkdir()
        # 1. LC stage
        t0 = time.perf_counter()
        lc_run = run_rl_stage(base_dir, out / ADAPTER_LC, datasets["train"],
                              [stage_reward("lc", params.reward, lc=lc, fmt=fmt)], None, rl, llm,
                              rl.lc_steps, seed, init_adapter_dir=init_adapter, log_path=out / "rl_lc.jsonl")
        timings["lc_stage_s"] = time.perf_counter() - t0

        # 2. explanations by the LC-stage explainer for train / valid / test
        t0 = time.perf_counter()
        explainer, _ = load_explainer(base_dir, out / ADAPTER_LC, llm)
        expl = {s: explain(explainer, tokenizer, datasets[s], params, f"round {k} explain {s}") for s in SPLITS}
        del explainer
        timings["explain_s"] = time.perf_counter() - t0

        # 3. CTR stage: ExpCTR-Aug on ID features + explanation embeddings
        t0 = time.perf_counter()
        encoder = load_encoder(paths.resolve(params.data.cache_dir), device=llm.device)
        data = {s: with_text(CTRData.from_frame(pairs[s]), embed(encoder, expl[s]["explanation"])) for s in SPLITS}
        aug, fit_res = train_text_ctr(copy.deepcopy(id_model), data["train"], data["valid"], params.text_ctr,
                                      seed, device=params.ctr.device, desc=f"round {k} ExpCTR-Aug")
        save_text_ctr(out / "text_ctr.pt", aug, params.ctr, {"best_epoch": fit_res.best_epoch,
                                                              "valid_auc": fit_res.best_valid_auc})
        timings["ctr_stage_s"] = time.perf_counter() - t0

        # test-pair metrics of this round's explanations
        t0 = time.perf_counter()
        test_labels = data["test"].labels.numpy().astype(int)
        # the LC reward's own judge pass (same prompts as during RL), over the greedy test explanations
        p_judge = lc.p_yes(expl["test"]["explanation"], datasets["test"]["history"], datasets["test"]["target"])
        p_aug = ic_probability(aug, data["test"])
        p_id = predict(id_model, data["test"], 4096)
        timings["eval_s"] = time.perf_counter() - t0

        # 4. IC stage (text-CTR frozen)
        t0 = time.perf_counter()
        aug.eval()
        ic = ICReward(aug, encoder, kind=params.reward.kind, id_model=id_model,
                      consistency_weight=params.reward.consistency_weight, name="ic")
        ic_run = run_rl_stage(base_dir, out / ADAPTER, datasets["train"],
                              [stage_reward("ic", params.reward, lc=lc, ic=ic, fmt=fmt)], None, rl, llm,
                              rl.ic_steps, seed + 1, init_adapter_dir=out / ADAPTER_LC,
                              log_path=out / "rl_ic.jsonl")
        timings["ic_stage_s"] = time.perf_counter() - t0

    # explanations (parquet) per split, with their rewards
    with atomic_path(paths.explanations(k)) as tmp:
        tmp.mkdir()
        for s in SPLITS:
            df = pairs[s].select("user_id", "item_id", "label").with_columns(
                pl.Series("explanation", expl[s]["explanation"]),
                pl.Series("n_tokens", expl[s]["n_tokens"], dtype=pl.Int32),
                pl.Series("stance", [stance(t) for t in expl[s]["explanation"]], dtype=pl.Int8),
            )
            if s == "test":
                df = df.with_columns(
                    pl.Series("p_yes_judge", p_judge), pl.Series("p_click_aug", p_aug), pl.Series("p_click_id", p_id),
                    pl.Series("lc_reward", np.log(np.clip(np.where(test_labels == 1, p_judge, 1 - p_judge), 1e-4, 1))),
                    pl.Series("ic_reward", np.log(np.clip(np.where(test_labels == 1, p_aug, 1 - p_aug), 1e-4, 1))),
                )
            df.write_parquet(tmp / f"{s}.parquet")

    zero_shot = pairs["test"]["p_yes_zero_shot"].to_numpy()
    metrics = {
        "round": k,
        "test_pairs": len(test_labels),
        "lc_reward_mean": true_label_logprob(p_judge, test_labels),
        "ic_reward_mean": true_label_logprob(p_aug, test_labels),
        "lc_auc": binary_metrics(test_labels, p_judge)["auc"],
        "zero_shot_judge_auc": binary_metrics(test_labels, zero_shot)["auc"],
        "expctr_llm": binary_metrics(test_labels, p_judge),
        "expctr_aug": binary_metrics(test_labels, p_aug),
        "id_only": binary_metrics(test_labels, p_id),
        # epoch 0 = the untrained head won on validation, i.e. Aug kept the ID model (explanations did not help)
        "text_ctr_fit": {"best_epoch": fit_res.best_epoch, "best_valid_auc": fit_res.best_valid_auc,
                         "curve": fit_res.curve},
        "explanations": {s: explanation_stats(expl[s]) for s in SPLITS},
        "rl": {"lc": lc_run["summary"], "ic": ic_run["summary"]},
        "reward_curves": {
            "lc": [row.get("reward") for row in lc_run["steps"]],
            "ic": [row.get("reward") for row in ic_run["steps"]],
        },
        "samples": [
            {"user_id": u, "item_id": i, "label": int(y), "explanation": e}
            for u, i, y, e in zip(pairs["test"]["user_id"][:5], pairs["test"]["item_id"][:5],
                                  test_labels[:5], expl["test"]["explanation"][:5])
        ],
        "timings": {key: round(v, 2) for key, v in timings.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(paths.metric(f"round_{k}.json"), metrics)
    return metrics
