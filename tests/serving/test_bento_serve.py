"""The packaged Bento, for real: `expctr bento` registers + builds it, `bentoml serve` runs it on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support import REPO_ROOT, opens_with_verdict, run_cli

from expctr.llm.explanations import stance

pytestmark = pytest.mark.slow


def _readiness():
    """bench/readiness.py: the /readyz wait the benchmarks use too."""
    spec = importlib.util.spec_from_file_location("expctr_bench_readiness", REPO_ROOT / "bench" / "readiness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    # a newer pair in the store must not change what the built Bento serves (it pins its own model)
    subprocess.run([sys.executable, str(REPO_ROOT / "bento" / "package.py"), "--root", str(root), "--no-build",
                    "--metrics", str(tmp_path / "newer.json")], check=True, capture_output=True)
    newer = json.loads((tmp_path / "newer.json").read_text())["model_tag"]
    assert newer != record["model_tag"]

    readiness = _readiness()
    port = readiness.free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", record["bento_tag"],
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            readiness.wait_ready(url, readiness.process_stopped(proc), timeout=300)
        except readiness.NotReady as exc:
            pytest.fail(f"{exc}:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        served_log = (tmp_path / "serve.log").read_text()
        assert f"serving model {record['model_tag']}" in served_log and newer not in served_log, served_log[-3000:]
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
            assert opens_with_verdict(it["explanation"], positive), it
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
        # every CTR request was scored in a counted forward pass (count = passes, sum = requests; lone ones alone)
        assert metrics["expctr_ctr_batch_requests_sum"] >= 48, metrics
        assert 1 <= metrics["expctr_ctr_batch_requests_count"] <= metrics["expctr_ctr_batch_requests_sum"]
        bad = httpx.post(f"{url}/predict", content=b"{oops", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        for body, headers, status in (  # through the real server too: our error shape, not BentoML's
                (b'{"user_id": "\\ud800", "candidates": ["x"]}', {}, 400),
                (b'{"user_id": "u", "candidates": ["x"]}', {"content-encoding": "gzip"}, 415)):
            bad = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json", **headers})
            assert bad.status_code == status and set(bad.json()) == {"error"}, bad.text
        # BentoML's own answers (no route, wrong method) and the size limit, through uvicorn: typed JSON too
        too_big = json.dumps({"user_id": users[0], "candidates": ["x" * 200] * 400}).encode()
        for method, path, body, status, code in (
                ("POST", "/admin", b"{}", 404, "not_found"), ("GET", "/predict", None, 405, "method_not_allowed"),
                ("PUT", "/predict", b"{}", 405, "method_not_allowed"), ("POST", "/predict", too_big, 413,
                                                                        "payload_too_large")):
            bad = httpx.request(method, f"{url}{path}", content=body, headers={"content-type": "application/json"},
                                timeout=30)
            assert bad.status_code == status and bad.headers["content-type"] == "application/json", bad.text
            err = bad.json()["error"]
            assert set(bad.json()) == {"error"} and err["code"] == code and err["message"], bad.text
            assert set(err) == {"code", "message", "field"} and err["field"] is None, bad.text
        unknown = httpx.post(f"{url}/explain", json={"user_id": users[0], "item_id": "no such item"}, timeout=30)
        assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "item_id", unknown.text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
