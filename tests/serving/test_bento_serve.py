"""The packaged Bento, for real: `expctr bento` registers + builds it, `bentoml serve` runs it on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support import run_cli

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_package_then_serve_the_bento_over_http(tiny_rounds_project: Path, tmp_path: Path):
    root = tmp_path / "project"
    root.mkdir()
    for sub in ("data", "models"):
        os.symlink(tiny_rounds_project / sub, root / sub)
    (root / "params.yaml").write_text((tiny_rounds_project / "params.yaml").read_text())
    (root / "metrics").mkdir()
    run_cli(root, "bento")
    record = json.loads((root / "metrics" / "bento.json").read_text())
    assert record["model_tag"].startswith("expctr_pair:") and record["bento_tag"].startswith("expctr:")
    listing = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "list", "-o", "json"],
                             capture_output=True, text=True, check=True)
    assert record["bento_tag"] in listing.stdout

    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", record["bento_tag"],
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("server not ready in 300 s:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        import bentoml
        import polars as pl

        bundle = Path(bentoml.models.get(record["model_tag"]).path)
        users = pl.read_parquet(bundle / "users.parquet")["user_id"].to_list()
        items = pl.read_parquet(bundle / "catalogue.parquet")["item_id"].to_list()
        r = httpx.post(f"{url}/predict", json={"user_id": users[0], "candidates": items[:20]}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 20 and r.json()["versions"]["model"]
        r = httpx.post(f"{url}/predict", json={"user_id": users[0], "candidates": items[:2], "explain": True},
                       timeout=300)
        assert r.status_code == 200, r.text
        assert all(it["explanation"] for it in r.json()["items"])
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda k: httpx.post(f"{url}/predict", json={
                "user_id": users[k % len(users)], "candidates": items[k:k + 100]}, timeout=60).status_code,
                range(48)))
        assert codes == [200] * 48
        metrics = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
                   for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
                   if line.startswith("expctr_ctr_batch_requests_")}
        # every CTR request went through the adaptive batcher (count = forward passes, sum = requests)
        assert metrics["expctr_ctr_batch_requests_sum"] >= 48, metrics
        assert 1 <= metrics["expctr_ctr_batch_requests_count"] <= metrics["expctr_ctr_batch_requests_sum"]
        bad = httpx.post(f"{url}/predict", content=b"{oops", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
