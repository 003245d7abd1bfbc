"""One RL stage of a round as N data-parallel processes under `accelerate launch` (`expctr.distributed`).

Why the stage and not the round: a round also generates explanations, trains ExpCTR-Aug and evaluates, which
must not run N times; only its two RL stages are training that data parallelism speeds up. So the round stays
one process and, when `distributed.num_processes > 1` and "explainer_rl" is in `distributed.stages`, runs each
RL stage as

    accelerate launch --multi_gpu --num_processes N -m expctr.explainer.rl_launch SPEC.json

The stage's inputs (verdict prompts, their exact rewards, the GRPO pairs) go through a temporary directory; every
process rebuilds the stage reward from the params (the frozen judge, the ID model; `stage_rewards`),
the dense verdict step splits each batch over the processes and TRL's GRPOTrainer splits each generation batch,
DDP averages the gradients, and process 0 writes the adapter, the log and the result the round reads back.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from expctr.errors import ExpCTRError


def launch(params, paths, *, stage: str, seed: int, out_adapter_dir: Path, init_adapter_dir: Path | None,
           log_path: Path, verdict_dataset, verdict_rewards, reason_pairs, reason_steps: int,
           params_file: str = "params.yaml") -> dict[str, Any]:
    """Run the stage as `params.distributed.num_processes` processes; returns what `run_rl_stage` returns."""
    from expctr import distributed

    with tempfile.TemporaryDirectory(prefix="expctr-rl-") as tmp:
        tmp = Path(tmp)
        spec: dict[str, Any] = {
            "root": str(paths.root), "params": params_file, "stage": stage, "seed": int(seed),
            "out_adapter_dir": str(out_adapter_dir), "log_path": str(log_path),
            "init_adapter_dir": None if init_adapter_dir is None else str(init_adapter_dir),
            "reason_steps": int(reason_steps),
            "result": str(tmp / "result.json"),
        }
        if verdict_dataset is not None:
            verdict_dataset.save_to_disk(str(tmp / "verdict"))
            (tmp / "verdict_rewards.json").write_text(json.dumps([list(verdict_rewards[0]),
                                                                  list(verdict_rewards[1])]))
            spec["verdict"] = str(tmp / "verdict")
        if reason_pairs is not None and reason_steps > 0:
            reason_pairs.write_parquet(tmp / "reason.parquet")
            spec["reason"] = str(tmp / "reason.parquet")
        (tmp / "spec.json").write_text(json.dumps(spec))
        code = distributed.relaunch(params.distributed, ["-m", "expctr.explainer.rl_launch", str(tmp / "spec.json")])
        if code != 0:
            raise ExpCTRError(f"the {stage.upper()} stage under accelerate launch failed (exit status {code})")
        return json.loads((tmp / "result.json").read_text())


def run_spec(spec_path: str | Path) -> dict[str, Any]:
    """Inside each launched process: rebuild the stage's inputs and reward, train; process 0 writes the result."""
    import datasets
    import polars as pl

    from expctr import distributed
    from expctr.config import load_params
    from expctr.explainer.rl import run_rl_stage
    from expctr.explainer.stage_rewards import build_stage_reward
    from expctr.paths import ProjectPaths

    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    params = load_params(root / spec["params"])
    paths = ProjectPaths(root)
    reward = build_stage_reward(spec["stage"], params, paths)
    verdict = datasets.load_from_disk(spec["verdict"]) if "verdict" in spec else None
    rewards = json.loads((Path(spec["verdict"]).parent / "verdict_rewards.json").read_text()) if verdict else None
    reason = pl.read_parquet(spec["reason"]) if "reason" in spec else None
    result = run_rl_stage(paths.base_llm, spec["out_adapter_dir"], reward, params.rl, params.llm, spec["seed"],
                          verdict_dataset=verdict, verdict_rewards=rewards, reason_pairs=reason,
                          reason_steps=spec["reason_steps"], init_adapter_dir=spec["init_adapter_dir"],
                          log_path=spec["log_path"])
    if distributed.is_main_process():
        result["summary"]["processes"] = distributed.world_size()
        Path(spec["result"]).write_text(json.dumps(result, default=str))
    return result


if __name__ == "__main__":  # `accelerate launch -m expctr.explainer.rl_launch SPEC.json`
    try:
        run_spec(sys.argv[1])
    except ExpCTRError as exc:
        print(f"expctr rl stage: {exc}", file=sys.stderr)
        sys.exit(2)
