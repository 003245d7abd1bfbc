"""Explainer-test fixtures: the real embedded base model, prepared ONCE into the repo's shared test cache.

Same directory and settings as tests/llm/conftest.py (`.cache/expctr/test-base-model`), so both test packages
reuse one conversion. Threads come from EXPCTR_TEST_THREADS (default 1): CI has 2 shared cores.
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
def base_model_dir() -> Path:
    from expctr.llm.base_model import prepare_base_model

    prepare_base_model(TEST_MODEL_DIR, CACHE_DIR, source="embedded", dtype="float32", threads=THREADS)
    return TEST_MODEL_DIR
