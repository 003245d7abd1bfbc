"""CTR models: output shapes on a hand-built batch, and each model learns on a small real slice."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from expctr.config import CTRParams
from expctr.ctr.batch import CTRData
from expctr.ctr.models import MODELS, build_model
from expctr.ctr.popularity import Popularity
from expctr.ctr.trainer import binary_metrics, fit, predict
from expctr.data.features import FeatureMap

K, G = 4, 3


def toy_fmap() -> FeatureMap:
    vocab = lambda n, p: {f"{p}{i}": i + 2 for i in range(n)}
    return FeatureMap({"user": vocab(5, "u"), "item": vocab(7, "i"), "gender": vocab(2, "g"), "age": vocab(3, "a"),
                       "occupation": vocab(4, "o"), "decade": vocab(2, "d"), "genre": vocab(3, "x")}, K, G, 4.0)


def toy_batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fields": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 9, (n,), generator=g),
                               *[torch.randint(0, 4, (n,), generator=g) for _ in range(4)]], dim=1),
        "genres": torch.tensor([[2, 3, 0]] * n),
        "hist_items": torch.tensor([[0, 0, 3, 4]] * n),
        "hist_clicks": torch.tensor([[0, 0, 2, 1]] * n),
        "labels": torch.ones(n),
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_returns_one_logit_per_row_and_backprops(name):
    model = build_model(name, toy_fmap(), CTRParams(embed_dim=4, mlp_dims=[8], cross_layers=2))
    out = model(toy_batch())
    assert out.shape == (6,) and out.dtype == torch.float32
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_din_ignores_padded_history():
    model = build_model("din", toy_fmap(), CTRParams(embed_dim=4, mlp_dims=[8])).eval()
    b = toy_batch()
    other = {**b, "hist_items": torch.tensor([[5, 6, 3, 4]] * 6)}  # different items in padded slots
    assert torch.allclose(model(b), model(other))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown CTR model 'xgb'"):
        build_model("xgb", toy_fmap(), CTRParams())


def test_popularity_smooths_towards_global_rate():
    pop = Popularity(strength=2).fit(np.array([2, 2, 3]), np.array([1, 1, 0]))
    assert pop.prior == pytest.approx(2 / 3)
    assert pop.predict(np.array([2, 3, 99])) == pytest.approx([(2 + 4 / 3) / 4, (0 + 4 / 3) / 3, 2 / 3])


def test_binary_metrics_match_hand_computed_values():
    m = binary_metrics(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.5]))
    assert m["auc"] == pytest.approx(0.75)
    assert m["logloss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.5])))


@pytest.fixture(scope="module")
def real_slice(tiny_real_project):
    fdir = tiny_real_project / "data" / "features"
    fmap = FeatureMap.load(fdir / "feature_map.json")
    return fmap, {s: CTRData.from_frame(pl.read_parquet(fdir / f"{s}.parquet")) for s in ("train", "valid", "test")}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_learns_on_a_real_slice(real_slice, name):
    torch.set_num_threads(2)
    fmap, data = real_slice
    p = CTRParams(max_epochs=4, patience=4, batch_size=256, lr=0.005, embed_dim=8, mlp_dims=[32])
    model = build_model(name, fmap, p)
    before = binary_metrics(data["valid"].labels.numpy(), predict(model, data["valid"], 1024))["auc"]
    res = fit(model, data["train"], data["valid"], p, seed=0, desc=name)
    after = binary_metrics(data["valid"].labels.numpy(), predict(model, data["valid"], 1024))["auc"]
    assert after == pytest.approx(res.best_valid_auc)  # best epoch's weights restored
    assert after > 0.62 and after > before + 0.05, (before, after, res.curve)


def test_training_is_deterministic_by_seed(real_slice):
    fmap, data = real_slice
    p = CTRParams(max_epochs=1, batch_size=512, embed_dim=4, mlp_dims=[8])
    outs = []
    for _ in range(2):
        model = build_model("deepfm", fmap, p, seed=7)
        fit(model, data["train"], data["valid"], p, seed=7)
        outs.append(predict(model, data["test"], 1024))
    np.testing.assert_array_equal(outs[0], outs[1])
