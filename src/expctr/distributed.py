"""Multi-process (data-parallel) training through `accelerate launch`: one params switch, rank 0 writes.

How a stage becomes N processes: the CLI asks `should_launch(params.distributed, stage)`; when the stage is
listed in `distributed.stages` and `num_processes > 1`, it re-runs itself as

    accelerate launch --multi_gpu --num_processes N [--num_machines M ...] -m expctr.cli <stage> <args>

and returns its exit status, so `dvc repro` and Dagster keep calling the plain `expctr <stage>`. accelerate's
torchrun-based launcher starts the N copies and sets RANK / LOCAL_RANK / WORLD_SIZE; inside them a trainer calls
`accelerator(device)`, which joins the process group (NCCL on GPUs; gloo when the device is "cpu") and wraps the
model in DistributedDataParallel. `--multi_gpu` is the launcher's name, not a GPU requirement: accelerate's
`--cpu` launcher starts several processes only through mpirun, while the torchrun launcher works on a CPU as
long as the program asks for the CPU (`Accelerator(cpu=True)` -> MULTI_CPU, gloo).

Rules the trainers follow:
- every process computes the same thing on its share of each global batch (the single-process order, see
  CTRData.shard_batches), so N processes reproduce one process up to float summation order;
- random draws that must differ per process (dropout) are seeded with `rank_seed(seed)`; the data order uses
  one generator seeded identically everywhere;
- only `is_main_process()` writes artifacts; the others return once training is done.

TRL's GRPOTrainer and transformers.Trainer create their own Accelerator from these same environment variables,
so an RL stage needs only to be listed in DISTRIBUTED_STAGES (expctr.config) and to write on the main process.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import TYPE_CHECKING

from expctr.errors import ExpCTRError

if TYPE_CHECKING:  # accelerate is imported only where a trainer needs it (it pulls in torch)
    from accelerate import Accelerator

    from expctr.config import DistributedParams

MACHINE_RANK_ENV = "EXPCTR_MACHINE_RANK"


def world_size() -> int:
    """Processes in this run (WORLD_SIZE, set by the launcher); 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_index() -> int:
    """This process's global rank (RANK, set by the launcher); 0 when not launched."""
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """True inside a process started by `accelerate launch` with more than one process."""
    return world_size() > 1


def is_main_process() -> bool:
    """The one process that writes artifacts and prints summaries."""
    return process_index() == 0


def rank_seed(seed: int) -> int:
    """Seed for draws that must differ per process (dropout masks); rank 0 keeps the single-process seed."""
    return seed + process_index()


def should_launch(dp: DistributedParams, stage: str) -> bool:
    """Whether `expctr <stage>` must re-run itself under `accelerate launch` (and is not already inside it)."""
    return stage in dp.stages and dp.num_processes > 1 and not launched()


def launch_command(dp: DistributedParams, program: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `program` (["-m", module, args...] or [script, args...])
    as `dp.num_processes` processes. Multi-machine runs read this machine's rank from EXPCTR_MACHINE_RANK."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", str(dp.num_processes), "--num_machines", str(dp.num_machines),
           "--main_process_port", str(dp.main_process_port),
           # precision is each trainer's own setting (TRL's bf16 flag); dynamo is not used
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    if dp.num_machines > 1:
        rank = os.environ.get(MACHINE_RANK_ENV)
        if rank is None or not rank.isdigit() or int(rank) >= dp.num_machines:
            raise ExpCTRError(f"distributed.num_machines is {dp.num_machines}: set {MACHINE_RANK_ENV} to this "
                              f"machine's rank (0..{dp.num_machines - 1}; 0 on {dp.main_process_ip}), "
                              f"found {rank!r}")
        cmd += ["--machine_rank", rank, "--main_process_ip", str(dp.main_process_ip)]
    return cmd + program


def relaunch(dp: DistributedParams, program: list[str]) -> int:
    """Run `program` under `accelerate launch` and return its exit status (non-zero if any process failed)."""
    cmd = launch_command(dp, program)
    print(f"expctr: {dp.num_processes} processes: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=False).returncode


def accelerator(device: str = "cpu") -> Accelerator:
    """An Accelerator for a data-parallel trainer: the launched process group, or one process when not launched.

    device "cpu" keeps the model on the CPU (gloo between processes); anything else lets accelerate place
    each process on its own GPU (NCCL). static_graph: the CTR models leave the same parameters unused on
    every step (e.g. the history-click embedding in LR), which plain DDP refuses without a per-step search
    of the autograd graph (find_unused_parameters).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=device == "cpu", kwargs_handlers=[DistributedDataParallelKwargs(static_graph=True)])
