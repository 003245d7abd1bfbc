"""Serving fixtures: the tiny two-round project packaged as a bundle, a registered model, the service."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT, TEST_THREADS

from expctr.config import load_params


def load_bento_module(name: str):
    """Import a module from bento/ (not a package: it is the Bento's build context)."""
    spec = importlib.util.spec_from_file_location(f"expctr_bento_{name}", REPO_ROOT / "bento" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def serving_bundle(tiny_rounds_project: Path, tmp_path_factory) -> Path:
    from expctr.serving.bundle import write_bundle

    dest = tmp_path_factory.mktemp("bundle") / "pair"
    write_bundle(dest, tiny_rounds_project, load_params(tiny_rounds_project / "params.yaml"))
    return dest


@pytest.fixture(scope="session")
def model_pair(serving_bundle: Path):
    from expctr.serving.predictor import ModelPair

    return ModelPair(serving_bundle, threads=TEST_THREADS)


@pytest.fixture(scope="session")
def registered_model(tiny_rounds_project: Path) -> str:
    """The tiny pair registered in this session's BentoML store (BENTOML_HOME is set in tests/conftest.py)."""
    package = load_bento_module("package")
    tag, _ = package.register_model(tiny_rounds_project, load_params(tiny_rounds_project / "params.yaml"))
    return tag


@pytest.fixture(scope="session")
def service_module(registered_model: str):
    return load_bento_module("service")


@pytest.fixture(scope="session")
def http(service_module):
    """Starlette TestClient over `ExpCTR.to_asgi()` (lifespan run: the service instance is created)."""
    from starlette.testclient import TestClient

    with TestClient(service_module.ExpCTR.to_asgi(), raise_server_exceptions=False) as client:
        yield client
