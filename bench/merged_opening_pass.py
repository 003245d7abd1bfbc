"""A served slate's suffix and opening in two prefill passes or in one (`generate_opened(opening_known=True)`).

Usage:  .venv/bin/python bench/merged_opening_pass.py [--model expctr_pair:latest] [--repeats 6]
Needs a packaged pair (`dvc repro bento`). After one user's shared prefix (1 row x 115 tokens, repeated for 10
rows), it times the rest of a served slate's prefill as the service ran it before (every row's suffix, 67 tokens
wide, then its opening, 27 wide: two passes) and as it runs it now (suffix and opening in one pass, 86 wide:
the spread of their sums is narrower than the sum of their spreads). The widths are a served slate's (the
trust bench's padded widths: suffixes 64-77, openings 25-39 tokens); the tokens are random, so only the time
means anything. The two ways alternate, after a warm-up. Run it alone (one heavy process at a time).
Results: bench/results/merged_opening_pass.json (written atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_common import recorded_command

ROOT = Path(__file__).resolve().parents[1]
ROWS, PREFIX, SUFFIX, OPENING, MERGED = 10, 115, 67, 27, 86


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="expctr_pair:latest", help="BentoML model tag of the packaged pair")
    ap.add_argument("--repeats", type=int, default=6, help="timed runs of each way")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "merged_opening_pass.json")
    args = ap.parse_args(argv)

    import bentoml
    import torch
    from transformers import DynamicCache

    from expctr.config import LLMParams
    from expctr.io import write_json
    from expctr.llm.adapters import load_explainer
    from expctr.serving.bundle import read_manifest

    bundle = Path(bentoml.models.get(args.model).path)
    threads = int(read_manifest(bundle).get("serving", {}).get("threads", 2))
    model, _ = load_explainer(bundle / "llm" / "base", bundle / "llm" / "adapter",
                              LLMParams(dtype="bfloat16", threads=threads))
    gen = torch.Generator().manual_seed(0)

    def prefilled() -> DynamicCache:
        cache = DynamicCache()
        model(input_ids=torch.randint(100, 20000, (1, PREFIX), generator=gen), past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        cache.reorder_cache(torch.zeros(ROWS, dtype=torch.long))
        return cache

    def passes(widths: tuple[int, ...]) -> float:
        cache, filled = prefilled(), PREFIX
        t = time.perf_counter()
        for w in widths:
            model(input_ids=torch.randint(100, 20000, (ROWS, w), generator=gen),
                  attention_mask=torch.ones(ROWS, filled + w, dtype=torch.long),
                  position_ids=torch.arange(filled, filled + w)[None].expand(ROWS, -1), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
            filled += w
        return time.perf_counter() - t

    ways = {"two_passes": (SUFFIX, OPENING), "one_pass": (MERGED,)}
    seconds: dict[str, list[float]] = {k: [] for k in ways}
    with torch.inference_mode():
        for widths in ways.values():  # warm-up
            passes(widths)
        for k in range(args.repeats):
            for name in (list(ways) if k % 2 == 0 else list(ways)[::-1]):
                seconds[name].append(passes(ways[name]))
    res = {"command": recorded_command("merged_opening_pass.py", argv if argv is not None else sys.argv[1:]),
           "model": args.model, "threads": threads, "rows": ROWS, "prefix_tokens": PREFIX,
           "widths": {name: list(w) for name, w in ways.items()}, "order": "alternated after a warm-up",
           "median_s": {name: round(statistics.median(v), 3) for name, v in seconds.items()},
           "seconds": {name: [round(x, 3) for x in v] for name, v in seconds.items()}}
    write_json(args.out, res)
    print(json.dumps({k: v for k, v in res.items() if k != "seconds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
