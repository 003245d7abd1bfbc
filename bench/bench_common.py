"""Pieces the benchmark scripts share: the command line as recorded in versioned results, and the 1-vs-N-process
runs of the data-parallel benchmarks (ctr_distributed_bench, rl_distributed_bench).

The scripts run as files (`python bench/x.py`, also under `accelerate launch`), so this directory is on their
import path."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

PATH_OPTIONS = ("--tmp", "--out", "--scratch", "--features", "--project")  # machine-local paths: never in a versioned result


def round_explainer(project: Path, k: int):
    """(params, paths, reading LLM params, explainer, tokenizer) of a pipeline run's round-k adapter, merged and
    loaded in the inference dtype with its threads set: what the offline benches that re-read a run start from."""
    from expctr.config import load_params
    from expctr.explainer.rounds import ADAPTER
    from expctr.llm.adapters import load_explainer
    from expctr.llm.base_model import reading_params
    from expctr.paths import ProjectPaths

    params = load_params(project / "params.yaml")
    paths = ProjectPaths(project)
    llm = reading_params(params.llm)
    explainer, tokenizer = load_explainer(paths.base_llm, paths.round_dir(k) / ADAPTER, llm)
    return params, paths, llm, explainer, tokenizer


def recorded_command(script: str, argv: list[str]) -> str:
    """`bench/<script> <args>` with scratch and output paths left out (the results are versioned)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in PATH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in PATH_OPTIONS)):
            kept.append(arg)
    return " ".join([f"bench/{script}", *kept])


def worker_threads(total_threads: int) -> tuple[int, int]:
    """(processes, torch threads of this one): the setting's thread budget split evenly over its processes."""
    import torch

    from expctr import distributed

    world = distributed.world_size()
    threads = max(1, total_threads // world)
    torch.set_num_threads(threads)
    return world, threads


def peak_rss_gib_per_process() -> list[float]:
    """Every process's peak RSS in GiB, in rank order (a collective under `accelerate launch`: all must call)."""
    from expctr import distributed

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    if distributed.world_size() == 1:
        return [rss]
    from accelerate.utils import gather_object

    return gather_object([rss])


def run_settings(processes: list[int], program: list[str], rows_file: Path) -> list[dict]:
    """Run `program` (a script and its worker arguments, which make process 0 append JSON rows to `rows_file`)
    once per process count: 1 as a plain subprocess, N > 1 under the `accelerate launch` command the stages use.
    Returns the rows; `rows_file` is removed."""
    from expctr import distributed
    from expctr.config import DistributedParams

    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.unlink(missing_ok=True)
    for n in processes:
        cmd = [sys.executable, *program] if n == 1 else distributed.launch_command(
            DistributedParams(num_processes=n), program)
        print(f"== {n} process(es): {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    rows_file.unlink()
    return rows
