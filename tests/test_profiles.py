"""The GPU profile is valid params and turns into `dvc exp run -S` arguments."""

from __future__ import annotations

import shutil
import subprocess
import sys

from support import REPO_ROOT

from expctr.config import load_params

SCRIPT = REPO_ROOT / "scripts" / "profile_args.py"


def test_gpu_profile_becomes_set_arguments():
    out = subprocess.run([sys.executable, SCRIPT, REPO_ROOT / "profiles" / "gpu.yaml"], capture_output=True,
                         text=True, check=True).stdout.split()
    pairs = dict(a.split("=", 1) for a in out if a != "-S")
    assert out.count("-S") == len(pairs)
    assert pairs["llm.dtype"] == "bfloat16" and pairs["rl.bf16"] == "true" and pairs["llm.device"] == "cuda"


def test_profile_written_into_params_validates(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    subprocess.run([sys.executable, SCRIPT, REPO_ROOT / "profiles" / "gpu.yaml", "--params", params, "--write"],
                   check=True)
    p = load_params(params)
    assert p.llm.dtype == "bfloat16" and p.rl.bf16 and p.pairs.test == 2000
    assert p.data.dataset == "ml-1m"  # untouched sections kept


def test_a_typo_in_a_profile_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl:\n  lc_stepz: 3\n")
    proc = subprocess.run([sys.executable, SCRIPT, bad], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "lc_stepz" in proc.stderr
