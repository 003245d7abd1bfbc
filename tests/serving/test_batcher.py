"""The explainer's request scheduler: cache, coalescing of identical jobs in flight, batching across requests."""

from __future__ import annotations

import threading
import time

import pytest

from expctr.serving.batcher import ExplanationBatcher, Job
from expctr.serving.cache import ExplanationCache


class Recorder:
    """A batch function that records its batches and can be held mid-batch (the explainer being busy)."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail = False

    def __call__(self, jobs):
        self.batches.append([j.key for j in jobs])
        self.entered.set()
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("explainer broke")
        return [f"text of {j.key}" for j in jobs]


def wait_until(cond, timeout=10.0):
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, "timed out"
        time.sleep(0.005)


def start(batcher, keys, out, name):
    t = threading.Thread(target=lambda: out.__setitem__(name, batcher.run([Job(k, None) for k in keys])))
    t.start()
    return t


def test_generated_once_then_served_from_the_cache():
    rec = Recorder()
    b = ExplanationBatcher(rec, ExplanationCache(10), max_rows=8)
    first = b.run([Job("a", None), Job("b", None)])
    again = b.run([Job("b", None), Job("c", None)])
    assert [(o.value, o.how) for o in first] == [("text of a", "generated"), ("text of b", "generated")]
    assert [(o.value, o.how) for o in again] == [("text of b", "cache"), ("text of c", "generated")]
    assert rec.batches == [["a", "b"], ["c"]]


def test_identical_jobs_in_flight_are_coalesced_without_waiting_for_the_explainer():
    rec = Recorder()
    rec.release.clear()
    b = ExplanationBatcher(rec, ExplanationCache(10), max_rows=8)
    out: dict = {}
    first = start(b, ["a", "b"], out, "first")
    assert rec.entered.wait(10)  # the first request holds the explainer
    others = [start(b, ["a", "b"], out, f"same{n}") for n in range(3)]
    wait_until(lambda: b.stats()["coalesced"] == 6)  # joined the jobs in flight while the explainer was busy
    assert b.stats()["pending"] == 0
    rec.release.set()
    for t in (first, *others):
        t.join(10)
    assert rec.batches == [["a", "b"]]  # written once
    for n in range(3):
        assert [(o.value, o.how) for o in out[f"same{n}"]] == [("text of a", "coalesced"), ("text of b", "coalesced")]
    assert [o.how for o in out["first"]] == ["generated", "generated"]


def test_requests_arriving_while_the_explainer_is_busy_share_the_next_batch():
    rec = Recorder()
    rec.release.clear()
    b = ExplanationBatcher(rec, ExplanationCache(10), max_rows=3)
    out: dict = {}
    first = start(b, ["a"], out, "a")
    assert rec.entered.wait(10)
    waiting = [start(b, ["b", "c"], out, "bc"), start(b, ["d", "e"], out, "de")]
    wait_until(lambda: b.stats()["pending"] == 4)
    rec.release.set()
    for t in (first, *waiting):
        t.join(10)
    # one batch for the busy request, then the queued requests together, at most max_rows rows each
    assert rec.batches[0] == ["a"] and len(rec.batches) == 3
    assert sorted(k for batch in rec.batches[1:] for k in batch) == ["b", "c", "d", "e"]
    assert max(len(x) for x in rec.batches) <= 3 and len(rec.batches[1]) == 3
    assert [o.value for o in out["de"]] == ["text of d", "text of e"]


def test_a_failed_batch_fails_its_waiters_and_frees_the_keys():
    rec = Recorder()
    rec.fail = True
    b = ExplanationBatcher(rec, ExplanationCache(10), max_rows=8)
    with pytest.raises(RuntimeError, match="explainer broke"):
        b.run([Job("a", None)])
    assert b.stats()["in_flight"] == 0
    rec.fail = False
    assert b.run([Job("a", None)])[0].how == "generated"
