"""One explainer, many requests: coalesce identical explanations in flight, batch concurrent cold ones.

Every explanation a request needs is a *job* with a key (what determines its text). `ExplanationBatcher.run`
resolves each job, in this order, without ever holding the explainer lock:

1. the cache has it -> served from the cache;
2. another request is already waiting for the same key -> this request waits for that result (coalesced:
   the explainer never writes the same text twice, and the second request does not queue for the lock);
3. otherwise the job joins the pending queue.

Then the request takes the explainer lock and runs one batch of the pending queue's oldest jobs (its own and
any other request's, up to `max_rows`), until its own jobs are done: requests that arrive while the
explainer is busy are generated together in the next batch instead of one after another. A result is put in
the cache before its key leaves the in-flight table, so a request always finds it in one or the other.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    key: str
    payload: Any


@dataclass(frozen=True)
class Outcome:
    value: Any
    how: str  # "cache", "coalesced" or "generated"


class ExplanationBatcher:
    def __init__(self, run_batch: Callable[[list[Job]], list[Any]], cache, max_rows: int):
        """`run_batch(jobs) -> values` generates (holding the explainer); `cache` has get/put."""
        self._run_batch, self.cache, self.max_rows = run_batch, cache, max(1, int(max_rows))
        self._explainer = threading.Lock()
        self._state = threading.Lock()
        self._inflight: dict[str, Future] = {}
        self._pending: deque[tuple[Job, Future]] = deque()
        self.counts = {"cache": 0, "coalesced": 0, "generated": 0, "batches": 0, "max_batch_rows": 0}

    def _submit(self, jobs: Sequence[Job]) -> list[tuple[Future, str]]:
        out = []
        with self._state:
            for job in jobs:
                if job.key in self._inflight:
                    how, fut = "coalesced", self._inflight[job.key]
                elif (hit := self.cache.get(job.key)) is not None:
                    how, fut = "cache", Future()
                    fut.set_result(hit)
                else:
                    how, fut = "generated", Future()
                    self._inflight[job.key] = fut
                    self._pending.append((job, fut))
                self.counts[how] += 1
                out.append((fut, how))
        return out

    def _take(self) -> list[tuple[Job, Future]]:
        with self._state:
            n = min(self.max_rows, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    def _finish(self, batch: list[tuple[Job, Future]], values: list[Any] | None, error: BaseException | None):
        if values is not None:
            for (job, _), value in zip(batch, values, strict=True):
                self.cache.put(job.key, value)
        with self._state:
            for n, (job, fut) in enumerate(batch):
                self._inflight.pop(job.key, None)
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(values[n])

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Each job's value and how it was obtained, in order (see the module docstring)."""
        submitted = self._submit(jobs)
        futures = [f for f, _ in submitted]
        while not all(f.done() for f in futures):
            with self._explainer:
                if all(f.done() for f in futures):
                    break  # another request's batch carried ours
                batch = self._take()
                if not batch:
                    continue
                self.counts["batches"] += 1
                self.counts["max_batch_rows"] = max(self.counts["max_batch_rows"], len(batch))
                try:
                    values = self._run_batch([job for job, _ in batch])
                except BaseException as exc:
                    self._finish(batch, None, exc)
                    raise
                self._finish(batch, values, None)
        return [Outcome(f.result(), how) for f, how in submitted]

    def stats(self) -> dict[str, int]:
        with self._state:
            return {**self.counts, "in_flight": len(self._inflight), "pending": len(self._pending)}


__all__ = ["ExplanationBatcher", "Job", "Outcome"]
