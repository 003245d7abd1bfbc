"""Benchmark: what the judge should read beside an explanation - the user's whole context, or the target alone.

The judge that scores an explanation (ExpCTR-LLM, and the LC/IC rewards) reads the system text, its question,
the user's liked and disliked titles, the target line and then the explanation (`judge_messages`). The
explanation now states the verdict in graded words and names a history item on its side, so the history may
add little but tokens - and the way the judge's reading of the same words moves with the context does not
follow clicks (bench/verdict_ladder.py: each wording alone ranks pairs at AUC 0.44-0.53). This script reads
the same explanations both ways and reports AUC and judge seconds:

- `history`: the judge prompt of the pipeline (question, history, target line, explanation);
- `target`:  the same without the history lines (question, target line with its reception and evidence,
  explanation).

The pairs are ExpCTR-Aug's valid-period pairs (first n; never the test pairs, and never an RL prompt), explained
by round k's explainer exactly as the rounds explain the test pairs (`explain_pairs`).

Usage:  .venv/bin/python bench/judge_context.py [--round 3] [--pairs 300]
Needs the round's adapter (`dvc repro explainer_round_3`). Results: bench/results/judge_context.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import recorded_command, round_explainer

from expctr.evaluation.metrics import auc_with_ci, paired_auc_difference
from expctr.explainer.explain import explain_pairs
from expctr.io import write_json
from expctr.llm.base_model import load_model
from expctr.llm.judge import judge_p_yes_grouped
from expctr.llm.prompts import encode_messages, judge_messages

ROOT = Path(__file__).resolve().parents[1]
CONTEXTS = ("history", "target")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=300, help="valid-period pairs (first n)")
    ap.add_argument("--project", type=Path, default=ROOT, help="the project whose artifacts are read")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/judge_context.json")
    args = ap.parse_args(argv)
    params, paths, llm, explainer, tok = round_explainer(args.project, args.round)
    pairs = pl.read_parquet(paths.llm_pairs / "valid.parquet").head(args.pairs)
    t0 = time.perf_counter()
    explained = explain_pairs(explainer, tok, pairs, params, f"round {args.round} explain valid")
    explain_s = time.perf_counter() - t0
    del explainer
    judge = load_model(paths.base_llm, llm.dtype, llm.device, llm.threads)
    labels = pairs["label"].to_numpy().astype(int)
    texts, clauses = explained["explanation"].to_list(), explained["clause"].to_list()
    rows = list(zip(explained["history"].to_list(), explained["target"].to_list()))
    result = {"command": recorded_command("judge_context.py", sys.argv[1:] if argv is None else argv),
              "round": args.round, "pairs": len(labels), "click_rate": float(labels.mean()),
              "explain_seconds": round(explain_s, 1),
              "id_model_auc": auc_with_ci(labels, pairs["p_id"].to_numpy(), seed=params.seed)["auc"],
              "verdict_logit_auc": auc_with_ci(labels, explained["verdict_logit"].to_numpy(), seed=params.seed,
                                               is_probability=False)["auc"],
              "contexts": {}}
    scores = {}
    for context in CONTEXTS:
        groups = [[judge_messages(h, t, x, show_history=context == "history")
                   for x in (text, clause)] for (h, t), text, clause in zip(rows, texts, clauses)]
        t0 = time.perf_counter()
        read = np.array(judge_p_yes_grouped(judge, tok, groups, batch_size=params.llm.judge_batch_size,
                                            progress=True))
        seconds = time.perf_counter() - t0
        scores[context] = read[:, 0]
        result["contexts"][context] = {
            "judge_seconds": round(seconds, 1),
            "mean_prompt_tokens": float(np.mean([len(encode_messages(tok, g[0])) for g in groups])),
            "expctr_llm": auc_with_ci(labels, read[:, 0], seed=params.seed),
            "verdict_clause": auc_with_ci(labels, read[:, 1], seed=params.seed),
        }
    result["target_minus_history"] = paired_auc_difference(labels, scores["target"], scores["history"],
                                                           seed=params.seed, n_boot=1000)
    write_json(args.out, result)
    for c, r in result["contexts"].items():
        print(c, round(r["expctr_llm"]["auc"], 4), round(r["verdict_clause"]["auc"], 4), r["judge_seconds"],
              round(r["mean_prompt_tokens"], 1))
    print("verdict logit", round(result["verdict_logit_auc"], 4), "ID", round(result["id_model_auc"], 4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
