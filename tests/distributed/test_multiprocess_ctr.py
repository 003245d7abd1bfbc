"""The ctr_model stage as 2 processes (accelerate launch, DDP over gloo) equals the 1-process stage, and only
process 0 writes.

Compared, per model: the per-epoch training loss, the best epoch, test AUC / log-loss and every test prediction
of the saved checkpoints. Why these tolerances: both runs take the same optimiser steps on the same global
batches in the same order (CTRData.shard_batches), and DDP's average of the two halves' gradients is the
batch's mean-loss gradient up to float summation order. Dropout is off (ctr.dropout: 0), since each process
draws its own dropout masks. What remains is rounding, which Adam amplifies for weights whose gradient nearly
cancels: DIN moves by up to 2.5e-3 in a test probability (mean 1.7e-4) — exactly as far as a single process
moves when it only sums each batch's gradient in two halves — and LR / DeepFM / DCNv2 by about 1e-7. Broken
data parallelism is far outside these bounds (measured on this slice: processes that do not synchronise
gradients, or that each take a full batch of their own, move test probabilities by 0.05-0.45 on average
0.01-0.07, and training losses by 0.006-0.08).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from support import TINY_SLICE, VENV_BIN, make_params

pytestmark = pytest.mark.multiprocess

MODELS = ["popularity", "lr", "deepfm", "dcnv2", "din"]
# Records every file-system write under EXPCTR_AUDIT_ROOT made by any Python process of the run (the CLI, the
# accelerate launcher and each rank), one log per process, through Python's audit hooks.
AUDIT_SITECUSTOMIZE = '''
import os, sys
_root = os.environ.get("EXPCTR_AUDIT_ROOT")
if _root:
    _log = open(os.path.join(os.environ["EXPCTR_AUDIT_LOGS"], f"rank-{os.environ.get('RANK', 'none')}-{os.getpid()}.log"),
                "a", buffering=1)
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _audit(event, args):
        if event == "open":
            path, mode, flags = args
            if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                    or (mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)):
                return
        elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.copyfile",
                           "shutil.move", "os.symlink", "os.link", "os.truncate"):
            return
        for path in args[:2] if event in ("os.rename", "shutil.copyfile", "shutil.move") else args[:1]:
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(path))
                if path.startswith(_root):
                    _log.write(f"{event} {os.path.relpath(path, _root)}\\n")

    sys.addaudithook(_audit)
'''


def stage_project(root: Path, features_from: Path, processes: int) -> Path:
    root.mkdir()
    shutil.copytree(features_from / "data", root / "data")
    make_params(root, **{**TINY_SLICE, "ctr.compare": MODELS, "ctr.dropout": 0.0, "ctr.threads": 1,
                         "distributed.num_processes": processes})
    return root


def run_stage(root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(VENV_BIN / "expctr"), "ctr-model", "--root", str(root)], check=False,
                          capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


def test_two_processes_train_the_single_process_models_and_only_rank_0_writes(tiny_real_project, tmp_path):
    single = stage_project(tmp_path / "one", tiny_real_project, 1)
    double = stage_project(tmp_path / "two", tiny_real_project, 2)
    run_stage(single)
    hooks, logs = tmp_path / "audit", tmp_path / "audit-logs"
    hooks.mkdir(), logs.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT_SITECUSTOMIZE)
    proc = run_stage(double, {"PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
                              "EXPCTR_AUDIT_ROOT": str(double), "EXPCTR_AUDIT_LOGS": str(logs)})
    assert "accelerate.commands.launch" in proc.stderr and "--num_processes 2" in proc.stderr

    # only rank 0 wrote: each rank's log (one per process; the CLI and launcher carry no RANK)
    writes = {}
    for log in logs.glob("rank-*.log"):
        writes.setdefault(log.name.split("-")[1], []).extend(log.read_text().splitlines())
    assert {"0", "1"} <= set(writes), f"both ranks ran under the audit hook: {sorted(writes)}"
    assert writes["1"] == [], f"rank 1 wrote: {writes['1'][:10]}"
    assert writes.get("none", []) == [], f"the launcher wrote: {writes['none'][:10]}"
    written = "\n".join(writes["0"])
    assert "os.rename models/ctr" in written and "os.rename metrics/ctr.json" in written, written[:2000]

    compare_runs(single, double)


def compare_runs(single: Path, double: Path) -> None:
    import torch

    from expctr.ctr.batch import CTRData
    from expctr.ctr.checkpoint import load_id_model
    from expctr.ctr.trainer import predict
    from expctr.data.features import FeatureMap

    m1, m2 = (json.loads((root / "metrics" / "ctr.json").read_text())["models"] for root in (single, double))
    assert m1["popularity"] == {**m2["popularity"], "train_seconds": m1["popularity"]["train_seconds"]}
    fmap = FeatureMap.load(single / "models" / "ctr" / "feature_map.json")
    test = CTRData.from_frame(pl.read_parquet(single / "data" / "features" / "test.parquet"))
    torch.set_num_threads(1)
    for name in MODELS[1:]:
        a, b = m1[name], m2[name]
        assert a["best_epoch"] == b["best_epoch"] and a["epochs_run"] == b["epochs_run"], name
        assert abs(a["test_auc"] - b["test_auc"]) < 1e-3 and abs(a["test_logloss"] - b["test_logloss"]) < 1e-3, name
        c1, c2 = (pl.read_csv(root / "metrics" / "ctr_training" / f"{name}.csv") for root in (single, double))
        np.testing.assert_allclose(c2["train_loss"].to_numpy(), c1["train_loss"].to_numpy(), rtol=1e-4,
                                   err_msg=name)
        p1, p2 = (predict(load_id_model(root / "models" / "ctr" / f"{name}.pt", fmap), test, 4096)
                  for root in (single, double))
        diff = np.abs(p1 - p2)
        assert diff.max() < 1e-2 and diff.mean() < 1e-3, (name, diff.max(), diff.mean())
        if name != "din":  # no near-cancelling gradients for Adam to amplify: rounding level
            assert diff.max() < 1e-5, (name, diff.max())
