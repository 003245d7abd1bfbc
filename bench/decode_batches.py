"""How many rows to decode together: prefill in batches of `llm.gen_batch_size`, decode consecutive prefilled
batches together up to `llm.decode_batch_size` rows (`expctr.llm.prefix_generation.generate_opened`).

A decoding step on this CPU costs a fixed part (the weights read once, ~30 layers of small ops) plus a part per
row, so more rows a step spread the fixed part; prefill is best at ~32 rows. This bench explains the same test
pairs with a round's explainer (`explain_pairs`, the pipeline's settings) at each decode batch size, alternated
(the sizes in order, then reversed, after a warm-up), and records the prefill and decoding seconds of each run
(`forward_seconds`) and how many explanations differ from the first size's (bfloat16 rounding depends on the
batch's shape: greedy decoding can take another token where two are nearly tied).

    .venv/bin/python bench/decode_batches.py --project <run> --pairs 256 --sizes 32 64 128 \
        --out bench/results/decode_batches.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_common import recorded_command, round_explainer


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."), help="a project with a finished pipeline run")
    ap.add_argument("--round", type=int, default=3, help="whose adapter explains (default: 3)")
    ap.add_argument("--pairs", type=int, default=256, help="test pairs explained per run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="decode batch sizes (rows)")
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = ap.parse_args(argv)

    import polars as pl

    from expctr.explainer.explain import explain_pairs
    from expctr.io import write_json
    from expctr.llm.prefix_generation import forward_seconds

    params, paths, _, explainer, tokenizer = round_explainer(args.project, args.round)
    test = pl.read_parquet(paths.llm_pairs / "test.parquet").head(args.pairs)
    explain_pairs(explainer, tokenizer, test.head(32), params, "warm-up")
    runs: dict[int, list[dict]] = {}
    texts: dict[int, list[str]] = {}
    for size in args.sizes + args.sizes[::-1]:
        run_params = params.model_copy(update={"llm": params.llm.model_copy(update={"decode_batch_size": size})})
        with forward_seconds() as secs:
            t0 = time.perf_counter()
            frame = explain_pairs(explainer, tokenizer, test, run_params, f"decode {size}")
            total = time.perf_counter() - t0
        runs.setdefault(size, []).append({"seconds": round(total, 2), "prefill_s": round(secs["prefill"], 2),
                                          "decode_s": round(secs["decode"], 2)})
        texts.setdefault(size, frame["explanation"].to_list())
        print(size, runs[size][-1], flush=True)
    first = texts[args.sizes[0]]
    mean = {s: {k: round(sum(r[k] for r in rs) / len(rs), 2) for k in rs[0]} for s, rs in runs.items()}
    result = {
        "command": recorded_command("decode_batches.py", list(argv if argv is not None else sys.argv[1:])),
        "round": args.round, "pairs": test.height, "gen_batch_size": params.llm.gen_batch_size,
        "order": "sizes in order, then reversed, after a warm-up",
        "runs": {str(s): rs for s, rs in runs.items()},
        "mean": {str(s): m for s, m in mean.items()},
        "texts_differing_from_first_size": {str(s): sum(a != b for a, b in zip(t, first)) for s, t in texts.items()},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    print(json.dumps(result["mean"], indent=2))
    return result


if __name__ == "__main__":
    main()
