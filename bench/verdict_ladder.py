"""Benchmark: which verdict wordings the frozen judge reads, and how much of a confidence a ladder of them keeps.

Why: ExpCTR-LLM is the frozen judge's P(Yes) after reading an explanation, and an explanation states the
explainer's confidence only through the words of its opening ("The user will surely enjoy "X""). A wording the
judge reads as about the same P(Yes) as its neighbour, or reads in a different order on different pairs, throws
the confidence away. This script reads every candidate wording, as the bare sentence `The user will <words>
"<title>"<hedge>.`, on the same pairs with the frozen judge (one grouped pass per pair: the context is shared),
and reports per wording its mean P(Yes) and how often, pair by pair, it reads above each other wording.

Then it scores ladders: a ladder maps a confidence p to a wording (highest `min_p` first), the judge reads the
wording each pair's p selects, and the AUC of those readings against the clicks is compared with the AUC of p
itself. p here is the ID model's probability (`p_id`, stored by llm_pairs), a stand-in for the explainer's
confidence that needs no trained explainer; the pairs are ExpCTR-Aug's valid-period pairs (never the test
pairs), so a ladder chosen here is not tuned on the figures it is judged by.

Usage:  .venv/bin/python bench/verdict_ladder.py [--pairs 400]
Needs `dvc repro llm_pairs`. Results: bench/results/verdict_ladder.json
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import recorded_command

from expctr.config import load_params
from expctr.evaluation.metrics import auc_with_ci
from expctr.io import write_json
from expctr.llm.base_model import load_model, load_tokenizer, reading_params
from expctr.llm.explanations import stance
from expctr.llm.judge import judge_p_yes_grouped
from expctr.llm.prompts import MAX_TITLE_CHARS, as_item, sanitize_text
from expctr.llm.verdicts import EXPLANATION_PREFIX, VERDICT_GRADES
from expctr.paths import ProjectPaths
from expctr.stages.llm_pairs import judge_groups

ROOT = Path(__file__).resolve().parents[1]
EITHER = ", though it could go either way"
# (words after "The user will", hedge after the quoted title)
CANDIDATES: list[tuple[str, str]] = [
    # plain verdicts: the judge reads every positive one as ~0.9 and every negative one as ~0.1-0.25
    ("definitely enjoy", ""), ("surely enjoy", ""), ("probably enjoy", ""), ("might enjoy", ""),
    ("dislike", ""), ("maybe not enjoy", ""), ("likely not enjoy", ""), ("probably not enjoy", ""),
    ("almost certainly not enjoy", ""),
    # hedged: what the judge reads between the two sides
    ("probably enjoy", EITHER), ("probably not enjoy", EITHER),
    ("probably enjoy", ", though not for sure"), ("probably enjoy", ", though with some doubt"),
    ("probably enjoy", ", but it is a close call"), ("probably enjoy", ", though it is hard to say"),
    ("probably enjoy", ", though only a little"), ("somewhat enjoy", ""), ("mildly enjoy", ""),
    ("find", " just okay"), ("be lukewarm about", ""), ("be unsure about", ""), ("not love", ""),
    ("probably not enjoy", ", though not for sure"), ("probably not enjoy", ", though with some doubt"),
    ("probably not enjoy", ", but it is a close call"), ("probably not enjoy", ", though it is hard to say"),
    ("not particularly enjoy", ""), ("likely not enjoy", ", though it could go either way"),
]


# the ladder before this benchmark chose the present one (min_p, wording), for comparison
PREVIOUS = [(0.8, "surely enjoy"), (0.6, "probably enjoy"), (0.5, f"probably enjoy{EITHER}"),
            (0.4, f"probably not enjoy{EITHER}"), (0.2, "likely not enjoy"), (0.0, "almost certainly not enjoy")]


def sentence(words: str, hedge: str, target) -> str:
    title = sanitize_text(as_item(target).title, MAX_TITLE_CHARS) or "untitled"
    return f'{EXPLANATION_PREFIX} {words} "{title}"{hedge}.'


def calibrated_ladder(names: list[str], means: np.ndarray) -> list[tuple[float, str]]:
    """Highest first: each wording is stated where p is nearer its mean reading than its neighbours', the
    positive wordings only at p >= 0.5 and the negative ones only below (the stated side follows p)."""
    order = list(np.argsort(-means))
    positive = [j for j in order if stance(f"{EXPLANATION_PREFIX} {names[j]}") > 0]
    negative = [j for j in order if j not in positive]
    ladder = []
    for side, low, high in ((positive, 0.5, 1.0), (negative, 0.0, 0.5)):
        cuts = [(means[a] + means[b]) / 2 for a, b in pairwise(side)] + [low]
        ladder += [(float(min(max(c, low), high)), names[j]) for c, j in zip(cuts, side)]
    return ladder


def ladder_readings(ladder: list[tuple[float, str]], p: np.ndarray, readings: dict[str, np.ndarray]):
    chosen = np.empty(len(p), dtype=object)
    grade = np.zeros(len(p))
    for i, pi in enumerate(p):
        for k, (min_p, name) in enumerate(ladder):
            if pi >= min_p or k == len(ladder) - 1:
                chosen[i], grade[i] = name, len(ladder) - k
                break
    return np.array([readings[n][i] for i, n in enumerate(chosen)]), grade


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=400, help="valid-period pairs read (first n)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/verdict_ladder.json")
    ap.add_argument("--project", type=Path, default=ROOT, help="the project whose artifacts are read")
    args = ap.parse_args(argv)
    params = load_params(ROOT / "params.yaml")  # this checkout's settings (the judge it reads with)
    paths = ProjectPaths(args.project)
    llm = reading_params(params.llm)
    torch.set_num_threads(llm.threads)
    model = load_model(paths.base_llm, llm.dtype, llm.device, llm.threads)
    tokenizer = load_tokenizer(paths.base_llm)
    pairs = pl.read_parquet(paths.llm_pairs / "valid.parquet").head(args.pairs)
    names = [f"{w}{h}" for w, h in CANDIDATES]
    texts = [[sentence(w, h, t) for w, h in CANDIDATES] for t in pairs["target"]]
    t0 = time.perf_counter()
    read = np.array(judge_p_yes_grouped(model, tokenizer, judge_groups(pairs, tokenizer, params.llm.max_prompt_tokens,
                                                                        texts, params.llm.judge_reads_history),
                                        batch_size=params.llm.judge_batch_size, progress=True))
    seconds = time.perf_counter() - t0
    readings = {n: read[:, j] for j, n in enumerate(names)}
    means = read.mean(0)
    labels = pairs["label"].to_numpy().astype(int)
    p = pairs["p_id"].to_numpy().astype(float)

    def score(ladder):
        r, grade = ladder_readings(ladder, p, readings)
        order_ok = [float(np.mean(readings[a[1]] > readings[b[1]])) for a, b in pairwise(ladder)]
        return {"ladder": [[round(m, 4), n] for m, n in ladder],
                "judge_reading_auc": auc_with_ci(labels, r, seed=params.seed, n_boot=200)["auc"],
                "grade_auc": auc_with_ci(labels, grade, seed=params.seed, n_boot=200, is_probability=False)["auc"],
                "min_share_ordered_with_next": round(min(order_ok), 4) if order_ok else None}

    ordered = sorted(range(len(names)), key=lambda j: -means[j])
    current = [(g.min_p, f"{g.words}{g.hedge}") for g in VERDICT_GRADES]
    ladders = {"previous": PREVIOUS, "current": current}
    for key, ladder in (("previous", PREVIOUS), ("current", current)):
        names_k = [n for _, n in ladder]
        ladders[f"{key}_calibrated"] = calibrated_ladder(names_k, np.array([readings[n].mean() for n in names_k]))
    result = {
        "command": recorded_command("verdict_ladder.py", sys.argv[1:] if argv is None else argv),
        "pairs": len(labels), "click_rate": float(labels.mean()), "judge_seconds": round(seconds, 1),
        "judge_reads_history": params.llm.judge_reads_history,
        "p_id_auc": auc_with_ci(labels, p, seed=params.seed, n_boot=200)["auc"],
        "wordings": {n: {"mean_p_yes": round(float(means[j]), 4),
                         "auc_alone": auc_with_ci(labels, read[:, j], seed=params.seed, n_boot=50)["auc"]}
                     for j, n in sorted(enumerate(names), key=lambda x: -means[x[0]])},
        "share_above": {names[a]: {names[b]: round(float(np.mean(read[:, a] > read[:, b])), 3) for b in ordered}
                        for a in ordered},
        "ladders": {k: score(v) for k, v in ladders.items()},
    }
    write_json(args.out, result)
    for k, v in result["ladders"].items():
        print(k, v["judge_reading_auc"], v["grade_auc"], v["min_share_ordered_with_next"], len(v["ladder"]))
    for n, w in result["wordings"].items():
        print(f"{w['mean_p_yes']:.3f}  {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
