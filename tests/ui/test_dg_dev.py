"""`dg dev`, the README's command for the UI, starts on the real definitions without a deprecation warning
(no browser: the browser tests drive the UI it serves)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from support import TINY_SLICE
from ui_support import dagster_dev, make_project

pytestmark = pytest.mark.slow


def test_dg_dev_serves_the_pipeline_without_warnings(tmp_path: Path) -> None:
    root, env = make_project(tmp_path / "project", **TINY_SLICE)
    log = tmp_path / "dg-dev.log"
    with dagster_dev(root, env, log) as url:  # fails on a SupersessionWarning or DeprecationWarning at start
        with urllib.request.urlopen(f"{url}/server_info", timeout=30) as resp:
            info = json.loads(resp.read())
        query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
        request = urllib.request.Request(f"{url}/graphql", data=query, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as resp:
            nodes = json.loads(resp.read())["data"]["assetNodes"]
    assert "dagster_webserver_version" in info
    keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
    assert {"raw_data", "validated_features", "ctr_model", "evaluation_report", "bento"} <= keys
    assert "SupersessionWarning" not in log.read_text(errors="replace")
