"""Benchmark: ExpCTR-Aug recipes retrained offline on one round's saved explanations, all three ablation variants.

Why: a round's ExpCTR-Aug is trained inside `expctr explainer-round` after ~15 min of RL and explanation; its
training itself takes seconds. Every explanation it reads is saved (`data/explanations/round_k/`), so a recipe
(protocol, inputs, head, weighting) can be compared in a minute without touching the LLM. This script retrains
the variants (explanation / facts / shuffled) under each recipe on the round's 2,000 explained valid-period pairs
and scores them on the round's test pairs with the ID model as reference, paired bootstrap intervals as in the
report.

Selection is by validation only: each recipe reports its validation gain over the ID model (holdout: best
epoch's holdout AUC minus the ID model's on the same slates; bagged: out-of-fold AUC on every valid pair minus
the ID model's, with its interval). The test figures of every recipe are shown so that nothing is hidden, but a
recipe chosen because its test figure is highest would be tuned on the test pairs.

Recipes:
- `default[+s]`: the pipeline's recipe (`text_ctr` in params.yaml: one 25 % slate holdout for early
  stopping), seed offset s (`default` reproduces the round's committed figures);
- `bag`: K-fold over slates, each fold's model early-stopped on its own held-out fold, test logits averaged
  (every valid pair trains K-1 models and validates one);
- `+known`: every variant also reads whether the ID model knows the user (its user id is in the ID model's
  vocabulary): 76 % of valid-period pairs are from users the ID model never saw, 19 % of test pairs;
- `+reweight`: training pairs resampled so that known users have their test share (covariate shift; uses the
  test pairs' features, never their labels);
- `+linear`: the head without a hidden layer;
- `+text`: the explanation's sentence embedding beside the verdict logit.

Usage:  .venv/bin/python bench/aug_recipes.py [--round 3] [--folds 5] [--seeds 4] [--recipes default bag ...]
                                                [--seed-offset N --out bench/results/aug_recipes_seed_N.json]
Results: bench/results/aug_recipes.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from scipy.special import expit, logit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import recorded_command

from expctr.config import load_params
from expctr.ctr.aug_inputs import VARIANTS, fact_columns
from expctr.ctr.batch import CTRData
from expctr.ctr.checkpoint import load_id_model
from expctr.ctr.text_augmented import aug_probability, train_text_ctr, with_text
from expctr.data.features import OOV, FeatureMap
from expctr.evaluation.metrics import auc_with_ci, paired_auc_difference
from expctr.explainer.aug_stage import AugInputs, join_explanations, score_variant, train_variants
from expctr.io import write_json
from expctr.paths import ProjectPaths

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Recipe:
    name: str
    protocol: str = "holdout"  # holdout | bag
    text: bool = False
    known: bool = False
    reweight: bool = False
    linear: bool = False
    seed_offset: int = 0


def recipes(seeds: int) -> dict[str, Recipe]:
    out = {"default": Recipe("default")}
    out.update({f"default+{s}": Recipe(f"default+{s}", seed_offset=s) for s in range(1, seeds + 1)})
    for name, kw in [("bag", {}), ("bag+known", {"known": True}), ("bag+reweight", {"reweight": True}),
                     ("bag+known+reweight", {"known": True, "reweight": True}), ("bag+linear", {"linear": True}),
                     ("bag+text", {"text": True})]:
        out[name] = Recipe(name, protocol="bag", **kw)
    return out


def slate_keys(frame: pl.DataFrame) -> list[str]:
    return [f"{u}|{t}" for u, t in zip(frame["user_id"].to_list(), frame["timestamp"].to_list())]


def slate_folds(frame: pl.DataFrame, k: int, seed: int) -> np.ndarray:
    """Fold index per row: whole slates (user, timestamp) per fold, seeded."""
    keys = slate_keys(frame)
    slates = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(slates))
    fold_of = {slates[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[s] for s in keys])


def known_users(frame: pl.DataFrame) -> np.ndarray:
    """1.0 where the ID model has the user in its vocabulary (not OOV), else 0.0."""
    return (frame["user_idx"].to_numpy() != OOV).astype(np.float32)


def inputs(aug: AugInputs, variant: str, blocks: list[str], known: bool) -> tuple[CTRData, list[tuple[str, int]]]:
    data, dims = aug.data(variant, blocks)
    if known:
        flag = torch.as_tensor(known_users(aug.frame))[:, None]
        data = with_text(data, torch.cat([data.text, flag], dim=1))
        dims = [*dims, ("known", 1)]
    return data, dims


def rows(data: CTRData, idx: np.ndarray) -> CTRData:
    """The rows `idx` of `data`, in that order (what `AugInputs.data(..., rows)` builds from the frame)."""
    i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return CTRData(data.fields[i], data.genres[i], data.hist_items[i], data.hist_clicks[i], data.labels[i],
                   None if data.text is None else data.text[i])


def resample_to_share(train_idx: np.ndarray, known: np.ndarray, share: float, seed: int) -> np.ndarray:
    """As many rows as train_idx, drawn with replacement so that a share `share` are known users."""
    k = known[train_idx] > 0.5
    w = np.where(k, share / max(k.mean(), 1e-9), (1 - share) / max(1 - k.mean(), 1e-9))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train_idx, size=len(train_idx), replace=True, p=w / w.sum()))


def holdout_recipe(r: Recipe, id_model, valid: AugInputs, test: AugInputs, n_test: int, params, tp, seed: int
                   ) -> tuple[dict, dict]:
    """The pipeline's own CTR stage (`train_variants`, one slate holdout), scored as the round scores it."""
    if r.known or r.reweight:
        raise ValueError(f"recipe {r.name}: known-user inputs and resampling are only wired into the bagged protocol")
    trained = train_variants(id_model, valid, params.model_copy(update={"text_ctr": tp}), seed, desc=r.name)
    scores = {v: score_variant(t, test, tp.explanation_blocks, n_test) for v, t in trained.items()}
    info = {v: {"best_epoch": t.fit.best_epoch, "valid_gain": t.fit.best_valid_auc - t.fit.curve[0]["valid_auc"]}
            for v, t in trained.items()}
    return scores, info


