"""One ExpCTR round: LC stage -> IC stage -> explanations -> CTR stage (ExpCTR-Aug) -> evaluation.

- LC stage (`expctr.explainer.rl.run_rl_stage`): the explainer's LoRA adapter trained with the LC reward (the
  frozen judge's probability of the real click), continuing round k-1's adapter (a fresh one in round 1);
- IC stage: the same adapter trained further with the IC reward (the judge agreeing with the ID model; no
  label), on pool pairs with the label removed;
- explanations: the round's final explainer explains the valid-period pairs ExpCTR-Aug trains on and the test
  pairs (`expctr.explainer.explain`);
- CTR stage (`expctr.explainer.aug_stage`): ExpCTR-Aug and its two controls (facts only, shuffled explanation),
  trained on the explained valid-period pairs;
- evaluation (`expctr.explainer.evaluate`) on the first n test pairs (all `pairs.test` in the last round,
  `evaluation.round_test_pairs` before it): ExpCTR-LLM, the verdict logit, ExpCTR-Aug and its controls, the ID
  model, the zero-shot judge and the rules, all on the same pairs. The shuffled control is scored in the last
  round, where the users with a single test pair get one more explained pair to take it from.

Why the CTR stage comes after the IC stage (the paper lists LC, CTR, IC): the IC reward reads the ID model,
not ExpCTR-Aug, so nothing in the IC stage depends on it; trained last, ExpCTR-Aug reads explanations of the
same explainer whose test explanations it then scores. Round 0 is the base explainer before any RL, evaluated
the same way (LLM side only).

Everything a round produces lands in one staged directory that replaces `models/rounds/round_k` only when the
round succeeds; explanations and metrics are written after that, so a failed round leaves the previous artifacts
whole. Versioned metrics hold only paths relative to the project root.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

from expctr.config import Params
from expctr.ctr.checkpoint import load_id_model
from expctr.ctr.text_augmented import save_text_ctr
from expctr.data.features import FeatureMap
from expctr.distributed import should_launch
from expctr.errors import ExpCTRError
from expctr.explainer import rl_launch
from expctr.explainer.aug_stage import join_explanations, score_variant, train_variants
from expctr.explainer.dataset import build_prompt_dataset
from expctr.explainer.evaluate import aug_metrics, llm_metrics
from expctr.explainer.explain import explain_side_by_side, explanation_stats
from expctr.explainer.rewards.combine import stage_reward
from expctr.explainer.rewards.format import FormatReward
from expctr.explainer.rl import run_rl_stage
from expctr.explainer.round_logs import stage_summary, write_reward_curves
from expctr.explainer.stage_rewards import make_ic, make_lc, verdict_rewards
from expctr.io import atomic_path, write_json
from expctr.llm.adapters import load_explainer
from expctr.llm.base_model import load_model, load_tokenizer, reading_params
from expctr.llm.encoder import load_encoder
from expctr.llm.side_by_side import ModelLoader, SideBySide
from expctr.llm.verdicts import EXPLANATION_PREFIX
from expctr.paths import ProjectPaths

ADAPTER = "adapter"  # the round's final (IC-stage) adapter
ADAPTER_LC = "adapter_lc"
AUG_FILES = {"explanation": "text_ctr.pt", "facts": "text_ctr_facts.pt", "shuffled": "text_ctr_shuffled.pt"}
EXPLANATION_COLUMNS = ("user_id", "item_id", "label", "explanation", "opening", "anchor", "grade", "verdict_logit",
                       "stance", "n_tokens", "complete")


def adapter_of_round(paths: ProjectPaths, k: int) -> Path | None:
    """The adapter round k+1 starts from (None before round 1)."""
    return None if k < 1 else paths.round_dir(k) / ADAPTER


def round_test_pairs(params: Params, k: int) -> int:
    """How many test pairs round k is evaluated on: all for the last round, the first n before it."""
    return params.pairs.test if k == params.rounds else min(params.pairs.test, params.evaluation.round_test_pairs)


def stage_sample(pool: pl.DataFrame, n: int, seed: int, slate: int | None = None) -> pl.DataFrame:
    """n distinct pool pairs (seeded; all of them, shuffled, when the pool is smaller). With `slate` (a pool
    drawn as slates, `pairs.train_slate`) whole slates are drawn, n // slate of them (at least one), each kept
    together, so its prompts still share their prefix."""
    if not slate:
        return pool.sample(min(n, pool.height), seed=seed, shuffle=True)
    keyed = pool.with_row_index("_row")
    slates = keyed.group_by("user_id", "timestamp", maintain_order=True).agg(pl.col("_row"))
    k = min(slates.height, max(1, n // slate))
    picked = slates.sample(k, seed=seed, shuffle=True)["_row"].to_list()
    return keyed[[r for rows in picked for r in rows]].drop("_row")


def _relative(paths: ProjectPaths, p: Path) -> str:
    return str(Path(p).resolve().relative_to(paths.root.resolve()))


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {key: round(v, 2) for key, v in timings.items()}


class _Timer:
    """Wall seconds per named part of a round."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def part(self, name: str):
        timer = self

        class _Part:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t0

        return _Part()


