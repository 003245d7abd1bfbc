"""Package the final model pair: register it in the BentoML model store, then build the Bento.

The `bento` DVC stage runs this (`python bento/package.py`). The model (`expctr_pair`) is labelled with the
git commit and the dvc.lock hashes of the stages it comes from, so a served prediction can be traced back
to the exact pipeline run. `bentoml containerize expctr:latest` then needs a Docker engine (not on this
machine); the build config in bentofile.yaml is what it uses.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

import bentoml
import yaml

from expctr.config import load_params
from expctr.io import write_json
from expctr.serving.bundle import dir_digest, dvc_lock_hashes, git_commit, write_bundle

HERE = Path(__file__).resolve().parent


def _label(value: str) -> str:
    """BentoML label values: at most 63 chars of [A-Za-z0-9_.-]."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:63]


SERVING_ONLY_EXCLUDED = ("dagster", "dagster-webserver", "great-expectations", "torch")


def runtime_packages(checkout: Path) -> list[str]:
    """pyproject.toml's dependencies the service needs (orchestration and data-check packages left out)."""
    import tomllib

    deps = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["dependencies"]
    name = re.compile(r"^[A-Za-z0-9_.-]+")
    return [d for d in deps if name.match(d).group(0).lower() not in SERVING_ONLY_EXCLUDED]


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
        shutil.copytree(HERE.parent / "src" / "expctr", ctx / "expctr",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # the library of this checkout
        config = yaml.safe_load((HERE / "bentofile.yaml").read_text())
        config["python"]["packages"] = [*config["python"]["packages"], *runtime_packages(HERE.parent)]
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
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