def bagged_recipe(r: Recipe, id_model, valid: AugInputs, test: AugInputs, n_test: int, params, tp, seed: int,
                  folds: int, test_known_share: float) -> tuple[dict, dict]:
    """K slate folds, each fold's model early-stopped on its own fold; test logits averaged over the K models,
    validation judged on the out-of-fold predictions against the ID model's on the same pairs."""
    usable = np.flatnonzero(valid.donors >= 0)
    fold = slate_folds(valid.frame[usable.tolist()], folds, seed)
    known_valid = known_users(valid.frame)
    y_valid = valid.frame["label"].to_numpy()[usable].astype(int)
    p_id_valid = valid.frame["p_id"].to_numpy()[usable]
    scores, info = {}, {}
    for v in VARIANTS:
        vdata, dims = inputs(valid, v, tp.explanation_blocks, r.known)
        tdata = rows(inputs(test, v, tp.explanation_blocks, r.known)[0], np.arange(n_test))
        oof, test_logits, epochs = np.zeros(len(usable)), [], []
        for f in range(folds):
            tr, va = usable[fold != f], usable[fold == f]
            if r.reweight:
                tr = resample_to_share(tr, known_valid, test_known_share, seed + f)
            model, fit = train_text_ctr(copy.deepcopy(id_model), dims, rows(vdata, tr), rows(vdata, va), tp,
                                        seed + f, desc=f"{r.name} ({v}, fold {f})")
            oof[fold == f] = aug_probability(model, rows(vdata, va))
            test_logits.append(logit(np.clip(aug_probability(model, tdata), 1e-7, 1 - 1e-7)))
            epochs.append(fit.best_epoch)
        scores[v] = expit(np.mean(test_logits, axis=0))
        gain = paired_auc_difference(y_valid, oof, p_id_valid, seed=params.seed, n_boot=params.evaluation.bootstrap)
        info[v] = {"best_epochs": epochs, "valid_gain": gain["diff"], "valid_gain_ci": [gain["ci_low"], gain["ci_high"]]}
    return scores, info


def run_recipe(r: Recipe, id_model, valid: AugInputs, test: AugInputs, n_test: int, params, seed: int, folds: int,
               test_known_share: float) -> dict:
    tp = params.text_ctr.model_copy(update={
        "hidden": [] if r.linear else params.text_ctr.hidden,
        "explanation_blocks": ["verdict", "text"] if r.text else list(params.text_ctr.explanation_blocks)})
    seed = seed + r.seed_offset
    if r.protocol == "holdout":
        scores, info = holdout_recipe(r, id_model, valid, test, n_test, params, tp, seed)
    else:
        scores, info = bagged_recipe(r, id_model, valid, test, n_test, params, tp, seed, folds, test_known_share)
    labels_test = test.frame["label"].to_numpy()[:n_test].astype(int)
    p_id_test = test.frame["p_id"].to_numpy()[:n_test]
    out: dict = {"recipe": r.__dict__, "variants": info}
    for v, p in scores.items():
        auc = auc_with_ci(labels_test, p, seed=params.seed, n_boot=params.evaluation.bootstrap)
        d = paired_auc_difference(labels_test, p, p_id_test, seed=params.seed, n_boot=params.evaluation.bootstrap)
        info[v].update({"test_auc": auc["auc"], "test_minus_id": d["diff"], "test_minus_id_ci": [d["ci_low"], d["ci_high"]]})
    for other in ("facts", "shuffled"):
        d = paired_auc_difference(labels_test, scores["explanation"], scores[other], seed=params.seed,
                                  n_boot=params.evaluation.bootstrap)
        out[f"explanation_minus_{other}"] = {"diff": d["diff"], "ci": [d["ci_low"], d["ci_high"]]}
    return out


