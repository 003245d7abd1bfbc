"""Benchmark: does ExpCTR-Aug gain from the explainer's state at its verdict, beyond the prompt's facts?

The ablation (README, "ExpCTR-Aug") finds (a) explanation - (b) facts ~ 0 when Aug reads the explanation's
verdict logit z: z is one number, and it mostly restates what the prompt's facts (reception, genre evidence)
already say. What the explainer made of the titles themselves - the LLM's knowledge of the movies, KAR's
premise - would sit in its last-layer state where z is read (`state`, 576 numbers for SmolLM2-135M, projected
to `text_ctr.proj_dim` by Aug). This script reads that state for round k's valid-period and test pairs (one
prefill each, no decoding: `explain_pairs(write=False, read_states=True)`) and trains every ablation variant
with the pipeline's recipe (`train_variants`, 5 bagged slate folds) twice: reading [verdict] (the pipeline's
default) and [verdict, state]. Selection is by the valid pairs' out-of-fold gain over the ID model; the test
figures are shown beside it.

Usage:  .venv/bin/python bench/aug_state.py [--round 3]
Needs the round's adapter and llm_pairs. Results: bench/results/aug_state.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import recorded_command, round_explainer

from expctr.ctr.checkpoint import load_id_model
from expctr.data.features import FeatureMap
from expctr.evaluation.metrics import auc_with_ci, paired_auc_difference
from expctr.explainer.aug_stage import join_explanations, score_variant, train_variants
from expctr.explainer.explain import explain_pairs
from expctr.io import write_json

ROOT = Path(__file__).resolve().parents[1]
BLOCK_SETS = {"verdict": ["verdict"], "verdict+state": ["verdict", "state"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round", type=int, default=3)
    ap.add_argument("--project", type=Path, default=ROOT, help="the project whose artifacts are read")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/aug_state.json")
    args = ap.parse_args(argv)
    params, paths, _, explainer, tok = round_explainer(args.project, args.round)
    sets = {s: pl.read_parquet(paths.llm_pairs / f"{s}.parquet") for s in ("valid", "test", "donors")}
    t0 = time.perf_counter()
    read = {s: explain_pairs(explainer, tok, df, params, f"state {s}", write=False, read_states=True)
            for s, df in sets.items()}
    read_s = time.perf_counter() - t0
    del explainer
    fmap = FeatureMap.load(paths.ctr_models / "feature_map.json")
    id_model = load_id_model(paths.ctr_models / f"{params.ctr.model}.pt", fmap)
    test, labels = sets["test"], sets["test"]["label"].to_numpy().astype(int)
    p_id = test["p_id"].to_numpy()
    result = {"command": recorded_command("aug_state.py", sys.argv[1:] if argv is None else argv),
              "round": args.round, "read_seconds": round(read_s, 1), "valid_pairs": sets["valid"].height,
              "test_pairs": test.height, "id_model_test_auc": auc_with_ci(labels, p_id, seed=params.seed)["auc"],
              "block_sets": {}}
    for name, blocks in BLOCK_SETS.items():
        tp = params.text_ctr.model_copy(update={"explanation_blocks": blocks})
        run = params.model_copy(update={"text_ctr": tp})
        aug_in = join_explanations(sets["valid"], read["valid"], None, blocks, params.seed)
        trained = train_variants(id_model, aug_in, run, params.seed + args.round, desc=f"Aug {name}")
        test_in = join_explanations(test, read["test"], None, blocks, params.seed, sets["donors"], read["donors"],
                                    fill_missing=True)
        scores = {v: score_variant(t, test_in, blocks, test.height) for v, t in trained.items()}
        row = {"valid_out_of_fold": {v: t.oof for v, t in trained.items()}}
        for v, s in scores.items():
            row[v] = {"test_auc": auc_with_ci(labels, s, seed=params.seed)["auc"],
                      "test_minus_id": paired_auc_difference(labels, s, p_id, seed=params.seed, n_boot=1000)}
        row["test_explanation_minus_facts"] = paired_auc_difference(labels, scores["explanation"], scores["facts"],
                                                                    seed=params.seed, n_boot=1000)
        result["block_sets"][name] = row
        oof = row["valid_out_of_fold"]
        print(name, {v: round(o["auc"] - o["id_auc"], 4) for v, o in oof.items()},
              {v: round(row[v]["test_minus_id"]["diff"], 4) for v in scores},
              round(row["test_explanation_minus_facts"]["diff"], 4))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
