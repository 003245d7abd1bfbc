"""Where one uncached explained slate's seconds go, forward pass by forward pass (in process, no server).

Usage:  .venv/bin/python bench/slate_passes.py [--users 8] [--model expctr_pair:latest] [--compare-levers]
Needs a packaged pair (`dvc repro bento`). Sends the opening benchmark's seeded requests (--users known users
x 10 catalogue items outside their history, `explain: true`, the served settings, the explanation cache
emptied before each) through `ModelPair.predict`, and records every forward pass of the explainer by its
role in `expctr.llm.prefix_generation`: the user's shared prefix (1 row), every row's own suffix (the target
line, with the verdict read at its end), the forced opening, decoding steps, and the retries of explanations
that failed a check (a second prefill of their prompt and opening, then their own decoding). What is not a
forward pass of the explainer (ID and ExpCTR-Aug scoring, the sentence encoder, tokenising, the checks) is the
request's remainder.

`--contiguous-head` measures a lever without changing the library: a forward pre-hook on the explainer's
output projection makes its input contiguous. Why: transformers applies the head to `hidden[:, -1:, :]`
(`logits_to_keep=1`), a strided view when a pass has several positions, and torch 2.13 on this CPU runs a
bfloat16 linear on that view ~90x slower than on a contiguous copy (the same values: the logits are
bit-identical). A micro-benchmark of that projection (49,152 x 576, as SmolLM2's) on a strided and a
contiguous input, per dtype and batch, comes first.

`--compare-levers` measures the served path's generation lever against the path before it: each slate is sent
as served (the known opening fed in its suffix's pass, `opening_known`) and with it off (the opening in a pass of
its own), the order alternating from slate to slate, the cache emptied before each; it reports both p50s and
means, the paired difference and the regenerated rows (bench/results/served_levers.json).

It wraps the generator's private `_forward` to see each pass; run it alone (one heavy process at a time).
Results: bench/results/slate_passes.json, or slate_passes_contiguous_head.json (written atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import opening_bench  # bench/, on the path when run as a file

from expctr.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def classify(passes: list[tuple[int, int, float]]) -> list[tuple[str, int, int, float]]:
    """(role, rows, positions, seconds) for one request's passes, in order: a first try is prefix (1 row),
    suffix (with the opening in it, as served since the opening is known before the prefill; before that, the
    opening in a pass of its own), then its decoding steps; a multi-position pass after decoding starts a retry."""
    out, seen_first_try = [], 0
    for rows, positions, seconds in passes:
        if positions > 1 and not any(r == "decode" for r, *_ in out):
            role = ("prefix", "suffix", "opening")[seen_first_try]
            seen_first_try += 1
        elif positions > 1:
            role = "retry_prefill"
        else:
            role = "retry_decode" if any(r == "retry_prefill" for r, *_ in out) else "decode"
        out.append((role, rows, positions, seconds))
    return out


def head_micro(threads: int = 2) -> dict:
    """ms of the vocabulary projection of one position per row, input strided (a slice of a 27-position pass,
    as transformers passes it), made `.contiguous()`, or copied in the contiguous format, per dtype and rows
    (best of 3)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        weight = torch.randn(49152, 576, dtype=dtype)
        for rows in (1, 10, 32):
            strided = torch.randn(rows, 27, 576, dtype=dtype)[:, -1:, :]
            # one row: the view counts as contiguous (size-1 dims' strides are ignored), so .contiguous() keeps
            # its strides; only a copy in the contiguous format gives the kernel canonical ones
            copied = strided.clone(memory_format=torch.contiguous_format)
            for layout, x in (("strided", strided), ("contiguous", strided.contiguous()), ("copied", copied)):
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    torch.nn.functional.linear(x, weight)
                    best = min(best, time.perf_counter() - t)
                out[f"{name}_rows{rows}_{layout}_ms"] = round(1000 * best, 2)
    return out


def contiguous_head(model) -> None:
    """The lever measured: the output projection always reads a contiguous input."""
    model.get_output_embeddings().register_forward_pre_hook(lambda _module, args: (args[0].contiguous(),))


