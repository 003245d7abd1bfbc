"""Waiting for a served Bento to come up: a free port on 127.0.0.1 and the /readyz poll loop.

Shared by the benchmarks (`python bench/x.py` puts this directory on the import path) and the tests that
start a real server or container (they load this file by path). Only httpx and the standard library, so it
imports anywhere the service's clients run.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


class NotReady(RuntimeError):
    """The server stopped, or did not answer /readyz with 200 in time; the message says which."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, stopped: Callable[[], str | None] = lambda: None, timeout: float = 600,
               interval: float = 1.0) -> float:
    """Seconds until GET {url}/readyz answers 200. `stopped()` is asked before each poll: a reason (the
    server process exited, the container is gone) ends the wait at once instead of polling a dead server
    until the timeout. Raises NotReady."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if (why := stopped()) is not None:
            raise NotReady(f"{url}: {why} before becoming ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(interval)
    raise NotReady(f"{url} not ready after {timeout:.0f} s")


def process_stopped(proc) -> Callable[[], str | None]:
    """`stopped` for a server started as a subprocess.Popen."""
    return lambda: None if proc.poll() is None else f"the server exited with {proc.returncode}"


__all__ = ["NotReady", "free_port", "process_stopped", "wait_ready"]
