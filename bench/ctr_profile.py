"""Where the milliseconds of one CTR-only `/predict` (100 candidates, concurrency 1) go, on idle cores.

Usage:  .venv/bin/python bench/ctr_profile.py [--requests 300] [--target expctr:latest]
Needs a packaged Bento (`dvc repro bento`). Three measurements of the same seeded requests:

1. in process, the service's own parts one by one, as `bento/service.py` calls them (median over the
   requests): request validation, lookups + feature rows (`ModelPair.prepare`), the ID forward on the
   one-torch-thread scoring thread, ranking + the response model (`ModelPair.respond`), and the body's
   serialization (`model_dump_json`);
2. over HTTP against `bentoml serve TARGET` on 127.0.0.1 (the explainer not loaded: it has no part in a
   CTR-only request), one request at a time: `/predict`, and `GET /livez`, BentoML's own cheapest route,
   as the floor every request pays (uvicorn, BentoML's middlewares, loopback, this client). `/predict` is
   sent twice: by a plain blocking httpx client, and by `bench/serve_bench.py`'s asyncio load generator
   (the `ctr_c1` figure), so the client's own share is measured; the server's access log gives each
   request's time inside the app (BentoML's own figure, from the ASGI app receiving it to the response);
3. the difference: what `/predict` costs over that floor beyond its own parts (sending the ~3 KB request
   and the ~28 KB response, the request guard, BentoML's parse and validation, the adaptive batcher and
   thread hops).

Run it alone (one heavy process at a time). Results: bench/results/ctr_profile.json (written atomically).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import time
from pathlib import Path

import httpx
import polars as pl
import serve_bench  # bench/, on the path when run as a file
from serve_bench import free_port, start_server, stop_server, wait_ready

ACCESS_MS = re.compile(r"path=/predict,.*\) ([0-9.]+)ms$")

ROOT = Path(__file__).resolve().parents[1]


def _ms(values: list[float]) -> dict:
    ms = sorted(1000 * v for v in values)
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3),
            "mean_ms": round(statistics.mean(ms), 3)}


def in_process(bundle: Path, bodies: list[dict]) -> dict:
    """Median milliseconds of each part of the service's CTR-only path (warmed up on the first 20)."""
    from expctr.serving.id_scoring import scoring_thread
    from expctr.serving.predictor import ModelPair
    from expctr.serving.requests import validate
    from expctr.serving.schemas import PredictRequest

    pair = ModelPair(bundle)
    scorer = scoring_thread()
    parts: dict[str, list[float]] = {k: [] for k in ("validate", "prepare", "id_forward", "respond", "serialize")}
    for n, body in enumerate(bodies[:20] + bodies):
        t0 = time.perf_counter()
        req = validate(PredictRequest, {"candidates": body["candidates"], "user_id": body["user_id"],
                                        "explain": False, "history": None})
        t1 = time.perf_counter()
        prepared = pair.prepare(req)
        t2 = time.perf_counter()
        probs = scorer.submit(pair.score_id, prepared.features).result()
        t3 = time.perf_counter()
        resp = pair.respond(prepared, probs)
        t4 = time.perf_counter()
        resp.model_dump_json()
        t5 = time.perf_counter()
        if n >= 20:
            for key, a, b in (("validate", t0, t1), ("prepare", t1, t2), ("id_forward", t2, t3),
                              ("respond", t3, t4), ("serialize", t4, t5)):
                parts[key].append(b - a)
    scorer.shutdown()
    out = {k: _ms(v) for k, v in parts.items()}
    out["sum_p50_ms"] = round(sum(v["p50_ms"] for v in out.values()), 3)
    return out


def over_http(target: str, bodies: list[dict], log: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ["EXPCTR_LOAD_EXPLAINER"] = "0"  # inherited by the server: a CTR-only request never uses it
    proc = start_server(target, port, None, log)
    try:
        wait_ready(url, proc, timeout=600)
        with httpx.Client(base_url=url, timeout=60) as client:
            def timed(send, n):
                out = []
                for i in range(n):
                    t = time.perf_counter()
                    r = send(i)
                    out.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        raise SystemExit(f"{r.request.url} answered {r.status_code}: {r.text[:200]}")
                return out

            timed(lambda i: client.post("/predict", json=bodies[i % len(bodies)]), 20)  # warm-up
            predict = timed(lambda i: client.post("/predict", json=bodies[i]), len(bodies))
            livez = timed(lambda i: client.get("/livez"), len(bodies))
            response_bytes = len(client.post("/predict", json=bodies[0]).content)
        load_generator = asyncio.run(serve_bench.run(url, bodies, 1, 600))
    finally:
        stop_server(proc)
    # The access log's /predict lines in order: 20 warm-up, the blocking client's, 1 size probe, the load
    # generator's.
    inside = [float(m.group(1)) / 1000 for line in log.read_text(errors="replace").splitlines()
              if (m := ACCESS_MS.search(line))]
    n = len(bodies)
    return {"predict": _ms(predict), "livez": _ms(livez),
            "predict_serve_bench_client": {k: load_generator[k] for k in ("requests", "p50_ms", "p95_ms", "mean_ms")},
            "inside_app_blocking_client": _ms(inside[20:20 + n]) if len(inside) >= 20 + n else None,
            "inside_app_serve_bench_client": _ms(inside[21 + n:21 + 2 * n]) if len(inside) >= 21 + 2 * n else None,
            "request_bytes": len(json.dumps(bodies[0]).encode()), "response_bytes": response_bytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="expctr:latest", help="Bento tag served over HTTP")
    ap.add_argument("--model", default="expctr_pair:latest", help="the packaged model pair (in-process part)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ctr_profile.json")
    args = ap.parse_args(argv)

    import bentoml

    bundle = Path(bentoml.models.get(args.model).path)
    users = pl.read_parquet(bundle / "users.parquet")["user_id"].to_list()
    items = pl.read_parquet(bundle / "catalogue.parquet")["item_id"].to_list()
    rng = random.Random(args.seed)
    bodies = [{"user_id": rng.choice(users), "candidates": rng.sample(items, args.candidates)}
              for _ in range(args.requests)]

    parts = in_process(bundle, bodies)
    print("in process", parts)
    http = over_http(args.target, bodies, args.out.with_suffix(".server.log"))
    print("over HTTP ", http)
    rest = http["predict"]["p50_ms"] - http["livez"]["p50_ms"] - parts["sum_p50_ms"]
    res = {"command": "bench/ctr_profile.py" + (f" --requests {args.requests}" if args.requests != 300 else ""),
           "target": args.target, "cpu_threads": os.cpu_count(), "requests": args.requests,
           "candidates": args.candidates, "in_process": parts, "http": http,
           "predict_over_livez_beyond_parts_p50_ms": round(rest, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