def compare_levers(args) -> int:
    """Each slate as served and without the two levers, alternated; paired seconds."""
    import bentoml

    from expctr.config import ServingParams
    from expctr.serving import explaining
    from expctr.serving.bundle import read_manifest
    from expctr.serving.predictor import ModelPair
    from expctr.serving.schemas import PredictRequest

    bundle = Path(bentoml.models.get(args.model).path)
    pair = ModelPair(bundle, limits=ServingParams.model_validate(read_manifest(bundle).get("serving", {})))
    pair.load_explainer()
    served = explaining.generate_opened

    def before(*a, **kw):
        return served(*a, **{**kw, "opening_known": False})

    seconds: dict[str, list[float]] = {"served": [], "before": []}
    regenerated = {"served": 0, "before": 0}
    for k, (user_id, candidates) in enumerate(opening_bench.requests(bundle, args.users, args.seed)):
        for how in (("served", "before") if k % 2 == 0 else ("before", "served")):
            explaining.generate_opened = served if how == "served" else before
            pair.cache._data.clear()
            t = time.perf_counter()
            resp = pair.predict(PredictRequest(user_id=user_id, candidates=candidates, explain=True))
            seconds[how].append(time.perf_counter() - t)
            regenerated[how] += sum(it.regenerated for it in resp.items)
        print(k, {h: round(v[-1], 3) for h, v in seconds.items()}, flush=True)
    explaining.generate_opened = served
    diff = [a - b for a, b in zip(seconds["served"], seconds["before"])]
    res = {"command": f"bench/slate_passes.py --compare-levers --users {args.users}", "model": args.model,
           "requests": len(diff), "candidates": 10, "order": "alternated slate by slate",
           "p50_s": {h: round(statistics.median(v), 3) for h, v in seconds.items()},
           "mean_s": {h: round(statistics.mean(v), 3) for h, v in seconds.items()},
           "mean_paired_difference_s": round(statistics.mean(diff), 3),
           "slates_faster_as_served": sum(d < 0 for d in diff), "regenerated_rows": regenerated,
           "seconds": {h: [round(x, 3) for x in v] for h, v in seconds.items()}}
    write_json(args.out or ROOT / "bench" / "results" / "served_levers.json", res)
    print(json.dumps({k: v for k, v in res.items() if k != "seconds"}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="expctr_pair:latest", help="BentoML model tag of the packaged pair")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contiguous-head", action="store_true",
                    help="measure with the explainer's output projection reading a contiguous input")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: bench/results/slate_passes.json (slate_passes_contiguous_head.json with the lever)")
    ap.add_argument("--compare-levers", action="store_true",
                    help="alternate each slate as served and without opening_known")
    ap.add_argument("--micro-only", action="store_true",
                    help="only the output-projection micro-benchmark (bench/results/output_projection.json)")
    args = ap.parse_args(argv)
    if args.micro_only:
        res = {"command": "bench/slate_passes.py --micro-only", "output_projection_ms": head_micro()}
        write_json(args.out or ROOT / "bench" / "results" / "output_projection.json", res)
        print(json.dumps(res, indent=2))
        return 0
    if args.compare_levers:
        return compare_levers(args)
    if args.out is None:
        name = "slate_passes_contiguous_head.json" if args.contiguous_head else "slate_passes.json"
        args.out = ROOT / "bench" / "results" / name
    micro = head_micro()
    print("output projection, ms:", micro)

    import bentoml

    import expctr.llm.prefix_generation as generation
    from expctr.config import ServingParams
    from expctr.serving.bundle import read_manifest
    from expctr.serving.predictor import ModelPair
    from expctr.serving.schemas import PredictRequest

    bundle = Path(bentoml.models.get(args.model).path)
    pair = ModelPair(bundle, limits=ServingParams.model_validate(read_manifest(bundle).get("serving", {})))
    pair.load_explainer()
    if args.contiguous_head:
        contiguous_head(pair.explainer.model[0])
    passes: list[tuple[int, int, float]] = []
    forward = generation._forward

    def timed_forward(model, cache_kw, cache, want_hidden, **inputs):
        t = time.perf_counter()
        out = forward(model, cache_kw, cache, want_hidden, **inputs)
        passes.append((*inputs["input_ids"].shape, time.perf_counter() - t))
        return out

    generation._forward = timed_forward
    per_request = []
    for user_id, candidates in opening_bench.requests(bundle, args.users, args.seed):
        pair.cache._data.clear()  # every slate uncached
        passes.clear()
        t = time.perf_counter()
        resp = pair.predict(PredictRequest(user_id=user_id, candidates=candidates, explain=True))
        total = time.perf_counter() - t
        roles = defaultdict(lambda: {"passes": 0, "tokens": 0, "seconds": 0.0})
        for role, rows, positions, seconds in classify(passes):
            roles[role]["passes"] += 1
            roles[role]["tokens"] += rows * positions
            roles[role]["seconds"] += seconds
        explainer_s = sum(s for *_, s in passes)
        per_request.append({"seconds": round(total, 3), "regenerated": sum(it.regenerated for it in resp.items),
                            "roles": {k: {**v, "seconds": round(v["seconds"], 3)} for k, v in roles.items()},
                            "outside_explainer_s": round(total - explainer_s, 3)})
        print(per_request[-1])
    generation._forward = forward

    names = ["prefix", "suffix", "opening", "decode", "retry_prefill", "retry_decode"]
    mean = {r: round(statistics.mean(q["roles"].get(r, {"seconds": 0.0})["seconds"] for q in per_request), 3)
            for r in names}
    res = {"command": "bench/slate_passes.py" + (f" --users {args.users}" if args.users != 8 else "")
           + (" --contiguous-head" if args.contiguous_head else ""),
           "model": args.model, "contiguous_head": args.contiguous_head, "output_projection_ms": micro, "requests": len(per_request), "candidates": 10,
           "p50_s": round(statistics.median(q["seconds"] for q in per_request), 3),
           "mean_s": round(statistics.mean(q["seconds"] for q in per_request), 3),
           "mean_seconds_by_pass": mean,
           "mean_outside_explainer_s": round(statistics.mean(q["outside_explainer_s"] for q in per_request), 3),
           "slates_with_a_retry": sum(q["regenerated"] > 0 for q in per_request),
           "per_request": per_request}
    write_json(args.out, res)
    print(json.dumps({k: v for k, v in res.items() if k != "per_request"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