def _rl_stages(params: Params, paths: ProjectPaths, k: int, out: Path, tokenizer, judge, lc, id_model,
               init_adapter: Path | None, timer: _Timer) -> dict[str, dict]:
    """The LC then the IC stage of round k (each in this process, or as N processes under accelerate)."""
    rl, pool, seed = params.rl, pl.read_parquet(paths.llm_pairs / "train.parquet"), params.seed + 1000 * k
    fmt = FormatReward()
    ic = make_ic(params, lc, id_model)

    def inputs(stage: str, offset: int, drop_label: bool, **parts):
        """(verdict prompts, their (r+, r-), GRPO reason pairs). The verdict rewards leave the format part out:
        it judges the reason, and the bare verdict sentences have none (it would only shift both)."""
        n = rl.verdict_prompts if stage == "lc" or rl.ic_verdict_prompts is None else rl.ic_verdict_prompts
        frame = stage_sample(pool, n, seed + offset, params.pairs.train_slate)
        if drop_label:  # the IC reward needs no label: prove it by training without one
            frame = frame.drop("label")
        data = build_prompt_dataset(frame, tokenizer, params.llm.max_prompt_tokens, EXPLANATION_PREFIX) \
            if frame.height else None
        reason = stage_sample(pool, rl.prompts_per_step * max(rl.lc_steps, rl.ic_steps, 1), seed + offset + 7)
        if drop_label:
            reason = reason.drop("label")
        verdict_reward = stage_reward(stage, params.reward.model_copy(update={"format_weight": 0.0}), **parts)
        rewards = verdict_rewards(verdict_reward, judge, data, params.llm.judge_reads_history) \
            if data is not None else None
        return data, rewards, reason

    def run(stage: str, reward, adapter: Path, stage_seed: int, stage_inputs, steps: int, init: Path | None):
        data, rewards, reason = stage_inputs
        log = adapter.parent / f"rl_{stage}.jsonl"
        if should_launch(params.distributed, "explainer_rl"):
            return rl_launch.launch(params, paths, stage=stage, seed=stage_seed, out_adapter_dir=adapter,
                                    init_adapter_dir=init, log_path=log, verdict_dataset=data,
                                    verdict_rewards=rewards, reason_pairs=reason, reason_steps=steps)
        return run_rl_stage(paths.base_llm, adapter, reward, rl, params.llm, stage_seed, verdict_dataset=data,
                            verdict_rewards=rewards, reason_pairs=reason, reason_steps=steps,
                            init_adapter_dir=init, log_path=log)

    runs = {}
    with timer.part("lc_stage_s"):
        runs["lc"] = run("lc", stage_reward("lc", params.reward, lc=lc, fmt=fmt), out / ADAPTER_LC, seed,
                         inputs("lc", 0, False, lc=lc), rl.lc_steps, init_adapter)
    with timer.part("ic_stage_s"):
        label_free = params.reward.ic_lc_weight == 0
        runs["ic"] = run("ic", stage_reward("ic", params.reward, lc=lc, ic=ic, fmt=fmt), out / ADAPTER, seed + 1,
                         inputs("ic", 1, label_free, lc=lc, ic=ic), rl.ic_steps, out / ADAPTER_LC)
    return runs


@contextlib.contextmanager
def _judging(lc, pool: SideBySide, load: ModelLoader):
    """While the block runs, the judge's large grouped reads (the evaluation's) are split over `pool`."""
    scorer = lc.scorer
    scorer.pool, scorer.load = pool, load
    try:
        yield
    finally:
        scorer.pool, scorer.load = None, None


def _round_zero(params: Params, paths: ProjectPaths, test: pl.DataFrame, tokenizer, judge_model, lc,
                timer: _Timer, started: float, llm) -> dict[str, Any]:
    base = ModelLoader(paths.base_llm, None, llm)  # round 0's explainer is the judge's model: workers load it once
    with SideBySide.for_llm(params.llm) as pool:
        with timer.part("explain_test_s"):
            explained = explain_side_by_side(pool, judge_model, tokenizer, base, test, params, "round 0 explain test")
        with timer.part("judge_s"), _judging(lc, pool, base):
            evaluation, frame = llm_metrics(test, explained, lc, params)
    with atomic_path(paths.explanations(0)) as tmp:
        tmp.mkdir()
        frame.write_parquet(tmp / "test.parquet")
    metrics = {"round": 0, **evaluation, "timings": _rounded(timer.seconds),
               "seconds": round(time.perf_counter() - started, 2)}
    write_json(paths.metric("round_0.json"), metrics)
    return metrics


