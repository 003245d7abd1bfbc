"""`expctr <stage>`: the one command line every dvc.yaml stage calls.

Each command reads params.yaml (validated), runs one stage from `expctr.stages`, writes its artifacts
atomically and prints a short summary. Errors about data or settings are printed without a traceback
(exit status 2) so they read as instructions, not crashes.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from expctr.errors import ExpCTRError

app = typer.Typer(
    help="ExpCTR pipeline stages. Each command is one DVC stage (see dvc.yaml); run them through "
    "`dvc repro` to get caching and versioning, or directly for debugging.",
    no_args_is_help=True,
    add_completion=False,
)

ParamsOpt = typer.Option("params.yaml", "--params", "-p", help="Parameters file (relative to --root).")
CHECKOUT = Path(__file__).resolve().parents[2]  # the source checkout (editable install)
RootOpt = typer.Option(".", "--root", help="Project root: every stage path is relative to it.")


def _run(stage: str, root: Path, params_file: str, **kwargs) -> None:
    from expctr import distributed
    from expctr.config import load_params
    from expctr.paths import ProjectPaths

    try:
        root = root.resolve()
        params = load_params(root / params_file)
        if distributed.should_launch(params.distributed, stage):  # params `distributed`: N processes
            argv = [stage.replace("_", "-"), "--root", str(root), "--params", params_file]
            argv += [a for k, v in kwargs.items() for a in (f"--{k}", str(v))]
            raise typer.Exit(distributed.relaunch(params.distributed, ["-m", "expctr.cli", *argv]))
        run: Callable = importlib.import_module(f"expctr.stages.{stage}").run
        metrics = run(params, ProjectPaths(root), **kwargs)
    except ExpCTRError as exc:
        typer.secho(f"expctr {stage.replace('_', '-')}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    if not distributed.is_main_process():
        return  # the main process prints the summary (and wrote the artifacts)
    headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    typer.echo(f"{stage}: done " + json.dumps(headline, default=str))


@app.command("raw-data")
def raw_data(root: Path = RootOpt, params: str = ParamsOpt) -> None:
    """Fetch the configured dataset (sha256-checked), parse it to data/raw/*.parquet, validate with GX."""
    _run("raw_data", root, params)


@app.command("features")
def features(root: Path = RootOpt, params: str = ParamsOpt) -> None:
    """Build labels, leakage-free histories, the time split and the feature map into data/features/."""
    _run("features", root, params)


@app.command("ctr-model")
def ctr_model(root: Path = RootOpt, params: str = ParamsOpt) -> None:
    """Train popularity, LR, DeepFM, DCNv2 and DIN; write models/ctr/ and metrics/ctr.json.

    With distributed.num_processes > 1 in the params it re-runs itself under `accelerate launch` as that many
    data-parallel processes (DDP; NCCL on GPUs, gloo on CPU); only process 0 writes."""
    _run("ctr_model", root, params)


@app.command("base-llm")
def base_llm(root: Path = RootOpt, params: str = ParamsOpt) -> None:
    """Convert the base LLM (embedded SmolLM2 GGUF, or llm.source) to safetensors in models/base_llm/."""
    _run("base_llm", root, params)


@app.command("llm-pairs")
def llm_pairs(root: Path = RootOpt, params: str = ParamsOpt) -> None:
    """Sample the (user, target) pairs the LLM stages use; score the zero-shot judge and history rules."""
    _run("llm_pairs", root, params)


@app.command("explainer-round")
def explainer_round(
    round: int = typer.Option(..., "--round", "-r", min=0,
                              help="Which round: 1..rounds (params.yaml), or 0 = evaluate the base explainer before any RL."),
    root: Path = RootOpt,
    params: str = ParamsOpt,
) -> None:
    """One ExpCTR round: LC-alignment RL -> explanations -> ExpCTR-Aug training -> IC-alignment RL."""
    _run("explainer_round", root, params, round=round)


@app.command("evaluation-report")
def evaluation_report(root: Path = RootOpt, params: str = ParamsOpt) -> None:
    """Evaluate every round on the LLM test pairs; write reports/evaluation/ and metrics/evaluation.json."""
    _run("evaluation_report", root, params)


@app.command("bento")
def bento(root: Path = RootOpt, params: str = ParamsOpt,
          build: bool = typer.Option(True, "--build/--no-build", help="Also run `bentoml build`.")) -> None:
    """Register the final model pair in the BentoML model store (labelled with the git commit and dvc.lock
    hashes) and build the Bento; writes metrics/bento.json. Runs bento/package.py, so this library never
    imports BentoML."""
    import subprocess

    root = root.resolve()
    script = next((p for p in (root / "bento" / "package.py", CHECKOUT / "bento" / "package.py") if p.exists()), None)
    if script is None:
        typer.secho("expctr bento: bento/package.py not found (run from the ExpCTR checkout)", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(2)
    cmd = [sys.executable, str(script), "--root", str(root), "--params", params] + ([] if build else ["--no-build"])
    raise typer.Exit(subprocess.run(cmd, check=False).returncode)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # `accelerate launch -m expctr.cli <stage>` (expctr.distributed)
    main()
