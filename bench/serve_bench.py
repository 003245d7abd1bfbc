"""Load benchmark of the served Bento on 127.0.0.1: latency percentiles and errors, bounded in count and time.

Usage:  .venv/bin/python bench/serve_bench.py [--target expctr:latest] [--requests 1000] [--concurrency 16]
Needs a packaged Bento (`dvc repro bento`). Starts `bentoml serve TARGET` on a free port of 127.0.0.1 (or uses
a running server: --url), waits for /readyz, then runs these scenarios and stops the server:

- ctr:       POST /predict, a random known user and 100 random candidates, explain=false (also at
             concurrency 1, 200 requests: the latency of one request on an idle server)
- explained: POST /predict, 10 candidates, explain=true: --cold-slates fresh slates one at a time (cold c=1:
             the latency of one uncached explained request; goal p50 <= 3 s on 2 cores), then a pool of --explain-pool distinct slates
             sent at once (cold: concurrent cold requests share generation batches), then repeats drawn
             from that pool (warm: the explanation cache), which is how a ranking page re-asks for the
             same slate.
- identical: one fresh slate sent by --concurrency clients at once: identical requests in flight are
             coalesced, so the explainer writes it once (the server's `expctr_explainer` counts before and
             after are recorded).

Each scenario stops issuing requests after --max-seconds. Results: bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import readiness  # bench/, on the path when run as a file
from readiness import free_port

ROOT = Path(__file__).resolve().parents[1]


def start_server(target: str, port: int, workdir: Path | None, log_path: Path) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    if workdir:
        cmd += ["--working-dir", str(workdir)]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen | None) -> None:
    """Stop a server `start_server` began (None: a server the caller did not start, left running)."""
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until the server `start_server` began answers /readyz (bench/readiness.py); exits if it dies."""
    try:
        return readiness.wait_ready(url, readiness.process_stopped(proc), timeout)
    except readiness.NotReady as exc:
        raise SystemExit(str(exc)) from None


async def run(url: str, bodies: list[dict], concurrency: int, max_seconds: float) -> dict:
    lat, errors, statuses = [], 0, {}
    queue = list(enumerate(bodies))
    deadline = time.perf_counter() + max_seconds
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def worker():
            nonlocal errors
            while queue and time.perf_counter() < deadline:
                _, body = queue.pop(0)
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", json=body)
                    code = r.status_code
                except httpx.HTTPError:
                    code = "exception"
                lat.append(time.perf_counter() - t0)
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                if code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(lat) * 1000
    pct = {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 95, 99)}
    return {"requests": len(lat), "planned": len(bodies), "errors": errors, "statuses": statuses,
            "concurrency": concurrency, "wall_s": round(wall, 2),
            "throughput_rps": round(len(lat) / wall, 2) if wall else None, **pct,
            "mean_ms": round(float(ms.mean()), 1) if len(ms) else None}


def explainer_counts(url: str) -> dict[str, float]:
    """The service's `expctr_explainer` gauge: explanations by how they were obtained, batches."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("expctr_explainer{"):
            out[line.split('count="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="expctr:latest", help="Bento tag, or service.py:ExpCTR with --working-dir")
    ap.add_argument("--working-dir", type=Path, default=None)
    ap.add_argument("--url", default=None, help="use this running server instead of starting one")
    ap.add_argument("--model", default="expctr_pair:latest", help="the served model pair in the BentoML store")
    ap.add_argument("--cold-slates", type=int, default=20,
                    help="fresh explained slates sent one at a time (uncached latency)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--explain-candidates", type=int, default=10)
    ap.add_argument("--explain-pool", type=int, default=8, help="distinct explained requests (cold generations)")
    ap.add_argument("--max-seconds", type=float, default=600, help="per scenario")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args()

    import bentoml

    model = bentoml.models.get(args.model)
    users = pl.read_parquet(Path(model.path) / "users.parquet")["user_id"].to_list()
    items = pl.read_parquet(Path(model.path) / "catalogue.parquet")["item_id"].to_list()
    rng = random.Random(args.seed)
    ctr = [{"user_id": rng.choice(users), "candidates": rng.sample(items, args.candidates)}
           for _ in range(args.requests)]
    pool = [{"user_id": rng.choice(users), "candidates": rng.sample(items, args.explain_candidates), "explain": True}
            for _ in range(args.explain_pool)]
    warm = [rng.choice(pool) for _ in range(args.requests)]
    fresh = [{"user_id": rng.choice(users), "candidates": rng.sample(items, args.explain_candidates), "explain": True}
             for _ in range(args.cold_slates)]  # one at a time: the latency of a single uncached explained request
    same = {"user_id": rng.choice(users), "candidates": rng.sample(items, args.explain_candidates), "explain": True}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    proc, url = None, args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.target, port, args.working_dir, args.out.with_suffix(".server.log"))
    try:
        ready_s = wait_ready(url, proc, timeout=600) if proc is not None else None
        print(f"server ready at {url}" + (f" in {ready_s:.1f} s" if ready_s is not None else ""))
        res = {"target": args.target if proc is not None else "running server",
               "ready_s": None if ready_s is None else round(ready_s, 1), "cpu_threads": os.cpu_count()}
        res["ctr_c1"] = asyncio.run(run(url, ctr[:200], 1, args.max_seconds))
        print("ctr c=1  ", res["ctr_c1"])
        res["ctr"] = asyncio.run(run(url, ctr, args.concurrency, args.max_seconds))
        print("ctr      ", res["ctr"])
        res["explained_cold_c1"] = asyncio.run(run(url, fresh, 1, args.max_seconds))
        print("cold c=1 ", res["explained_cold_c1"])
        res["explained_cold"] = asyncio.run(run(url, pool, args.concurrency, args.max_seconds))
        print("cold     ", res["explained_cold"])
        res["explained_warm"] = asyncio.run(run(url, warm, args.concurrency, args.max_seconds))
        print("warm     ", res["explained_warm"])
        before = explainer_counts(url)
        res["explained_identical"] = asyncio.run(run(url, [same] * args.concurrency, args.concurrency,
                                                     args.max_seconds))
        after = explainer_counts(url)
        res["explained_identical"]["explainer"] = {k: after.get(k, 0) - before.get(k, 0)
                                                   for k in ("generated", "coalesced", "cache", "batches")}
        print("identical", res["explained_identical"])
        res["settings"] = {"requests": args.requests, "concurrency": args.concurrency, "candidates": args.candidates,
                           "explain_candidates": args.explain_candidates, "explain_pool": args.explain_pool,
                           "cold_slates": args.cold_slates, "max_seconds": args.max_seconds, "seed": args.seed}
    finally:
        stop_server(proc)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
