"""Container benchmark: the image size of the containerized Bento and its time to ready.

Usage:  .venv/bin/python bench/container_bench.py [--bento expctr:latest | --image TAG] [--runs 3]
Needs a Docker daemon (`bash scripts/ci/system_deps.sh`) and a packaged Bento (`dvc repro bento`). Without
--image it builds the image first with `bash docker/containerize.sh BENTO` (timed; a rebuild reuses Docker's
layer cache, so the first build on a machine is the honest build time). Then, --runs times: `docker run`
with host networking bound to 127.0.0.1 on a free port, and the seconds until GET /readyz answers 200 (the
explainer is loaded) and until a first POST /predict answers; the container is removed after each run.
Results: bench/results/container.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import httpx
from readiness import NotReady, free_port, wait_ready  # bench/, on the path when run as a file

from expctr.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def docker(*args: str, timeout: int = 120) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=True).stdout


def known_ids(image: str) -> tuple[str, list[str]]:
    """A known user and three items, read inside the image from the model it ships."""
    script = ("import glob, polars as pl; d = sorted(glob.glob('/home/bentoml/bento/models/expctr_pair/*/'))[-1]; "
              "print(pl.read_parquet(d + 'users.parquet')['user_id'][0]); "
              "print('\\n'.join(pl.read_parquet(d + 'catalogue.parquet')['item_id'].to_list()[:3]))")
    out = docker("run", "--rm", "--network", "host", image, "python", "-c", script, timeout=300).splitlines()
    return out[0], out[1:4]


def time_to_ready(image: str, user: str, items: list[str], timeout: float) -> dict:
    port, name = free_port(), f"expctr-bench-{time.time_ns()}"
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    docker("run", "-d", "--rm", "--network", "host", "--name", name, image, "--host", "127.0.0.1",
           "--port", str(port))
    try:
        try:
            wait_ready(url, timeout=timeout - (time.perf_counter() - started), interval=0.2)
        except NotReady as exc:
            raise RuntimeError(f"{image}: {exc}:\n{docker('logs', '--tail', '40', name)}") from None
        ready = time.perf_counter() - started
        r = httpx.post(f"{url}/predict", json={"user_id": user, "candidates": items}, timeout=120)
        r.raise_for_status()
        return {"ready_s": round(ready, 2), "first_predict_s": round(time.perf_counter() - started, 2)}
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bento", default="expctr:latest", help="Bento to containerize (default: expctr:latest)")
    ap.add_argument("--image", help="an image already built (skips the build)")
    ap.add_argument("--runs", type=int, default=3, help="container starts to time (default: 3)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for /readyz (default: 600)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "container.json"))
    args = ap.parse_args(argv)

    result: dict = {}
    image = args.image
    if image is None:
        started = time.perf_counter()
        log = subprocess.run(["bash", str(ROOT / "docker" / "containerize.sh"), args.bento], capture_output=True,
                             text=True, check=True).stdout
        result["build_s"] = round(time.perf_counter() - started, 1)
        image = log.strip().splitlines()[-1].split("built ", 1)[1].split(" ", 1)[0]
    size = int(docker("image", "inspect", image, "--format", "{{.Size}}").strip())
    result.update(image=image, image_bytes=size, image_gib=round(size / 2**30, 2))
    user, items = known_ids(image)
    runs = [time_to_ready(image, user, items, args.timeout) for _ in range(args.runs)]
    result["runs"] = runs
    result["ready_s_median"] = sorted(r["ready_s"] for r in runs)[len(runs) // 2]
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