def load_round(paths: ProjectPaths, params, k: int, text: bool) -> tuple[AugInputs, AugInputs, int]:
    """(valid-period Aug inputs, test Aug inputs with donors, number of test pairs) as round k built them."""
    expl = paths.explanations(k)
    valid_pairs = pl.read_parquet(paths.llm_pairs / "valid.parquet")
    valid_expl = pl.read_parquet(expl / "valid.parquet")
    test_expl = pl.read_parquet(expl / "test.parquet")
    test_pairs = pl.read_parquet(paths.llm_pairs / "test.parquet").head(test_expl.height)
    donors, donor_expl = None, None
    if (expl / "donors.parquet").exists():
        donors = pl.read_parquet(paths.llm_pairs / "donors.parquet")
        donor_expl = pl.read_parquet(expl / "donors.parquet").with_columns(
            *[pl.lit(0.0).alias(c) for c in fact_columns()])  # donors lend their explanation only, never facts
    encoder = None
    blocks = ["verdict", "text"] if text else ["verdict"]
    if text:
        from expctr.llm.encoder import load_encoder

        encoder = load_encoder(paths.resolve(params.data.cache_dir))
    valid = join_explanations(valid_pairs, valid_expl, encoder, blocks, params.seed)
    test = join_explanations(test_pairs, test_expl, encoder, blocks, params.seed, donors, donor_expl,
                             fill_missing=True)
    return valid, test, test_pairs.height


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--round", type=int, default=3, help="the round whose saved explanations are read")
    ap.add_argument("--folds", type=int, default=5, help="folds of the bagged protocol")
    ap.add_argument("--seeds", type=int, default=4, help="extra seeds of the default recipe (its seed noise)")
    ap.add_argument("--recipes", nargs="*", help="recipe names (default: all)")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="added to every recipe's seed (folds, holdout, head init): how much a figure is the seed's")
    ap.add_argument("--project", type=Path, default=ROOT)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "aug_recipes.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    paths = ProjectPaths(args.project.resolve())
    params = load_params(paths.root / "params.yaml")
    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    chosen = recipes(args.seeds)
    if args.recipes:
        unknown = sorted(set(args.recipes) - set(chosen))
        if unknown:
            ap.error(f"unknown recipes {unknown}; choose from {sorted(chosen)}")
        chosen = {n: chosen[n] for n in args.recipes}
    loaded = {}
    results = {}
    for name, r in chosen.items():
        if r.text not in loaded:
            loaded[r.text] = load_round(paths, params, args.round, r.text)
        valid, test, n_test = loaded[r.text]
        started = time.perf_counter()
        results[name] = run_recipe(r, id_model, valid, test, n_test, params, params.seed + args.round + args.seed_offset, args.folds,
                                   float(known_users(test.frame[:n_test]).mean()))
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        v = results[name]["variants"]
        print(f"{name:22s} valid gain (a) {v['explanation']['valid_gain']:+.4f}  test (a)-ID "
              f"{v['explanation']['test_minus_id']:+.4f} (b)-ID {v['facts']['test_minus_id']:+.4f} "
              f"(c)-ID {v['shuffled']['test_minus_id']:+.4f}  (a)-(b) "
              f"{results[name]['explanation_minus_facts']['diff']:+.4f}", flush=True)
    valid, test, n_test = loaded[next(iter(loaded))]
    write_json(args.out, {
        "command": recorded_command("aug_recipes.py", sys.argv[1:] if argv is None else argv),
        "round": args.round,
        "seed_offset": args.seed_offset,
        "valid_pairs": int((valid.donors >= 0).sum()),
        "test_pairs": n_test,
        "known_user_share": {"valid": float(known_users(valid.frame).mean()),
                             "test": float(known_users(test.frame[:n_test]).mean())},
        "id_test_auc": auc_with_ci(test.frame["label"].to_numpy()[:n_test].astype(int),
                                   test.frame["p_id"].to_numpy()[:n_test], seed=params.seed,
                                   n_boot=params.evaluation.bootstrap)["auc"],
        "recipes": results,
    })
    print(json.dumps({"wrote": str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
