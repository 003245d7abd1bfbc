"""The arithmetic that lets N processes reproduce one: each process's part of every single-process batch, and
a loss scaled so that DDP's average of the parts' gradients is the whole batch's mean-loss gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from support import toy_feature_map
from torch import nn

from expctr.config import CTRParams
from expctr.ctr.batch import CTRData
from expctr.ctr.models import build_model
from expctr.ctr.trainer import fit, predict
from expctr.data.features import FeatureMap

K, G = 4, 3


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def toy_fmap() -> FeatureMap:
    return toy_feature_map(K, G)


def toy_data(n: int, seed: int = 0) -> CTRData:
    g = torch.Generator().manual_seed(seed)
    fields = torch.stack([torch.randint(2, 7, (n,), generator=g), torch.randint(2, 9, (n,), generator=g),
                          *[torch.randint(2, 4, (n,), generator=g) for _ in range(4)]], dim=1)
    labels = (fields[:, 1] % 2 == 0).float()  # learnable from the item id
    return CTRData(fields=fields, genres=torch.randint(0, 5, (n, G), generator=g),
                   hist_items=torch.randint(0, 9, (n, K), generator=g),
                   hist_clicks=torch.randint(0, 3, (n, K), generator=g), labels=labels)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_the_parts_of_each_global_batch_are_exactly_the_single_process_batch(world):
    data = toy_data(103)  # 103 rows in batches of 16: the last global batch (7 rows) splits unevenly
    single = list(data.batches(16, shuffle=True, generator=torch.Generator().manual_seed(9)))
    per_rank = [list(data.shard_batches(16, r, world, generator=torch.Generator().manual_seed(9)))
                for r in range(world)]
    assert all(len(parts) == len(single) for parts in per_rank)
    for b, batch in enumerate(single):
        parts = [per_rank[r][b] for r in range(world)]
        assert {n for _, n in parts} == {len(batch["labels"])}  # every rank knows the global batch size
        for key, value in batch.items():
            assert torch.equal(torch.cat([part[key] for part, _ in parts]), value), (b, key)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_cover_every_row_once_in_order(world):
    data = toy_data(11)
    shards = [data.shard(r, world) for r in range(world)]
    assert torch.equal(torch.cat([s.fields for s in shards]), data.fields)
    assert torch.equal(torch.cat([s.labels for s in shards]), data.labels)


@pytest.mark.parametrize("world", [2, 3, 8])
def test_averaged_scaled_part_gradients_equal_the_mean_loss_gradient(world):
    """What DDP computes (mean over processes of each part's gradient of sum-loss * world / n) equals the
    one-process gradient of the batch's mean loss, also with unequal parts and an empty one (8 ranks, 7 rows)."""
    model = build_model("deepfm", toy_fmap(), CTRParams(embed_dim=4, mlp_dims=[8], dropout=0.0), seed=0)
    batch = toy_data(7).take(torch.arange(7))
    model.zero_grad()
    nn.BCEWithLogitsLoss()(model(batch), batch["labels"]).backward()
    reference = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    averaged = {k: torch.zeros_like(v) for k, v in reference.items()}
    for part in torch.arange(7).tensor_split(world):
        model.zero_grad()
        sub = {k: v[part] for k, v in batch.items()}
        loss = nn.BCEWithLogitsLoss(reduction="sum")(model(sub), sub["labels"]) * (world / 7)
        loss.backward()
        for k, p in model.named_parameters():
            if k in reference:
                averaged[k] += p.grad / world
    for k, expected in reference.items():
        torch.testing.assert_close(averaged[k], expected, rtol=1e-5, atol=1e-7)


@pytest.fixture
def fresh_accelerate_state():
    """fit(data_parallel=True) initialises accelerate's process-wide state: reset it for the other tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_data_parallel_fit_in_one_process_is_the_plain_fit_bit_for_bit(fresh_accelerate_state):
    train, valid, test = toy_data(300, 1), toy_data(100, 2), toy_data(50, 3)
    p = CTRParams(embed_dim=4, mlp_dims=[8], max_epochs=3, patience=3, batch_size=32, lr=0.01)
    base = build_model("din", toy_fmap(), p, seed=0)
    runs = []
    for data_parallel in (False, True):
        model = copy.deepcopy(base)
        res = fit(model, train, valid, p, seed=0, data_parallel=data_parallel)
        runs.append((res.curve, predict(model, test, 64)))
    (curve_plain, probs_plain), (curve_dp, probs_dp) = runs
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in curve_plain] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in curve_dp]
    assert (probs_plain == probs_dp).all()
    assert curve_plain[-1]["valid_auc"] > 0.6  # it did learn (labels follow the item id)
