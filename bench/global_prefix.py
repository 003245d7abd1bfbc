"""What running the batch-wide prompt beginning once saves, on a pipeline run's round explainer and judge.

Every explainer prompt starts with the same ~54 tokens (system text, task) and every judge prompt with the
same system text and question; the readers prefill them once per batch, as one row, before each group's own
prefix (`expctr.llm.judge.MIN_GLOBAL_PREFIX`). This bench times the three pipeline readers with that level on
and off, on the same pairs (after a warm-up, alternated off/on/on/off), and compares what they read: the
ExpCTR-Aug verdict reading of valid pairs (no decoding), the test explanations (prefill, opening, greedy
reason) and the judge's reading of the same texts.

    .venv/bin/python bench/global_prefix.py --pairs 96 --out bench/results/global_prefix.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from bench_common import recorded_command, round_explainer


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."), help="a project with a finished pipeline run")
    ap.add_argument("--round", type=int, default=3, help="whose adapter explains (default: 3)")
    ap.add_argument("--pairs", type=int, default=256, help="valid pairs read and test pairs explained, each")
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = ap.parse_args(argv)

    from expctr.explainer.explain import explain_pairs
    from expctr.explainer.stage_rewards import make_lc
    from expctr.llm import judge as judge_module
    from expctr.llm.base_model import load_model

    params, paths, llm, explainer, tokenizer = round_explainer(args.project, args.round)
    judge_model = load_model(paths.base_llm, dtype=llm.dtype, device=llm.device)
    valid = pl.read_parquet(paths.llm_pairs / "valid.parquet").head(args.pairs)
    test = pl.read_parquet(paths.llm_pairs / "test.parquet").head(args.pairs)
    on_value = judge_module.MIN_GLOBAL_PREFIX
    import expctr.llm.prefix_generation as generation_module

    def setting(minimum: int) -> None:
        judge_module.MIN_GLOBAL_PREFIX = generation_module.MIN_GLOBAL_PREFIX = minimum

    explain_pairs(explainer, tokenizer, test.head(32), params, "warm-up")  # first-call costs count for neither
    reference = explain_pairs(explainer, tokenizer, test, params, "reference texts")
    texts, clauses = reference["explanation"].to_list(), reference["clause"].to_list()
    judged = ([t for pair in zip(texts, clauses) for t in pair],
              [h for h in reference["history"].to_list() for _ in (0, 1)],
              [t for t in reference["target"].to_list() for _ in (0, 1)])
    seconds: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    readings: dict[str, dict[str, np.ndarray]] = {}
    for label in ("off", "on", "on", "off"):  # alternated: a drift in the machine's speed hits both alike
        setting(10**9 if label == "off" else on_value)
        _, lc = make_lc(params, tokenizer, judge_model)  # a fresh memo: the judge really reads
        aug, t_aug = _timed(explain_pairs, explainer, tokenizer, valid, params, "aug", write=False)
        expl, t_test = _timed(explain_pairs, explainer, tokenizer, test, params, "test")
        judge, t_judge = _timed(lc.p_yes, *judged)  # the same texts in both settings
        for part, t in (("aug_verdict_reading", t_aug), ("test_explanations", t_test), ("judge", t_judge)):
            seconds[label].setdefault(part, []).append(round(t, 2))
        readings.setdefault(label, {"aug_z": aug["verdict_logit"].to_numpy(), "judge": np.asarray(judge),
                                    "texts": expl["explanation"].to_list()})
    setting(on_value)
    off, on = readings["off"], readings["on"]
    total = {label: {part: sum(v) for part, v in parts.items()} for label, parts in seconds.items()}
    result = {
        "command": recorded_command("global_prefix.py", argv if argv is not None else sys.argv[1:]),
        "round": args.round, "pairs": args.pairs, "threads": llm.threads, "dtype": llm.dtype,
        "order": "off, on, on, off after a warm-up", "seconds_off": seconds["off"], "seconds_on": seconds["on"],
        "speedup": {k: round(total["off"][k] / total["on"][k], 2) for k in total["off"]},
        # bfloat16: the same prompts in other batch shapes round differently; the texts are greedy on those logits
        "max_abs_diff": {"aug_verdict_logit": float(np.abs(off["aug_z"] - on["aug_z"]).max()),
                         "judge_p_yes_same_texts": float(np.abs(off["judge"] - on["judge"]).max())},
        "mean_abs_diff": {"aug_verdict_logit": float(np.abs(off["aug_z"] - on["aug_z"]).mean()),
                          "judge_p_yes_same_texts": float(np.abs(off["judge"] - on["judge"]).mean())},
        "same_text_share": float(np.mean([a == b for a, b in zip(off["texts"], on["texts"])])),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        from expctr.io import write_json

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
