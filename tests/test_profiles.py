"""Every params profile (profiles/*.yaml) is a valid params file, and its `dvc exp run -S` arguments, applied by
DVC's own override parser, give exactly the profile's parameters."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from support import REPO_ROOT, VENV_BIN

from expctr.config import Params, load_params

SCRIPT = REPO_ROOT / "scripts" / "profile_args.py"
PROFILES = sorted((REPO_ROOT / "profiles").glob("*.yaml"))
DVC_PYTHON = (VENV_BIN / "dvc").resolve().parent / "python"  # DVC lives in its own venv (scripts/setup.sh)


def profile_module():
    spec = importlib.util.spec_from_file_location("profile_args", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profile_params(profile) -> Params:
    mod = profile_module()
    return Params.model_validate(mod.merged(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()),
                                            mod.load_profile(profile)))


def test_the_gpu_and_multi_gpu_profiles_exist():
    assert {"gpu.yaml", "multi-gpu.yaml"} <= {p.name for p in PROFILES}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_set_arguments_through_dvc_give_the_profile(profile, tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, profile], capture_output=True, text=True, check=True).stdout
    argv = shlex.split(out)
    assert argv[::2] == ["-S"] * (len(argv) // 2) and len(argv) % 2 == 0
    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    subprocess.run([DVC_PYTHON, "-c", ("import sys; from dvc.utils.hydra import apply_overrides; "
                    "apply_overrides(sys.argv[1], sys.argv[2:])"), params, *argv[1::2]], check=True)
    assert load_params(params) == profile_params(profile)


def test_gpu_profile_becomes_set_arguments():
    out = subprocess.run([sys.executable, SCRIPT, REPO_ROOT / "profiles" / "gpu.yaml"], capture_output=True,
                         text=True, check=True).stdout.split()
    pairs = dict(a.split("=", 1) for a in out if a != "-S")
    assert out.count("-S") == len(pairs)
    assert pairs["llm.dtype"] == "bfloat16" and pairs["rl.bf16"] == "true" and pairs["llm.device"] == "cuda"


def test_multi_gpu_profile_is_the_gpu_profile_on_several_processes():
    gpu, multi = profile_params(REPO_ROOT / "profiles" / "gpu.yaml"), profile_params(REPO_ROOT / "profiles" /
                                                                                     "multi-gpu.yaml")
    assert multi.distributed.num_processes > 1 and "ctr_model" in multi.distributed.stages
    assert multi.ctr.device == "cuda" and multi.llm.dtype == "bfloat16"
    assert multi.ctr.batch_size == gpu.ctr.batch_size  # the global batch: same result as one GPU
    assert (multi.llm, multi.rl, multi.pairs) == (gpu.llm, gpu.rl, gpu.pairs)
    assert gpu.distributed.num_processes == 1


def test_profile_written_into_params_validates(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    subprocess.run([sys.executable, SCRIPT, REPO_ROOT / "profiles" / "multi-gpu.yaml", "--params", params,
                    "--write"], check=True)
    p = load_params(params)
    assert p.llm.dtype == "bfloat16" and p.rl.bf16 and p.pairs.test == profile_params(REPO_ROOT / "profiles" / "gpu.yaml").pairs.test
    assert p.distributed.num_processes == 4 and p.distributed.stages == ["ctr_model", "explainer_rl"]
    assert p.data.dataset == "ml-1m"  # untouched sections kept


def test_a_typo_in_a_profile_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl:\n  lc_stepz: 3\n")
    proc = subprocess.run([sys.executable, SCRIPT, bad], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "lc_stepz" in proc.stderr


def test_a_profile_that_extends_itself_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nctr: {threads: 1}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    proc = subprocess.run([sys.executable, SCRIPT, tmp_path / "a.yaml"], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "loops back" in proc.stderr


def test_an_invalid_distributed_setting_is_refused(tmp_path):
    bad = tmp_path / "two-machines.yaml"
    bad.write_text("distributed:\n  num_processes: 4\n  num_machines: 2\n")  # no address of rank 0
    proc = subprocess.run([sys.executable, SCRIPT, bad], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "main_process_ip" in proc.stderr
