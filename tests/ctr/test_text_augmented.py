"""ExpCTR-Aug: starts as the ID model exactly, keeps the base frozen, standardises and projects its input blocks,
learns from an informative input and keeps the ID model on noise."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import torch
from support import toy_feature_map

from expctr.config import CTRParams, TextCTRParams
from expctr.ctr.batch import CTRData
from expctr.ctr.models import MODELS, build_model
from expctr.ctr.text_augmented import (
    BaggedTextCTR,
    TextAugmentedCTR,
    aug_probability,
    batch_from_columns,
    load_text_ctr,
    save_text_ctr,
    train_text_ctr,
    with_text,
)
from expctr.ctr.trainer import binary_metrics, fit, predict
from expctr.data.features import FeatureMap

K, G, E = 4, 3, 12
BLOCKS = [("facts", 2), ("text", E - 2)]  # a narrow block as it is, a wide one projected


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def toy_fmap() -> FeatureMap:
    return toy_feature_map(K, G)


def toy_data(n: int = 64, seed: int = 0) -> CTRData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g).float()
    text = torch.randn(n, E, generator=g) + 2.0 * labels.unsqueeze(1)  # informative text
    return CTRData(
        fields=torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 9, (n,), generator=g),
                            *[torch.randint(0, 4, (n,), generator=g) for _ in range(4)]], dim=1),
        genres=torch.randint(0, 5, (n, G), generator=g),
        hist_items=torch.randint(0, 9, (n, K), generator=g),
        hist_clicks=torch.randint(0, 3, (n, K), generator=g),
        labels=labels,
        text=text,
    )


SMALL = CTRParams(embed_dim=4, mlp_dims=[8], cross_layers=2, dropout=0.2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_untrained_aug_model_equals_the_id_model_exactly(name):
    base = build_model(name, toy_fmap(), SMALL, seed=0)
    aug = TextAugmentedCTR(base, BLOCKS, proj_dim=3, hidden=[5])
    batch = toy_data().take(torch.arange(16))
    aug.eval()
    assert torch.equal(aug(batch), base(batch))
    aug.train()  # a frozen base stays in eval mode: no dropout noise on its logit
    assert not base.training
    assert torch.equal(aug(batch), base.eval()(batch))
    assert aug.base_name == name


def test_frozen_base_is_unchanged_by_training_and_the_head_learns():
    data = toy_data(128)
    base = build_model("deepfm", toy_fmap(), SMALL, seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tp = TextCTRParams(proj_dim=4, hidden=[8], max_epochs=3, patience=3, lr=0.01, batch_size=32)
    aug, res = train_text_ctr(base, BLOCKS, data, toy_data(64, seed=1), tp, seed=0)
    for k, v in aug.base.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert aug.head[-1].weight.abs().sum() > 0
    assert len(res.curve) >= 1 and res.best_valid_auc > 0.7
    # standardisation comes from the training inputs
    torch.testing.assert_close(aug.mean, data.text.double().mean(0).float())
    torch.testing.assert_close(aug.std, data.text.double().std(0).float())


def test_forward_by_hand():
    """logit = f_id + head([f_id, n(facts), P n(text)]) with n the stored standardisation."""
    base = build_model("lr", toy_fmap(), SMALL, seed=0).eval()
    mean, std = [0.5] * E, [2.0] * E
    aug = TextAugmentedCTR(base, BLOCKS, proj_dim=3, hidden=[], mean=mean, std=std).eval()
    torch.nn.init.normal_(aug.head[-1].weight)
    batch = toy_data(8).take(torch.arange(8))
    u = (batch["text"] - 0.5) / 2.0
    f = base(batch)
    x = torch.cat([f[:, None], u[:, :2], aug.proj["text"](u[:, 2:])], dim=1)
    expected = f + aug.head[-1](x).squeeze(-1)
    torch.testing.assert_close(aug(batch), expected)
    assert "facts" not in aug.proj  # narrower than proj_dim: read as it is
    with pytest.raises(ValueError, match="expects 12 input columns"):
        aug({**batch, "text": batch["text"][:, :5]})


def test_save_load_round_trip_and_probability(tmp_path):
    fmap, data = toy_fmap(), toy_data(40)
    aug = TextAugmentedCTR(build_model("din", fmap, SMALL, seed=0), BLOCKS, proj_dim=3, hidden=[6, 4],
                           mean=[0.1] * E, std=[1.5] * E)
    torch.nn.init.normal_(aug.head[-1].weight)  # a non-trivial head
    save_text_ctr(tmp_path / "aug.pt", aug, SMALL, {"valid_auc": 0.5})
    loaded = load_text_ctr(tmp_path / "aug.pt", fmap)
    assert loaded.config() == aug.config() and loaded.base_name == "din"
    probs = aug_probability(loaded, data)
    np.testing.assert_array_equal(probs, aug_probability(aug, data))
    np.testing.assert_allclose(probs, predict(aug, data, batch_size=7), rtol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        with_text(data, np.zeros((3, E), dtype=np.float32))


def _random_head(base, seed: int, mean: float = 0.0) -> TextAugmentedCTR:
    torch.manual_seed(seed)
    aug = TextAugmentedCTR(base, BLOCKS, proj_dim=3, hidden=[5], mean=[mean] * E, std=[1.0 + seed] * E)
    torch.nn.init.normal_(aug.head[-1].weight)
    torch.nn.init.normal_(aug.head[-1].bias)
    return aug


def test_bag_adds_the_mean_of_its_heads_residuals_and_round_trips(tmp_path):
    """logit = f_id + mean_k g_k: the bag of three heads equals the mean of the heads' own logits (each is
    f_id + g_k), its members share one base, and a saved bag loads back to the same probabilities."""
    fmap, data = toy_fmap(), toy_data(30)
    base = build_model("din", fmap, SMALL, seed=0).eval()
    heads = [_random_head(copy.deepcopy(base), s, mean=0.1 * s) for s in range(3)]
    batch = next(iter(data.batches(30)))
    with torch.no_grad():
        by_head = torch.stack([h.eval()(batch) for h in heads])
        bag = BaggedTextCTR(heads).eval()
        torch.testing.assert_close(bag(batch), by_head.mean(0))
        assert not torch.allclose(by_head[0], by_head[1])  # the heads differ: the mean is not one of them
    assert all(m.base is bag.base for m in bag.members)
    assert bag.blocks == BLOCKS and bag.width == E and bag.base_name == "din"
    save_text_ctr(tmp_path / "bag.pt", bag, SMALL, {"valid_auc": 0.5})
    loaded = load_text_ctr(tmp_path / "bag.pt", fmap)
    assert isinstance(loaded, BaggedTextCTR) and len(loaded.members) == 3 and loaded.config() == bag.config()
    np.testing.assert_array_equal(aug_probability(loaded, data), aug_probability(bag, data))
    with pytest.raises(ValueError, match="same input blocks"):
        BaggedTextCTR([heads[0], TextAugmentedCTR(copy.deepcopy(base), [("facts", 2)])])


@pytest.fixture(scope="module")
def real_slice(tiny_real_project):
    fdir = tiny_real_project / "data" / "features"
    fmap = FeatureMap.load(fdir / "feature_map.json")
    frames = {s: pl.read_parquet(fdir / f"{s}.parquet") for s in ("train", "valid")}
    return fmap, frames


def test_batch_from_columns_matches_ctrdata_on_real_rows(real_slice):
    _, frames = real_slice
    rows = frames["valid"].head(9)
    built = batch_from_columns(rows.to_dict(as_series=False))
    expected = CTRData.from_frame(rows).take(torch.arange(9))
    assert built.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(built[k], v), k


@pytest.fixture(scope="module")
def trained_din(real_slice):
    """(split data, a DIN trained on the real slice): the ID model ExpCTR-Aug wraps; deep-copy before use."""
    fmap, frames = real_slice
    data = {s: CTRData.from_frame(frames[s]) for s in frames}
    p = CTRParams(max_epochs=2, patience=2, batch_size=512, lr=0.005, embed_dim=8, mlp_dims=[32])
    base = build_model("din", fmap, p, seed=0)
    fit(base, data["train"], data["valid"], p, seed=0, desc="din")
    return data, base


def test_an_informative_text_beats_the_id_model_on_a_real_slice(trained_din):
    """The learning check for the text path: a noisy label signal in the 'explanation' must lift valid AUC."""
    data, base = trained_din[0], copy.deepcopy(trained_din[1])
    base_auc = binary_metrics(data["valid"].labels.numpy(), predict(base, data["valid"], 4096))["auc"]

    rng = np.random.default_rng(0)
    direction = rng.normal(size=384)
    direction /= np.linalg.norm(direction)

    def synthetic_text(labels: torch.Tensor) -> np.ndarray:
        # label +-0.5 along one direction plus N(0, 0.8^2) per dimension: alone, AUC = Phi(1/(0.8*sqrt 2)) ~ 0.81
        y = labels.numpy()[:, None] * 2 - 1
        x = 0.5 * y * direction + rng.normal(scale=0.8, size=(len(y), 384))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    train = with_text(data["train"], synthetic_text(data["train"].labels))
    valid = with_text(data["valid"], synthetic_text(data["valid"].labels))
    tp = TextCTRParams(proj_dim=8, hidden=[16], max_epochs=2, patience=2, lr=0.005, batch_size=256)
    aug, res = train_text_ctr(base, [("text", 384)], train, valid, tp, seed=0)
    aug_auc = binary_metrics(valid.labels.numpy(), aug_probability(aug, valid))["auc"]
    print(f"\nvalid AUC: DIN {base_auc:.4f}  ExpCTR-Aug(synthetic text) {aug_auc:.4f}")
    assert aug_auc == pytest.approx(res.best_valid_auc, abs=1e-6)
    assert aug_auc > base_auc + 0.05, (base_auc, aug_auc, res.curve)


def test_noise_text_keeps_the_id_model(trained_din):
    """Text unrelated to the label cannot beat the ID model on validation, so epoch 0 (Aug == ID) is kept."""
    data, base = trained_din[0], copy.deepcopy(trained_din[1])
    base_probs = predict(base, data["valid"], 4096)

    rng = np.random.default_rng(1)
    noise = {s: rng.normal(size=(len(data[s]), 384)).astype(np.float32) for s in ("train", "valid")}
    # few rows + a high learning rate: the head memorises noise and hurts validation
    small = CTRData(**data["train"].take(torch.arange(64)))
    tp = TextCTRParams(proj_dim=8, hidden=[16], max_epochs=3, patience=3, lr=0.05, batch_size=8)
    aug, res = train_text_ctr(base, [("text", 384)], with_text(small, noise["train"][:64]),
                              with_text(data["valid"], noise["valid"]), tp, seed=0)
    assert res.curve[0]["epoch"] == 0 and res.curve[0]["train_loss"] is None
    print("\nnoise-text curve:", [(r["epoch"], round(r["valid_auc"], 4)) for r in res.curve])
    assert res.best_epoch == 0, res.curve
    np.testing.assert_allclose(aug_probability(aug, with_text(data["valid"], noise["valid"])), base_probs, atol=1e-6)
