"""A model's reads and generation split over several processes of one thread each, on a CPU.

Why processes: a 2-core CPU runs the LLM's inference faster as two one-thread processes, each on its part of
the prompts, than as one process with two threads. The matmuls scale well over threads (1.7x), the rest does
not: decoding is a loop of small steps (a step's fixed part is Python and ~30 layers of small ops), and prompts
are built, batched and checked in Python. Measured on this stack (round-3 adapter, alternated, nothing else
running; `bench/side_by_side.py`, bench/results/side_by_side.json): 192 test explanations 40.1 s in one
process of 2 threads, 33.6 s as two of one; 400 verdict readings 35.4 -> 31.4 s. Before building it, ad hoc:
240 judge readings 13.8 -> 12.0 s; Python threads in one process gained 6 % (the GIL).

The calling process runs the first part with the model it holds; every other part goes to a spawned worker,
which loads the model it is asked for once (`ModelLoader`: a picklable description; a worker keeps each model
it loaded) and serves later calls while the pool is open. Every part runs with `threads` threads, so a part's
results do not depend on the other parts; they do differ in float rounding from a run with more threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expctr.config import LLMParams


@dataclass(frozen=True)
class ModelLoader:
    """(model, tokenizer) as a worker loads it: the base model with `adapter_dir` merged (None: the base
    model itself), in `llm.dtype` (the reading dtype: pass `reading_params(llm)`)."""

    base_model_dir: Path
    adapter_dir: Path | None
    llm: LLMParams

    @property
    def key(self) -> str:
        return f"{self.base_model_dir}|{self.adapter_dir}|{self.llm.model_dump_json()}"

    def __call__(self):
        from expctr.llm.adapters import load_explainer

        return load_explainer(self.base_model_dir, self.adapter_dir, self.llm)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op threads set to `n`, then put the previous count back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cut_points(labels: Sequence[Any], parts: int) -> list[int]:
    """Offsets that cut a sequence into `parts` near-equal contiguous ranges, each cut moved forward past equal
    neighbouring `labels` (one user's slate stays whole, so its shared prefix still runs once). The start of
    every range after the first; ranges that would be empty are dropped."""
    n = len(labels)
    cuts: list[int] = []
    for k in range(1, parts):
        at = max(round(n * k / parts), cuts[-1] + 1 if cuts else 1)
        while 0 < at < n and labels[at] == labels[at - 1]:
            at += 1
        if at < n:
            cuts.append(at)
    return cuts


_MODELS: dict = {}  # a worker's loaded models, by loader
_THREADS: dict = {}


def _init_worker(threads: int) -> None:
    import torch

    _THREADS["n"] = threads
    torch.set_num_threads(threads)


def _run_part(fn: Callable, load: ModelLoader, part, args: tuple, kwargs: dict):
    import torch

    if load.key not in _MODELS:
        _MODELS[load.key] = load()
        torch.set_num_threads(_THREADS["n"])  # after loading: the loader sets the configured threads
    model, tokenizer = _MODELS[load.key]
    return fn(model, tokenizer, part, *args, **kwargs)


class SideBySide:
    """A pool of `processes - 1` spawned workers beside this process, `threads` torch threads each, open while
    the context is. With one process nothing is spawned and `run` calls `fn` on the whole input here.

        with SideBySide(2, threads=1) as pool:
            ranges = pool.ranges(user_of_row)  # [(0, 7), (7, 12)]: one per process, a user's rows in one
            parts = pool.run(fn, [rows[a:b] for a, b in ranges], model, tokenizer, loader)  # fn(model, tok, part)
    """

    def __init__(self, processes: int, threads: int):
        self.processes, self.threads = max(1, int(processes)), max(1, int(threads))
        self._pool: ProcessPoolExecutor | None = None

    @classmethod
    def for_llm(cls, llm: LLMParams) -> SideBySide:
        """`llm.side_by_side` processes of `llm.threads // llm.side_by_side` threads (at least one) each."""
        return cls(llm.side_by_side, max(1, llm.threads // llm.side_by_side))

    @property
    def active(self) -> bool:
        return self._pool is not None

    def ranges(self, labels: Sequence[Any]) -> list[tuple[int, int]]:
        """[start, stop) ranges of `labels`' rows, one part per process (`cut_points`: never between equal
        neighbouring labels); the whole as one range while no worker is open, so the caller runs it in place."""
        cuts = cut_points(labels, self.processes) if self.active else []
        return list(zip([0, *cuts], [*cuts, len(labels)], strict=True))

    def __enter__(self):
        if self.processes > 1:  # started now: the workers import while this process goes on
            context = multiprocessing.get_context("spawn")  # never fork a process that has started torch's threads
            self._pool = ProcessPoolExecutor(self.processes - 1, mp_context=context, initializer=_init_worker,
                                             initargs=(self.threads,))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, fn: Callable, parts: Sequence, model, tokenizer, load: ModelLoader, *args, **kwargs) -> list:
        """[fn(model, tokenizer, part, *args, **kwargs) for part in parts]: the first part here (with `threads`
        threads), the others on the workers (each with the model `load` gives; `fn` must be a module-level
        function, and its arguments picklable)."""
        if not parts:
            return []
        if self._pool is None or len(parts) == 1:
            return [fn(model, tokenizer, part, *args, **kwargs) for part in parts]
        futures = [self._pool.submit(_run_part, fn, load, part, args, kwargs) for part in parts[1:]]
        with torch_threads(self.threads):
            first = fn(model, tokenizer, parts[0], *args, **kwargs)
        return [first, *(f.result() for f in futures)]


__all__ = ["ModelLoader", "SideBySide", "cut_points", "torch_threads"]
