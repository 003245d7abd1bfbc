"""Reads and explanations split over processes: the same results as each part run alone, slates never cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from support import make_params

from expctr.config import load_params
from expctr.explainer.explain import explain_pairs, explain_side_by_side
from expctr.llm.judge import judge_p_yes_grouped, judge_p_yes_side_by_side
from expctr.llm.side_by_side import ModelLoader, SideBySide, cut_points, torch_threads


def test_cut_points_cut_near_equal_parts_between_equal_labels():
    slates = [u for u in range(10) for _ in range(2)]
    assert cut_points(slates, 2) == [10]
    assert cut_points(slates, 4) == [6, 10, 16]  # 5 -> 6, 15 -> 16: a slate of two is never cut
    assert cut_points([0, 0, 0, 1], 2) == [3]
    assert cut_points([0, 0, 0, 0], 2) == []  # one slate: nothing to split
    assert cut_points([0], 3) == []
    assert cut_points([], 2) == []
    assert cut_points([(1, 1), (1, 1), (1, 2), (1, 2)], 2) == [2]  # same user, another time: another slate


def test_ranges_are_one_part_per_process_while_the_pool_is_open_and_the_whole_otherwise():
    labels = [0, 0, 1, 1, 1, 2]
    pool = SideBySide(2, threads=1)
    assert pool.ranges(labels) == [(0, 6)]  # no worker open: run in place
    with pool:
        assert pool.ranges(labels) == [(0, 5), (5, 6)]  # a slate is never cut
        assert pool.ranges([3, 3]) == [(0, 2)] and pool.ranges([]) == [(0, 0)]
    assert SideBySide(1, threads=2).ranges(labels) == [(0, 6)]


@pytest.fixture(scope="module")
def side_by_side_setup(tiny_rounds_project: Path, base_model_dir, tmp_path_factory):
    from expctr.llm.base_model import load_model, load_tokenizer, reading_params

    root = tmp_path_factory.mktemp("side_by_side")
    make_params(root, **{"llm.source": str(base_model_dir), "llm.threads": 2, "llm.side_by_side": 2,
                         "llm.max_new_tokens": 12, "llm.gen_batch_size": 4, "llm.judge_batch_size": 4})
    params = load_params(root / "params.yaml")
    llm = reading_params(params.llm)
    model = load_model(base_model_dir, dtype=llm.dtype, device=llm.device, threads=1)
    return params, model, load_tokenizer(base_model_dir), ModelLoader(base_model_dir, None, llm), tiny_rounds_project


def test_two_processes_explain_and_read_what_each_part_does_alone(side_by_side_setup):
    params, model, tokenizer, load, project = side_by_side_setup
    pairs = {s: pl.read_parquet(project / "data" / "llm_pairs" / f"{s}.parquet") for s in ("test", "valid")}
    pool = SideBySide.for_llm(params.llm)
    assert (pool.processes, pool.threads) == (2, 1)
    with pool:
        written = explain_side_by_side(pool, model, tokenizer, load, pairs["test"], params, "test")
        read = explain_side_by_side(pool, model, tokenizer, load, pairs["valid"], params, "valid", write=False)
        groups = [[[{"role": "user", "content": f"Is {t['title']} good? {w}"}] for w in ("Yes.", "No.")]
                  for t in pairs["test"]["target"]]
        judged = judge_p_yes_side_by_side(pool, model, tokenizer, load, groups, batch_size=4)
    for frame, source, write in ((written, pairs["test"], True), (read, pairs["valid"], False)):
        cut = cut_points(list(zip(source["user_id"], source["timestamp"])), 2)
        assert len(cut) == 1
        with torch_threads(1):
            alone = pl.concat([explain_pairs(model, tokenizer, part, params, "alone", write=write)
                               for part in (source[:cut[0]], source[cut[0]:])])
        assert frame.drop("history", "target").equals(alone.drop("history", "target"))
        assert frame["item_id"].to_list() == source["item_id"].to_list()  # row order kept
    assert (read["verdict_logit"].abs() > 0).all()
    half = cut_points(list(range(len(groups))), 2)[0]
    with torch_threads(1):
        alone = [*judge_p_yes_grouped(model, tokenizer, groups[:half], 4),
                 *judge_p_yes_grouped(model, tokenizer, groups[half:], 4)]
    assert len(judged) == len(groups)
    for a, b in zip(judged, alone):
        np.testing.assert_array_equal(a, b)


def test_one_process_runs_in_place(side_by_side_setup):
    params, model, tokenizer, load, project = side_by_side_setup
    pairs = pl.read_parquet(project / "data" / "llm_pairs" / "test.parquet").head(4)
    with SideBySide(1, threads=1) as pool:
        assert not pool.active  # nothing spawned
        one = explain_side_by_side(pool, model, tokenizer, load, pairs, params, "one")
    assert one.drop("history", "target").equals(explain_pairs(model, tokenizer, pairs, params, "x")
                                                .drop("history", "target"))


def test_the_judge_scorer_splits_large_grouped_reads_over_its_pool(base_model_dir, monkeypatch):
    from expctr.llm import judge as judge_module
    from expctr.llm.base_model import load_model, load_tokenizer

    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype="float32", device="cpu", threads=1)
    load = ModelLoader(base_model_dir, None, load_params_llm("float32"))
    prompts = [[{"role": "user", "content": f"Is film {i} good?"}, {"role": "assistant", "content": a}]
               for i in range(6) for a in ("It is. So the answer is", "It is not. So the answer is")]
    monkeypatch.setattr(judge_module, "SIDE_BY_SIDE_MIN_GROUPS", 2)
    scorer = judge_module.JudgeScorer(model, tokenizer, batch_size=4)
    with SideBySide(2, threads=1) as pool:
        scorer.pool, scorer.load = pool, load
        split = scorer(prompts)
    alone = judge_module.JudgeScorer(model, tokenizer, batch_size=4)
    groups = [prompts[i:i + 2] for i in range(0, len(prompts), 2)]
    with torch_threads(1):
        expected = np.concatenate([*judge_p_yes_grouped(model, tokenizer, groups[:3], 4),
                                   *judge_p_yes_grouped(model, tokenizer, groups[3:], 4)])
    np.testing.assert_array_equal(split, expected)
    assert np.abs(alone(prompts) - split).max() < 1e-4  # one process of one thread: the same up to rounding


def load_params_llm(dtype: str):
    from expctr.config import LLMParams

    return LLMParams(dtype=dtype, threads=1)