def run_round(params: Params, paths: ProjectPaths, k: int) -> dict[str, Any]:
    """Round k >= 1 (LC, IC, explanations, CTR stage, evaluation), or round 0 (the base explainer evaluated)."""
    started, timer = time.perf_counter(), _Timer()
    llm = reading_params(params.llm)  # the judge and generation read in the inference dtype; RL trains in llm.dtype
    torch.set_num_threads(llm.threads)
    init_adapter = adapter_of_round(paths, k - 1)
    if init_adapter is not None and not init_adapter.exists():
        raise ExpCTRError(f"{init_adapter} not found: run explainer round {k - 1} first")
    test = pl.read_parquet(paths.llm_pairs / "test.parquet").head(round_test_pairs(params, k))
    tokenizer = load_tokenizer(paths.base_llm)
    judge_model = load_model(paths.base_llm, dtype=llm.dtype, device=llm.device)
    judge, lc = make_lc(params, tokenizer, judge_model)
    if k == 0:
        return _round_zero(params, paths, test, tokenizer, judge_model, lc, timer, started, llm)

    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    aug_pairs = pl.read_parquet(paths.llm_pairs / "valid.parquet")
    last = k == params.rounds
    donors = pl.read_parquet(paths.llm_pairs / "donors.parquet") if last else None
    blocks = params.text_ctr.explanation_blocks
    pool_hidden, states = "hidden" in blocks, "state" in blocks
    writes = bool({"text", "hidden"} & set(blocks))  # Aug reads written text: else a verdict reading is enough
    with atomic_path(paths.round_dir(k)) as out, contextlib.ExitStack() as stack:
        out.mkdir()
        runs = _rl_stages(params, paths, k, out, tokenizer, judge, lc, id_model, init_adapter, timer)
        pool = stack.enter_context(SideBySide.for_llm(params.llm))  # its workers import while the explainer loads
        explainer, _ = load_explainer(paths.base_llm, out / ADAPTER, llm)
        load = ModelLoader(paths.base_llm, out / ADAPTER, llm)
        with timer.part("explain_aug_s"):
            aug_expl = explain_side_by_side(pool, explainer, tokenizer, load, aug_pairs, params,
                                            f"round {k} explain valid",
                                            pool_hidden=pool_hidden, write=writes, read_states=states)
        with timer.part("explain_test_s"):
            test_expl = explain_side_by_side(pool, explainer, tokenizer, load, test, params,
                                             f"round {k} explain test", pool_hidden=pool_hidden, read_states=states)
            # donors lend the shuffled control their Aug inputs only: written when Aug reads text, else read
            donor_expl = explain_side_by_side(pool, explainer, tokenizer, load, donors, params,
                                              f"round {k} explain donors", pool_hidden=pool_hidden, write=writes,
                                              read_states=states) if donors is not None and donors.height else None
        del explainer
        with timer.part("ctr_stage_s"):
            encoder = load_encoder(paths.resolve(params.data.cache_dir), device=llm.device)
            aug_in = join_explanations(aug_pairs, aug_expl, encoder, blocks, params.seed)
            variants = ("explanation", "facts", "shuffled")
            trained = train_variants(id_model, aug_in, params, params.seed + k, variants, desc=f"round {k} ExpCTR-Aug")
            for v, t in trained.items():
                save_text_ctr(out / AUG_FILES[v], t.model, params.ctr, {"best_epoch": t.best_epoch,
                                                                         "valid_auc": t.valid_auc})
        with timer.part("judge_s"), _judging(lc, pool, ModelLoader(paths.base_llm, None, llm)):
            evaluation, test_frame = llm_metrics(test, test_expl, lc, params)
        with timer.part("aug_eval_s"):
            test_in = join_explanations(test, test_expl, encoder, blocks, params.seed,
                                        donors, donor_expl, fill_missing=True)
            scored = [v for v in variants if v != "shuffled" or last]
            scores = {v: score_variant(trained[v], test_in, blocks, test.height) for v in scored}
            labels, p_id = test["label"].to_numpy().astype(int), test["p_id"].to_numpy()
            evaluation["expctr_aug"] = aug_metrics(labels, p_id, scores, params)
            if last:
                evaluation["expctr_aug"]["cross_user_donors"] = test_in.cross_user_donors
            test_frame = test_frame.with_columns(*[pl.Series(f"p_aug_{v}", s) for v, s in scores.items()])

    with atomic_path(paths.explanations(k)) as tmp:
        tmp.mkdir()
        aug_expl.select(*EXPLANATION_COLUMNS, "timestamp", *[c for c in aug_expl.columns if c.startswith("fact_")]
                        ).write_parquet(tmp / "valid.parquet")
        test_frame.write_parquet(tmp / "test.parquet")
        if donor_expl is not None:
            donor_expl.select(*EXPLANATION_COLUMNS).write_parquet(tmp / "donors.parquet")
    write_reward_curves(paths, k, runs)
    metrics = {
        "round": k,
        **evaluation,
        "aug_train_explanations": explanation_stats(aug_expl),
        "aug_fit": {v: t.summary() for v, t in trained.items()},
        **stage_summary(runs),
        "artifacts": {"round_dir": _relative(paths, paths.round_dir(k)),
                      "explanations": _relative(paths, paths.explanations(k))},
        "samples": test_frame.head(5).select("user_id", "item_id", "label", "explanation").to_dicts(),
        "timings": _rounded(timer.seconds),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(paths.metric(f"round_{k}.json"), metrics)
    return metrics


__all__ = ["ADAPTER", "ADAPTER_LC", "AUG_FILES", "adapter_of_round", "round_test_pairs", "run_round", "stage_sample"]
