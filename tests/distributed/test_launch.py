"""expctr.distributed: when a stage relaunches itself, the `accelerate launch` command it builds, rank queries."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError
from support import TINY_SLICE, VENV_BIN, make_params

from expctr import distributed
from expctr.config import DistributedParams


@pytest.fixture
def not_launched(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", distributed.MACHINE_RANK_ENV):
        monkeypatch.delenv(var, raising=False)


def test_one_machine_command_runs_the_stage_module_on_n_processes(not_launched):
    cmd = distributed.launch_command(DistributedParams(num_processes=2), ["-m", "expctr.cli", "ctr-model"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    flags = dict(zip(cmd[4:-3:2], cmd[5:-3:2]))
    assert cmd[3] == "--multi_gpu"  # accelerate's torchrun launcher; gloo when the trainer asks for the CPU
    assert flags["--num_processes"] == "2" and flags["--num_machines"] == "1"
    assert flags["--main_process_port"] == "0"  # any free port: two runs on one machine do not collide
    assert "--machine_rank" not in cmd
    assert cmd[-3:] == ["-m", "expctr.cli", "ctr-model"]


def test_several_machines_take_this_machines_rank_from_the_environment(not_launched, monkeypatch):
    dp = DistributedParams(num_processes=8, num_machines=2, main_process_ip="10.0.0.1", main_process_port=29500)
    with pytest.raises(Exception, match="EXPCTR_MACHINE_RANK"):
        distributed.launch_command(dp, ["-m", "expctr.cli", "ctr-model"])
    monkeypatch.setenv(distributed.MACHINE_RANK_ENV, "2")  # out of range for two machines
    with pytest.raises(Exception, match=r"0\.\.1"):
        distributed.launch_command(dp, ["-m", "expctr.cli", "ctr-model"])
    monkeypatch.setenv(distributed.MACHINE_RANK_ENV, "1")
    cmd = distributed.launch_command(dp, ["-m", "expctr.cli", "ctr-model"])
    flags = dict(zip(cmd[4:-3:2], cmd[5:-3:2]))
    assert flags["--machine_rank"] == "1" and flags["--main_process_ip"] == "10.0.0.1"
    assert flags["--num_processes"] == "8" and flags["--num_machines"] == "2" and flags["--main_process_port"] == "29500"


def test_should_launch_only_listed_stages_with_several_processes_and_never_twice(not_launched, monkeypatch):
    assert not distributed.should_launch(DistributedParams(), "ctr_model")
    assert distributed.should_launch(DistributedParams(num_processes=2), "ctr_model")
    assert not distributed.should_launch(DistributedParams(num_processes=2, stages=[]), "ctr_model")
    assert not distributed.should_launch(DistributedParams(num_processes=2), "features")
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside the launched processes
    assert not distributed.should_launch(DistributedParams(num_processes=2), "ctr_model")


def test_rank_queries_and_per_rank_seed(not_launched, monkeypatch):
    assert distributed.is_main_process() and distributed.rank_seed(42) == 42 and not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.launched() and not distributed.is_main_process() and distributed.rank_seed(42) == 43


def test_invalid_distributed_params_are_refused():
    with pytest.raises(ValidationError, match="main_process_ip"):
        DistributedParams(num_processes=4, num_machines=2)
    with pytest.raises(ValidationError, match="multiple of num_machines"):
        DistributedParams(num_processes=3, num_machines=2, main_process_ip="10.0.0.1", main_process_port=29500)
    with pytest.raises(ValidationError, match="ctr_model"):
        DistributedParams(stages=["features"])  # only stages whose trainer runs data-parallel


def test_the_stage_cli_reports_a_missing_machine_rank_before_launching(tmp_path, not_launched):
    make_params(tmp_path, **{**TINY_SLICE, "distributed.num_processes": 4, "distributed.num_machines": 2,
                             "distributed.main_process_ip": "127.0.0.1", "distributed.main_process_port": 29500})
    proc = subprocess.run([str(VENV_BIN / "expctr"), "ctr-model", "--root", str(tmp_path)], check=False,
                          capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "EXPCTR_MACHINE_RANK" in proc.stderr and "Traceback" not in proc.stderr
