"""Labels, leakage-free histories, splits and the feature map on small hand-built frames."""

import numpy as np
import polars as pl
import pytest

from expctr.config import FeatureParams
from expctr.data.features import (
    HIST_CLICK_NO,
    HIST_CLICK_PAD,
    HIST_CLICK_YES,
    OOV,
    PAD,
    FeatureMap,
    build_features,
    encode,
    history_positions,
    split_history,
)
from expctr.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA


def frames(rows):
    inter = pl.DataFrame(rows, schema=INTERACTIONS_SCHEMA, orient="row")
    items = pl.DataFrame(
        [(f"i{k}", f"Title {k}", 1990 + k, ["Drama"] if k % 2 else ["Comedy", "Romance"]) for k in range(10)],
        schema=ITEMS_SCHEMA, orient="row",
    )
    users = pl.DataFrame([("u1", "F", 25, "3"), ("u2", "M", 35, "7")], schema=USERS_SCHEMA, orient="row")
    return inter, items, users


def test_history_positions_are_strictly_earlier_and_exclude_same_second():
    user = np.array([0, 0, 0, 0, 1, 1])
    ts = np.array([10, 20, 20, 30, 5, 6])
    pos = history_positions(user, ts, 3)
    # row 1 and 2 share ts=20: neither is the other's history
    assert pos.tolist() == [[-1, -1, -1], [-1, -1, 0], [-1, -1, 0], [0, 1, 2], [-1, -1, -1], [-1, -1, 4]]


def test_history_truncates_to_k_most_recent_most_recent_last():
    user = np.zeros(6, dtype=int)
    ts = np.arange(6)
    assert history_positions(user, ts, 2)[5].tolist() == [3, 4]


def test_build_features_never_leaks_future_and_labels_history():
    rows = [
        ("u1", "i1", 5.0, 100), ("u1", "i2", 2.0, 200), ("u1", "i3", 4.0, 300), ("u1", "i4", 1.0, 300),
        ("u1", "i5", 5.0, 400), ("u2", "i1", 3.0, 150), ("u2", "i2", 4.0, 250), ("u2", "i6", 5.0, 350),
        ("u2", "i7", 5.0, 450), ("u1", "i8", 4.0, 500),
    ]
    inter, items, users = frames(rows)
    params = FeatureParams(history_len=3, valid_frac=0.2, test_frac=0.2)
    splits, catalogue, _, _ = build_features(inter, items, users, params, seed=0)
    allf = pl.concat(splits.values())
    ts_by_code = {}
    for r in allf.iter_rows(named=True):
        ts_by_code[(r["user_id"], r["item_code"])] = r["timestamp"]
    for r in allf.iter_rows(named=True):
        for code, click in zip(r["hist_item_code"], r["hist_click"]):
            if click == HIST_CLICK_PAD:
                assert code == -1
                continue
            assert ts_by_code[(r["user_id"], code)] < r["timestamp"]
    u1_i5 = allf.filter((pl.col("user_id") == "u1") & (pl.col("item_id") == "i5")).row(0, named=True)
    code = dict(zip(catalogue["item_id"], catalogue["item_code"]))
    # i3 and i4 share ts=300 (ordered by item id), both before 400; k=3 keeps the three most recent
    assert list(u1_i5["hist_item_code"]) == [code["i2"], code["i3"], code["i4"]]
    assert list(u1_i5["hist_click"]) == [HIST_CLICK_NO, HIST_CLICK_YES, HIST_CLICK_NO]
    assert u1_i5["hist_last_ts"] == 300
    liked, disliked = split_history(np.array(u1_i5["hist_item_code"]), np.array(u1_i5["hist_click"]))
    assert set(liked) == {code["i3"]} and set(disliked) == {code["i2"], code["i4"]}
    first = allf.filter((pl.col("user_id") == "u1") & (pl.col("item_id") == "i1")).row(0, named=True)
    assert first["hist_last_ts"] is None and first["hist_len"] == 0


def test_time_split_is_ordered_and_vocab_comes_from_train_only():
    rows = [(f"u{k % 2 + 1}", f"i{k}", 4.0 if k % 3 else 2.0, 1000 + k) for k in range(10)]
    inter, items, users = frames(rows)
    splits, _, fmap, summary = build_features(inter, items, users, FeatureParams(), seed=0)
    assert {k: v.height for k, v in splits.items()} == {"train": 8, "valid": 1, "test": 1}
    assert splits["train"]["timestamp"].max() < splits["valid"]["timestamp"].min() <= splits["test"]["timestamp"].min()
    # i9 appears only in test: it is out of vocabulary there
    assert "i9" not in fmap.vocabs["item"]
    assert splits["test"]["item_idx"].to_list() == [OOV]
    assert min(fmap.vocabs["item"].values()) == 2  # 0 = PAD, 1 = OOV are reserved
    assert summary["split"]["kind"] == "time"


def test_random_split_is_seeded():
    rows = [("u1", f"i{k}", 4.0, 0) for k in range(10)]
    inter, items, users = frames(rows)
    p = FeatureParams(split="random", valid_frac=0.3, test_frac=0.3)
    a = build_features(inter, items, users, p, seed=1)[0]
    b = build_features(inter, items, users, p, seed=1)[0]
    assert all(a[s]["item_id"].to_list() == b[s]["item_id"].to_list() for s in a)


def test_encode_maps_unknown_to_oov_and_null_to_pad():
    out = encode(pl.Series(["a", "zz", None]), {"a": 2})
    assert out.to_list() == [2, OOV, PAD]


def test_feature_map_round_trip(tmp_path):
    fmap = FeatureMap({"user": {"u1": 2}, "item": {"i1": 2, "i2": 3}}, 10, 6, 4.0, {"split": {"kind": "time"}})
    path = tmp_path / "fm.json"
    path.write_text(fmap.to_json())
    back = FeatureMap.load(path)
    assert back == fmap and back.size("item") == 4


def test_genre_bag_is_padded_to_max_genres():
    rows = [("u1", "i2", 4.0, 1), ("u1", "i1", 4.0, 2)]
    inter, items, users = frames(rows)
    splits, *_ = build_features(inter, items, users, FeatureParams(max_genres=3, valid_frac=0.1, test_frac=0.1), seed=0)
    g = pl.concat(splits.values())["genre_idx"].to_list()
    assert all(len(x) == 3 for x in g)
    assert [sum(v != PAD for v in x) for x in g] == [2, 1]  # i2: Comedy+Romance, i1: Drama


def test_missing_item_in_catalogue_is_reported():
    inter, items, users = frames([("u1", "nope", 4.0, 1)])
    with pytest.raises(ValueError, match="missing from the items table"):
        build_features(inter, items, users, FeatureParams(), seed=0)
