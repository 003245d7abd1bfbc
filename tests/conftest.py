"""Shared fixtures: throw-away project directories on tiny data (helpers live in support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import SHARED_CACHE, TINY_SLICE, make_params, run_cli, write_ml1m_dat  # noqa: F401


def make_dat_project(root: Path) -> Path:
    """A project dir whose source is a small ML-1M `.dat` dataset, with fast CTR settings."""
    write_ml1m_dat(root / "source")
    make_params(root, **{
        "data.source": "files", "data.format": "ml1m_dat", "data.paths": {"directory": "source"},
        "ctr.max_epochs": 2, "ctr.batch_size": 64, "ctr.threads": 1, "ctr.mlp_dims": [16],
        "validation.label_rate_bounds": [0.05, 0.95],
    })
    return root


@pytest.fixture
def dat_project(tmp_path: Path) -> Path:
    return make_dat_project(tmp_path)


@pytest.fixture(scope="session")
def built_dat_project(tmp_path_factory) -> Path:
    """A `.dat` project with raw_data and features already run; copy it before changing anything."""
    root = make_dat_project(tmp_path_factory.mktemp("built_dat"))
    run_cli(root, "raw-data")
    run_cli(root, "features")
    return root


@pytest.fixture(scope="session")
def tiny_real_project(tmp_path_factory) -> Path:
    """raw_data + features on a seeded 150-user slice of the real embedded ML-1M (fetched from PyPI once)."""
    root = tmp_path_factory.mktemp("tiny_real")
    make_params(root, **TINY_SLICE)
    run_cli(root, "raw-data")
    run_cli(root, "features")
    return root


