"""evaluation_report stage: every round (0 = the base explainer) and every baseline on the same test pairs.

Reads only finished artifacts (`expctr.evaluation.report_data`; no model is loaded). Two tables compare like
with like: every predictor on the final round's pairs, and every round on the pairs all rounds saw (the first
min n_k). Writes `reports/evaluation/` (report.html with embedded figures, summary.md, the PNGs),
`metrics/evaluation.json` (headline numbers, the ExpCTR-Aug ablation, the targets met / missed) and
`metrics/evaluation_rounds.csv` (one row per round), each atomically.
"""

from __future__ import annotations

import math

import numpy as np

from expctr.config import Params
from expctr.evaluation.ablation import aug_ablation, grade_rows
from expctr.evaluation.faithfulness import TitleIndex
from expctr.evaluation.metrics import Predictor, predictor_rows
from expctr.evaluation.report import Evaluation, markdown_summary
from expctr.evaluation.report_data import ReportInputs, load_inputs, report_dir
from expctr.evaluation.report_figures import make_figures
from expctr.evaluation.report_html import html_report
from expctr.evaluation.report_metrics import headline, write_rounds_csv
from expctr.evaluation.report_tables import (
    baselines,
    by_key,
    full_split_table,
    pick_samples,
    round_predictors,
    round_row,
    shared_gains,
)
from expctr.evaluation.targets import evaluation_targets
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths


def evaluate(params: Params, data: ReportInputs) -> tuple[Evaluation, list[Predictor], np.ndarray]:
    """(the evaluation without figures, the final-pair predictors, their labels)."""
    pairs, rounds, seed, n_boot = data.pairs, data.rounds, params.seed, params.evaluation.bootstrap
    primary = str(data.ctr.get("primary") or params.ctr.model)
    labels = pairs["label"].to_numpy().astype(int)
    n_final, n_shared = rounds[-1].test.height, min(rd.test.height for rd in rounds)

    final_preds = baselines(pairs, n_final, primary) + round_predictors(rounds[-1], n_final)
    if rounds[0].k != rounds[-1].k and rounds[0].test.height >= n_final:
        final_preds += round_predictors(rounds[0], n_final)
    final_rows = predictor_rows(labels[:n_final], final_preds, seed, n_boot)
    shared_preds = baselines(pairs, n_shared, primary) + [
        p for rd in rounds for p in round_predictors(rd, n_shared, llm_side=False)]
    shared_rows = predictor_rows(labels[:n_shared], shared_preds, seed, n_boot)
    gains = shared_gains(rounds, labels[:n_shared], pairs["p_id"].to_numpy()[:n_shared], seed, n_boot)

    index = TitleIndex.from_catalogue(data.catalogue["title"].to_list(), data.catalogue["year"].to_list())
    round_rows = [round_row(rd, pairs, index) for rd in rounds]
    last = rounds[-1]
    ablation = aug_ablation(last.metrics, last.k)
    notes = [f"round {rd.k}: no RL log (models/rounds/round_{rd.k}/rl_lc.jsonl, rl_ic.jsonl)"
             for rd in rounds if rd.k and not (rd.logs.get("lc") or rd.logs.get("ic"))]
    ev = Evaluation(
        n_pairs=n_final, n_shared=n_shared, label_rate=float(labels[:n_final].mean()) if n_final else math.nan,
        rounds=[rd.k for rd in rounds], primary=primary, pair_rows=final_rows, shared_rows=shared_rows,
        shared_gains=gains, round_rows=round_rows, ablation=ablation,
        grades=grade_rows(last.metrics.get("judge_by_grade") or [], data.pool),
        aug_fit=last.metrics.get("aug_fit") or {},
        targets=evaluation_targets(by_key(final_rows), by_key(shared_rows), round_rows, ablation, data.stage_seconds),
        stage_seconds=data.stage_seconds, full_split=full_split_table(data.ctr, list(params.ctr.compare)),
        samples=pick_samples(last, pairs, round_rows[-1]["unseen_titles"]), notes=notes,
    )
    return ev, final_preds, labels[:n_final]


def run(params: Params, paths: ProjectPaths) -> dict:
    data = load_inputs(params, paths)
    ev, final_preds, labels = evaluate(params, data)
    ev.figures = make_figures(ev, labels, final_preds, data.rounds)
    with atomic_path(report_dir(paths)) as tmp:
        tmp.mkdir()
        for name, png in ev.figures.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / "report.html").write_text(html_report(ev), encoding="utf-8")
        (tmp / "summary.md").write_text(markdown_summary(ev), encoding="utf-8")
    metrics = headline(ev)
    write_json(paths.metric("evaluation.json"), metrics)
    write_rounds_csv(paths.metric("evaluation_rounds.csv"), ev)
    return metrics
