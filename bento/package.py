"""Package the final model pair: register it in the BentoML model store, then build the Bento.

The `bento` DVC stage runs this (`python bento/package.py`). The model (`expctr_pair`) is labelled with the
git commit and the dvc.lock hashes of the stages it comes from, so a served prediction can be traced back
to the exact pipeline run. `bentoml containerize expctr:latest` then needs a Docker engine (not on this
machine); the build config in bentofile.yaml is what it uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import bentoml
import yaml

from expctr.config import load_params
from expctr.io import write_json
from expctr.serving.bundle import PINNED_MODEL as PIN
from expctr.serving.bundle import dir_digest, dvc_lock_hashes, git_commit, write_bundle

HERE = Path(__file__).resolve().parent


def _label(value: str) -> str:
    """BentoML label values: at most 63 chars of [A-Za-z0-9_.-]."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:63]


LOCK = Path("requirements/project.lock.txt")
DVC_LOCK = Path("requirements/dvc.lock.txt")
IMAGE_SETUP = Path("docker/bento_setup.sh")


def locked_packages(checkout: Path) -> list[str]:
    """Every pin of the project lock: the Bento gets the environment setup.sh installs and the tests ran with
    (dagster and GX included, so the image can run pipeline stages as well as serve)."""
    pin = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*(?:\[[^\]]*\])?==[^\s#;]+(?:\s*;[^#]+)?)")
    lines = (pin.match(line) for line in (checkout / LOCK).read_text().splitlines())
    return [m.group(1).strip() for m in lines if m]


def torch_requirement(cache: Path) -> tuple[str, list[str]]:
    """The torch line of the Bento and the wheel files it needs.

    Default: the wheel pip finds for the installed torch version (the CPU wheel on these machines; PyPI's
    Linux wheel is a multi-GB CUDA build), shipped inside the Bento. EXPCTR_BENTO_TORCH=<requirement>
    (e.g. torch==2.13.0 for PyPI's CUDA build, the GPU image) puts that requirement in instead.
    """
    spec = os.environ.get("EXPCTR_BENTO_TORCH", "wheel")
    if spec != "wheel":
        return spec, []
    public = version("torch").split("+")[0]
    dest = cache / "wheels" / f"torch-{public}"
    found = sorted(dest.glob("torch-*.whl"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(dest), f"torch=={public}"], check=True)
        found = sorted(dest.glob("torch-*.whl"))
    if len(found) != 1:
        raise RuntimeError(f"expected one torch wheel in {dest}, found {[p.name for p in found]}")
    return f"./wheels/{found[0].name}", [str(found[0])]


def project_wheel(checkout: Path, dest: Path) -> Path:
    """A wheel of this checkout's `expctr` + `orchestration` packages (for `expctr <stage>` in the image),
    built from a copy so the checkout gets no build/ or egg-info litter."""
    with tempfile.TemporaryDirectory(prefix="expctr-wheel-") as tmp:
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(checkout / name, src / name)
        for name in ("src", "orchestration"):
            shutil.copytree(checkout / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        subprocess.run([str(Path(sys.executable).with_name("uv")), "build", "-q", "--wheel", "-o", str(dest),
                        str(src)], check=True)
    return next(dest.glob("expctr-*.whl"))


def add_locked_environment(config: dict, ctx: Path, checkout: Path, cache: Path) -> None:
    """Fill the Bento's python packages from the project lock (torch first) and give its image the project
    wheel and DVC's lock, which docker/bento_setup.sh (bentofile's `docker.setup_script`) installs, so the
    image also runs `expctr <stage>` and `dvc`."""
    torch_line, wheels = torch_requirement(cache)
    shipped = []
    for wheel in map(Path, wheels):  # BentoML takes wheels from inside the build context only
        (ctx / "python-wheels").mkdir(exist_ok=True)
        try:
            os.link(wheel, ctx / "python-wheels" / wheel.name)
        except OSError:  # another filesystem
            shutil.copy2(wheel, ctx / "python-wheels" / wheel.name)
        shipped.append(f"python-wheels/{wheel.name}")
    config["python"].update(packages=[torch_line, *locked_packages(checkout)], wheels=shipped, lock_packages=False)
    project_wheel(checkout, ctx / "wheels")
    (ctx / DVC_LOCK).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkout / DVC_LOCK, ctx / DVC_LOCK)
    (ctx / IMAGE_SETUP).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkout / IMAGE_SETUP, ctx / IMAGE_SETUP)
    config["include"] = [*config["include"], "wheels/expctr-*.whl", str(DVC_LOCK)]


def register_model(root: Path, params) -> tuple[str, dict]:
    commit = git_commit(root)
    lock = dvc_lock_hashes(root, ["ctr_model", "base_llm", f"explainer_round_{params.rounds}"])
    labels = {"git_commit": _label(commit), "project": "expctr"}
    for key, md5 in lock.items():  # "stage:path" -> label dvc_<stage>_<last path part>
        stage, path = key.split(":", 1)
        labels[_label(f"dvc_{stage}_{Path(path).name}")] = _label(md5)
    with bentoml.models.create(params.serving.model_name, labels=labels, module="expctr.serving",
                               metadata={"git_commit": commit, "dvc_lock": lock}) as model:
        manifest = write_bundle(model.path, root, params)
    return str(model.tag), manifest


def build_bento(root: Path, params, model_tag: str, version: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="expctr-bento-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(HERE / "service.py", ctx / "service.py")
        (ctx / PIN).write_text(f"{model_tag}\n")  # the service serves this model, not the store's latest
        shutil.copytree(HERE.parent / "src" / "expctr", ctx / "expctr",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # the library of this checkout
        config = yaml.safe_load((HERE / "bentofile.yaml").read_text())
        config["include"] = [*config["include"], PIN]
        add_locked_environment(config, ctx, HERE.parent, root / params.data.cache_dir)
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        with contextlib.chdir(ctx):  # BentoML takes wheels and the setup script only from under the cwd
            bento = bentoml.bentos.build_bentofile(str(ctx / "bentofile.yaml"), build_ctx=str(ctx),
                                                   name=params.serving.bento_name, version=version,
                                                   labels={"model": _label(model_tag)})
    return str(bento.tag)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--root", default=".", help="project root (default: .)")
    ap.add_argument("--no-build", action="store_true", help="register the model only; skip `bentoml build`")
    ap.add_argument("--metrics", default="metrics/bento.json", help="where to write the packaging record")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    params = load_params(root / args.params)
    started = time.perf_counter()
    model_tag, manifest = register_model(root, params)
    model_s = time.perf_counter() - started
    print(f"registered model {model_tag}")
    bento_tag = None
    if not args.no_build:
        bento_tag = build_bento(root, params, model_tag)
        print(f"built bento {bento_tag}   serve it with: bentoml serve {bento_tag}")
    model_dir = Path(bentoml.models.get(model_tag).path)
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    write_json(root / args.metrics, {
        "model_tag": model_tag, "bento_tag": bento_tag, "git_commit": manifest["git_commit"],
        "dvc_lock": manifest["dvc_lock"], "versions": manifest["versions"], "model_bytes": size,
        "model_digest": dir_digest(model_dir / "ctr")[:16], "n_items": manifest["n_items"],
        "n_users": manifest["n_users"], "register_seconds": round(model_s, 2),
        "seconds": round(time.perf_counter() - started, 2),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
