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
from support import REPO_ROOT, run_cli

from expctr.explainer.rewards import stance
from expctr.llm.prompts import verdict_prefix

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
        served = r.json()
        for it in served["items"]:  # the verdict follows the probability it is served with
            positive = it["p_click"] >= served["decision_threshold"]
            assert it["explanation"].startswith(verdict_prefix(positive) + " "), it
            assert stance(it["explanation"]) == (1 if positive else -1) and it["stance_source"] == "score"
        # the trust benchmark, proven on this server with a tiny count (one known user, one cold-start history)
        out = tmp_path / "trust.json"
        bench = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "trust_bench.py"), "--url", url,
                                "--model", record["model_tag"], "--users", "1", "--cold", "1", "--candidates", "2",
                                "--out", str(out)], check=False, capture_output=True, text=True, timeout=900)
        assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
        trust = json.loads(out.read_text())
        assert trust["explanations"] == 4 and trust["by_kind"].keys() == {"known", "cold"}
        assert trust["stance_score_agreement"] == 1.0 and trust["stance_field_agreement"] == 1.0
        assert trust["all_cached_on_second_pass"] and trust["server_flags"]["flags_match_checks"] == 1.0
        for key in ("grounded_rate", "complete_single_sentence_rate"):
            assert 0.0 <= trust[key] <= 1.0
        assert trust["latency"]["uncached"]["requests"] == 2 and trust["latency"]["cached"]["p50_ms"] > 0
        assert trust["explainer_counts"]["generated"] >= 4 and trust["explainer_counts"]["cache"] >= 4
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
        for body, headers, status in (  # through the real server too: our error shape, not BentoML's
                (b'{"user_id": "\\ud800", "candidates": ["x"]}', {}, 400),
                (b'{"user_id": "u", "candidates": ["x"]}', {"content-encoding": "gzip"}, 415)):
            bad = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json", **headers})
            assert bad.status_code == status and set(bad.json()) == {"error"}, bad.text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
