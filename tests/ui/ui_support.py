"""Helpers for the browser tests: a tiny git + DVC project, `dg dev` on 127.0.0.1, Debian's chromium.

A plain module with a unique name (not conftest.py), like tests/orchestration/bridge_support.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from support import REPO_ROOT, VENV_BIN, copy_project_tree, make_params

CHROMIUM = os.environ.get("EXPCTR_CHROMIUM", "/usr/bin/chromium")
# Headless flags for a closed network: without the background-networking ones chromium keeps dialling
# out (component updates, sync, QUIC probes) and its connections are refused.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"  # screenshots (gitignored)
GIT_IDENT = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
             for what, value in (("NAME", "expctr-tests"), ("EMAIL", "tests@expctr.invalid"))}


def project_env(root: Path, dagster_home: Path) -> dict[str, str]:
    return {**os.environ, **GIT_IDENT, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "EXPCTR_PROJECT_DIR": str(root), "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_GRPC_TIMEOUT_SECONDS": "300"}  # sensor ticks on a loaded machine


def sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def make_project(root: Path, **overrides) -> tuple[Path, dict[str, str]]:
    """The real dvc.yaml, src/ and params.yaml (with overrides) in a fresh git + DVC repo, and its env."""
    root.mkdir(parents=True, exist_ok=True)
    copy_project_tree(root)
    make_params(root, **overrides)
    (root / ".gitignore").write_text("/data/\n/models/\n/.dagster_home/\n")
    home = root / ".dagster_home"
    home.mkdir()
    # a loaded 2-core machine can take minutes to start the code server (Dagster's default wait: 180 s)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\ncode_servers:\n  local_startup_timeout: 900\n")
    env = project_env(root, home)
    sh(["git", "init", "-q"], root, env)
    sh([str(VENV_BIN / "dvc"), "init", "-q"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "tiny project"], root, env)
    return root, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dagster_dev(root: Path, env: dict[str, str], log: Path, timeout: float = 1200) -> Iterator[str]:
    """`dg dev` (webserver, daemon, code server) on 127.0.0.1 in its own process group; yields its URL.

    `dg dev` is the form Dagster 1.13 recommends (`dagster dev` prints a SupersessionWarning); given `-m` it
    runs the same server in this process. Started with `start_new_session` and stopped through its process
    group (it ignores SIGTERM; its webserver, daemon and code server must go with it).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "dg"), "dev", "-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"dg dev exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dg dev not up after {timeout}s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        started = log.read_text(errors="replace")
        for warning in ("SupersessionWarning", "DeprecationWarning"):
            assert warning not in started, f"dg dev printed a {warning}:\n{started[-4000:]}"
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """Ctrl-C to the process group (what `dg dev` shuts down on), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the daemon or code server may outlive the parent
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
