"""LLM-test fixtures over the shared `base_model_dir` (tests/conftest.py): tokenizer and model, loaded once."""

from __future__ import annotations

import pytest
from support import TEST_THREADS


@pytest.fixture(scope="session")
def tokenizer(base_model_dir):
    from expctr.llm.base_model import load_tokenizer

    return load_tokenizer(base_model_dir)


@pytest.fixture(scope="session")
def model(base_model_dir):
    from expctr.llm.base_model import load_model

    return load_model(base_model_dir, dtype="float32", device="cpu", threads=TEST_THREADS)
