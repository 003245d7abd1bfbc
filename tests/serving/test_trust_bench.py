"""The trust benchmark's measurements on hand-written server responses: each figure can fail.

A minimal bundle (catalogue with training statistics, known users, the real tokenizer) is built from the tiny
real slice, so the bench rebuilds the history the explainer saw exactly as the server does; no model runs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import polars as pl
import pytest
from support import REPO_ROOT

from expctr.data.features import FeatureMap
from expctr.llm.verdicts import verdict_prefix


def _bench():
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("expctr_trust_bench", REPO_ROOT / "bench" / "trust_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle(tiny_real_project: Path, base_model_dir: Path, tmp_path_factory):
    from expctr.serving.bundle import catalogue_table, users_table

    root, dest = tiny_real_project, tmp_path_factory.mktemp("trust_bundle")
    fmap = FeatureMap.load(root / "data" / "features" / "feature_map.json")
    train = pl.read_parquet(root / "data" / "features" / "train.parquet", columns=["item_code", "timestamp", "label"])
    catalogue_table(pl.read_parquet(root / "data" / "features" / "items.parquet"), fmap, train).write_parquet(
        dest / "catalogue.parquet")
    users_table(pl.read_parquet(root / "data" / "raw" / "users.parquet"),
                pl.read_parquet(root / "data" / "raw" / "interactions.parquet"), fmap).write_parquet(
        dest / "users.parquet")
    (dest / "llm").mkdir()
    (dest / "llm" / "base").symlink_to(base_model_dir)
    (dest / "manifest.json").write_text(json.dumps({"click_threshold": fmap.click_threshold,
                                                    "history_len": fmap.history_len, "max_prompt_tokens": 176}))
    return _bench().Bundle(dest)


def test_the_trust_figures_count_what_the_texts_say(bundle):
    bench = _bench()
    plans = bench.plan_requests(bundle, n_users=1, n_cold=1, n_cand=5, seed=0)
    assert [p["kind"] for p in plans] == ["known", "cold"]
    known = plans[0]
    history = bundle.history(known["rated"])
    liked = next(h for h in reversed(history) if h.liked)  # the most recent liked item: always in the prompt
    cands = known["body"]["candidates"]
    outsider = next(i for i in bundle.item_ids if i not in {h for h, _ in known["rated"]} and i not in cands
                    and len(bundle.items[i].title.split()) >= 3)

    def item(n, p, text):
        return {"item_id": cands[n], "p_click": p, "p_source": "expctr_aug", "explanation": text,
                "stance": "enjoy" if p >= 0.5 else "not_enjoy", "faithful": True, "grounded": True,
                "complete": True, "regenerated": False, "cached": False}

    good = f'{verdict_prefix(True)} it because they liked "{liked.title}".'
    body = {"decision_threshold": 0.5, "items": [
        item(0, 0.9, good),                                                          # passes every check
        item(1, 0.2, f'{verdict_prefix(True)} it because they liked "{liked.title}".'),   # stance contradicts p
        item(2, 0.7, f'{verdict_prefix(True)} it because it is like "The Shawshiels".'),  # invented, ungrounded
        item(3, 0.7, f'{verdict_prefix(True)} it like "{bundle.items[outsider].title}".'),  # catalogue outsider
        item(4, 0.1, f'{verdict_prefix(False)} it because of its blend of action,'),        # cut, generic
    ]}
    summary, rows = bench.check_items(bundle, [known], [(1.0, 200, body)])
    assert summary["explanations"] == 5
    assert summary["stance_score_agreement"] == 0.8
    assert [r["stance_agrees"] for r in rows] == [True, False, True, True, True]
    assert rows[0]["grounded"] and rows[1]["grounded"] and not rows[2]["grounded"] and not rows[4]["grounded"]
    assert rows[2]["invented"] == ["The Shawshiels"] and rows[2]["catalogue_outside"] == []
    assert rows[3]["invented"] == [] and rows[3]["catalogue_outside"]
    assert summary["invented_titles"] == 1 and summary["explanations_with_catalogue_titles_outside_pair"] == 1
    assert [r["complete"] for r in rows] == [True, True, True, True, False]
    assert summary["complete_single_sentence_rate"] == 0.8
    # the server's flags (all "true" here) disagree with the checks on the three failing texts
    assert summary["server_flags"]["flags_match_checks"] == 0.4


def test_latency_splits_slates_by_a_second_generation_pass():
    bench = _bench()

    def body(*regenerated):
        return {"items": [{"explanation": "x.", "regenerated": r} for r in regenerated]
                + [{"explanation": None, "regenerated": True}]}  # an unexplained item never counts

    results = [(1.0, 200, body(False, False)), (3.0, 200, body(False, True)), (2.0, 200, body(False)),
               (9.0, 500, None)]
    plans = [{"kind": "known"}, {"kind": "known"}, {"kind": "cold"}, {"kind": "known"}]
    assert [bench.any_regenerated(b) for _, _, b in results] == [False, True, False, False]
    clean = bench.latency(results, where=lambda b: b is not None and not bench.any_regenerated(b))
    assert clean == {"requests": 2, "p50_ms": 1500.0, "p95_ms": 1950.0, "mean_ms": 1500.0}
    assert bench.latency(results, ["known"], plans, where=bench.any_regenerated)["requests"] == 1
    assert bench.latency(results, ["cold"], plans, where=bench.any_regenerated) == {"requests": 0}
