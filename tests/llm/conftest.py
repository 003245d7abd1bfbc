"""Shared fixtures: the embedded base model is prepared ONCE into the repo's cache and reused across runs.

Threads come from EXPCTR_TEST_THREADS (default 1): CI has 2 shared cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".cache" / "expctr"
TEST_MODEL_DIR = CACHE_DIR / "test-base-model"
THREADS = int(os.environ.get("EXPCTR_TEST_THREADS", "1"))


@pytest.fixture(scope="session")
def base_model_info() -> dict:
    from expctr.llm.base_model import prepare_base_model

    return prepare_base_model(TEST_MODEL_DIR, CACHE_DIR, source="embedded", dtype="float32", threads=THREADS)


@pytest.fixture(scope="session")
def base_model_dir(base_model_info) -> Path:
    return TEST_MODEL_DIR


@pytest.fixture(scope="session")
def tokenizer(base_model_dir):
    from expctr.llm.base_model import load_tokenizer

    return load_tokenizer(base_model_dir)


@pytest.fixture(scope="session")
def model(base_model_dir):
    from expctr.llm.base_model import load_model

    return load_model(base_model_dir, dtype="float32", device="cpu", threads=THREADS)
