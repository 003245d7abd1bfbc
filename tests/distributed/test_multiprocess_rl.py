"""An RL stage of a round as 2 processes (accelerate launch, DDP over gloo) equals the 1-process stage, and only
process 0 writes.

Compared: the adapter tensors after the dense verdict step and its per-step log. Why the tolerance: both runs
take the same optimiser steps on the same batches in the same order; each of the 2 processes takes half of every
batch and scales its loss so DDP's average of the halves' gradients is the batch's mean-loss gradient, so the
runs differ only by float summation order (which Adam can amplify for a weight whose gradient nearly cancels).
Broken data parallelism moves the weights by the size of the update itself (~1e-3 here): the processes would
each take whole batches, or not synchronise. A GRPO reason step under 2 processes runs too (TRL splits each
generation batch over the processes); its sampled completions differ from one process's, so it is checked for
running and writing once, not for equality. LoRA dropout is off here: its masks are drawn per process by design
(`distributed.rank_seed`), so with dropout the runs differ by the draws, not by the arithmetic under test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from support import REPO_ROOT, make_params
from test_multiprocess_ctr import AUDIT_SITECUSTOMIZE

from expctr.config import load_params
from expctr.data.pairs import attach_items, sample_pairs
from expctr.explainer import rl_launch
from expctr.explainer.dataset import build_prompt_dataset
from expctr.explainer.rl import run_rl_stage
from expctr.llm.base_model import load_tokenizer
from expctr.llm.verdicts import EXPLANATION_PREFIX
from expctr.paths import ProjectPaths

pytestmark = pytest.mark.multiprocess
REL_TOL = 0.1  # of how far training moved the adapter: measured 4.8e-5 for a move of 1.0e-3 (Adam turns a
# near-zero gradient's summation noise into a step of up to lr); broken data parallelism differs by the move itself


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_real_project: Path, base_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("rl2")
    make_params(root, **{"distributed.num_processes": 2, "distributed.stages": ["explainer_rl"],
                         "llm.threads": 1, "llm.max_prompt_tokens": 120, "rl.lora_dropout": 0.0, "rl.verdict_batch_size": 4,
                         "rl.verdict_dtype": "float32", "rl.bf16": False,  # bf16 autocast rounds per batch split
                         "rl.prompts_per_step": 2, "rl.num_generations": 2, "rl.max_completion_length": 8,
                         "data.cache_dir": str(REPO_ROOT / ".cache" / "expctr")})
    (root / "models").mkdir()
    os.symlink(base_model_dir, root / "models" / "base_llm")
    feats = tiny_real_project / "data" / "features"
    pairs = attach_items(sample_pairs(pl.read_parquet(feats / "train.parquet"), 8, seed=5),
                         pl.read_parquet(feats / "items.parquet"))
    pairs.write_parquet(root / "pairs.parquet")
    return root


def _inputs(root: Path):
    tok = load_tokenizer(root / "models" / "base_llm")
    pairs = pl.read_parquet(root / "pairs.parquet")
    data = build_prompt_dataset(pairs, tok, 120, EXPLANATION_PREFIX)
    labels = pairs["label"].to_numpy()
    return data, ([0.9 if y else 0.1 for y in labels], [0.1 if y else 0.9 for y in labels]), pairs


def test_verdict_step_on_two_processes_equals_one(project: Path, monkeypatch):
    params = load_params(project / "params.yaml")
    paths = ProjectPaths(project)
    data, rewards, _ = _inputs(project)
    torch.set_num_threads(1)
    one = run_rl_stage(paths.base_llm, project / "one", None, params.rl, params.llm, 7, verdict_dataset=data,
                       verdict_rewards=rewards, log_path=project / "one.jsonl")
    audit = project / "audit"
    (audit / "site").mkdir(parents=True)
    (audit / "logs").mkdir()
    (audit / "site" / "sitecustomize.py").write_text(AUDIT_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(audit / "site"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("EXPCTR_AUDIT_ROOT", str(project))
    monkeypatch.setenv("EXPCTR_AUDIT_LOGS", str(audit / "logs"))
    two = rl_launch.launch(params, paths, stage="lc", seed=7, out_adapter_dir=project / "two", init_adapter_dir=None,
                           log_path=project / "two.jsonl", verdict_dataset=data, verdict_rewards=rewards,
                           reason_pairs=None, reason_steps=0)
    assert two["summary"]["processes"] == 2
    a, b = load_file(project / "one" / "adapter_model.safetensors"), load_file(project / "two" / "adapter_model.safetensors")
    assert set(a) == set(b)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)  # lora_B starts at 0: how far training went
    assert moved > 1e-4 and diff < REL_TOL * moved, (moved, diff)
    steps_one, steps_two = one["verdict_steps"], two["verdict_steps"]
    assert len(steps_one) == len(steps_two) == 2  # 8 prompts in batches of 4, whatever the process count
    for x, y in zip(steps_one, steps_two):
        assert x["reward"] == pytest.approx(y["reward"], abs=1e-5) and x["agree"] == y["agree"]
    # every write under the project came from process 0 (RANK 0) or the launching process (no RANK)
    writers = {p.name.split("-")[1] for p in (audit / "logs").iterdir() if p.read_text().strip()}
    assert "1" not in writers and "0" in writers, writers


def test_grpo_reason_step_runs_on_two_processes(project: Path):
    params = load_params(project / "params.yaml")
    paths = ProjectPaths(project)
    _, _, pairs = _inputs(project)
    out = project / "grpo"
    result = rl_launch.launch(params, paths, stage="lc", seed=3, out_adapter_dir=out, init_adapter_dir=None,
                              log_path=project / "grpo.jsonl", verdict_dataset=None, verdict_rewards=None,
                              reason_pairs=pairs.head(4), reason_steps=1)
    assert result["summary"]["reason"]["steps"] == 1 and result["summary"]["processes"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    logs = (project / "grpo.jsonl").read_text().splitlines()
    assert len(logs) == 1 and '"phase": "reason"' in logs[0]
    shutil.rmtree(out)
    assert np.isfinite(result["steps"][0]["reward"])
