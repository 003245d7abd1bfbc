"""The evaluation as one self-contained HTML page: tables, the reading and base64-embedded figures.

Everything that comes from data (titles, explanations, user ids, model names) is HTML-escaped. The same PNGs
are written beside the report; no timestamps, so the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from expctr.evaluation.faithfulness import MIN_STRONG_CHARS
from expctr.evaluation.report import (
    ROUND_COLUMNS,
    Evaluation,
    ablation_table,
    ci,
    diff_text,
    fmt,
    grade_table,
    met_text,
    reading,
    shared_round_table,
    target_value,
)

FIGURE_CAPTIONS = {
    "roc_test_pairs": "ROC curves of every predictor on the final round's test pairs.",
    "aug_ablation": "ExpCTR-Aug ablation: each variant's AUC beside the ID model's (left) and the paired "
    "differences (right); a whisker that crosses 0 is a difference these pairs do not show.",
    "judge_grades": "The frozen judge's mean P(Yes) and the click rate on the test pairs stated with each verdict "
    "grade (bars, n below each grade), and the judge's mean P(Yes) after the bare sentence on the RL pool "
    "(diamonds). A judge that reads the grades in order gives falling bars from left to right.",
    "round_progress": "ExpCTR-LLM and ExpCTR-Aug per round on the pairs every round saw, with 95 % intervals "
    "(left), and each minus the ID model with paired intervals (right). Round 0 is the base explainer before "
    "any RL (no Aug).",
    "aug_curves": "ExpCTR-Aug training per variant: held-out AUC, held-out log-loss and train loss per epoch "
    "(epoch 0 = before training); the star marks the best epoch. Best epoch 0: the head never beat its start.",
    "round_verdicts": "Verdicts and explanations per round: share of positive verdicts (against the click rate and "
    "the ID model's positive rate), agreement with the click and with the ID model's decision, faithfulness, "
    "grounding, quoted titles outside the context, complete single sentences.",
    "reward_curves": "RL reward curves per stage: the dense verdict step's exact expected reward per batch (top) "
    "and the GRPO reason step's mean reward per step (bottom).",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1,h2{font-weight:600}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ddd;padding:.3em .55em;
vertical-align:top}th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9em}figure{margin:1em 0}figcaption{color:#555;font-size:.88em}
img{max-width:100%;height:auto}td.expl{max-width:34em}code{background:#f4f4f4;padding:0 .2em}
p.verdict{background:#f7f7f0;border-left:3px solid #bcbd22;padding:.4em .8em}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[tuple[Any, bool]]], cls: str = "") -> str:
    """`rows` cells are (text, numeric); every cell is escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if num else cls}">{_e(v)}</td>' for v, num in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose first column is text and the others numbers."""
    return _table(header, [[(c, i > 0) for i, c in enumerate(r)] for r in rows])


def _figure(ev: Evaluation, name: str) -> str:
    if name not in ev.figures:
        return ""
    b64 = base64.b64encode(ev.figures[name]).decode("ascii")
    cap = FIGURE_CAPTIONS.get(name, name)
    return (f'<figure><img alt="{_e(cap)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_e(cap)} (<code>{_e(name)}.png</code>)</figcaption></figure>")


def _pred_table(rows: Sequence[Mapping]) -> str:
    return _table(["predictor", "AUC", "95% bootstrap CI", "log-loss", "n"],
                  [[(r["predictor"], False), (fmt(r["auc"]), True),
                    (ci(r), True), (fmt(r["logloss"]), True),
                    (r["n"], True)] for r in rows])


def _confusion(c: Mapping | None, what: str) -> str:
    if not c:
        return ""
    return _table([f"verdict \\ {what}", "positive", "negative"],
                  [[("will enjoy (any positive grade)", False), (c["positive_verdict_and_positive"], True),
                    (c["positive_verdict_and_negative"], True)],
                   [("will not enjoy (or none)", False), (c["negative_verdict_and_positive"], True),
                    (c["negative_verdict_and_negative"], True)]])


def _ablation(ev: Evaluation) -> list[str]:
    ab = ev.ablation
    if not ab:
        return ["<h2>What the explanation adds: the ExpCTR-Aug ablation</h2>",
                '<p class="note">No ExpCTR-Aug ablation in the final round\'s metrics.</p>']
    return [(f"<h2>What the explanation adds: the ExpCTR-Aug ablation (round {_e(ab['round'])}, "
             f"n = {_e(ab.get('n'))})</h2>"),
            ('<p class="note">Three Aug heads on the ID model, same architecture, recipe and seed, trained on the '
             "same explained valid-period pairs; only their inputs differ: (a) the pair's explanation, (b) the "
             "prompt's facts the explainer saw, without its text, (c) another pair's explanation of the same user. "
             "Differences are paired bootstrap intervals over the same pairs.</p>"),
            _text_table(*ablation_table(ev)),
            f'<p class="verdict">{_e(ab.get("reading", ""))}</p>',
            _figure(ev, "aug_ablation")]


def _llm_side(ev: Evaluation) -> list[str]:
    k = ev.rounds[-1]
    keys = [f"expctr_llm_round_{k}", f"stance_only_round_{k}", f"verdict_logit_round_{k}", "id_only",
            "zero_shot_judge"]
    rows = [r for key in keys for r in ev.pair_rows if r["key"] == key]
    last = ev.round_rows[-1]
    gain = {"diff": last.get("llm_minus_id"), "ci_low": last.get("llm_minus_id_ci_low"),
            "ci_high": last.get("llm_minus_id_ci_high")}
    return [f"<h2>ExpCTR-LLM against the stance alone, the verdict logit and the ID model (n = {ev.n_pairs})</h2>",
            ('<p class="note">ExpCTR-LLM = the frozen judge\'s P(Yes) after reading the explanation, whose verdict '
             "is worded by the explainer's confidence; stance alone = the two-point score the stated side gives; "
             "verdict logit = the explainer's own logit(\u201cenjoy\u201d) − logit(\u201cnot\u201d) (a score: "
             "AUC only).</p>"),
            _pred_table(rows),
            f"<p>ExpCTR-LLM − ID model: {_e(diff_text(gain))} (paired 95 % CI).</p>",
            _text_table(*grade_table(ev)),
            _figure(ev, "judge_grades")]


def _aug_training(ev: Evaluation) -> list[str]:
    if not ev.aug_fit:
        return []
    rows = [[v, fmt(f.get("best_epoch"), "d"), fmt(f.get("best_valid_auc")),
             str(max((c.get("epoch", 0) for c in f.get("curve") or []), default=0))] for v, f in ev.aug_fit.items()]
    return [f"<h2>ExpCTR-Aug training (round {ev.rounds[-1]})</h2>",
            _text_table(["variant", "best epoch", "best held-out AUC", "epochs run"], rows),
            _figure(ev, "aug_curves")]


def _rounds(ev: Evaluation) -> list[str]:
    k, last = ev.rounds[-1], ev.round_rows[-1]
    parts = [f"<h2>Round over round on the same {ev.n_shared} pairs</h2>",
             _text_table(*shared_round_table(ev)), _figure(ev, "round_progress"),
             "<details><summary>Every predictor on the shared pairs</summary>", _pred_table(ev.shared_rows),
             "</details>",
             "<h2>Rounds (each on its own test pairs)</h2>",
             _table([h for _, h, _ in ROUND_COLUMNS],
                    [[(fmt(r.get(key), spec), True) for key, _, spec in ROUND_COLUMNS] for r in ev.round_rows]),
             _DEFINITIONS,
             f"<h3>Round {k}: verdicts against the clicks and against the ID model's decision (p ≥ 0.5)</h3>",
             _confusion(last.get("confusion_label"), "click"), _confusion(last.get("confusion_id"), "ID model"),
             _figure(ev, "round_verdicts"), _figure(ev, "reward_curves")]
    rises = [(r["round"], name, v) for r in ev.round_rows for name, v in (r.get("rewards_rise") or {}).items()]
    if rises:
        parts += ["<h3>Do the rewards rise? (mean of the first vs the last quarter of each stage's steps)</h3>",
                  _table(["round", "stage / step", "first quarter", "last quarter", "rises"],
                         [[(k_, True), (name, False), (fmt(v.get("first_quarter")), True),
                           (fmt(v.get("last_quarter")), True), (target_value(v.get("rises")), False)]
                          for k_, name, v in rises])]
    return parts


def _tail(ev: Evaluation) -> list[str]:
    parts = []
    if ev.full_split:
        fs = ev.full_split
        parts += [f"<h2>ID-based models on the full test split (n = {_e(fs['rows'])})</h2>",
                  ('<p class="note">From <code>metrics/ctr.json</code> '
                   f"(click rate {fmt(fs.get('label_rate'))}).</p>"),
                  _table(["model", "AUC", "log-loss"],
                         [[(m["model"] + (" (primary)" if m["model"] == ev.primary else ""), False),
                           (fmt(m["auc"]), True), (fmt(m["logloss"]), True)] for m in fs["models"]])]
    if ev.stage_seconds:
        total = sum(v for v in ev.stage_seconds.values() if v)
        parts += ["<h2>Wall time per stage</h2>",
                  _table(["stage", "seconds"], [[(s, False), (fmt(v, "0f"), True)] for s, v in ev.stage_seconds.items()]
                         + [[("total (stages that record it)", False), (fmt(total, "0f"), True)]])]
    if ev.samples:
        parts += [f"<h2>Sample explanations (round {ev.rounds[-1]})</h2>",
                  _table(["user", "target", "label", "grade", "P(Yes) judge", "P(click) Aug", "P(click) ID",
                          "titles outside the context", "explanation"],
                         [[(s["user_id"], False), (s["target"], False), (s["label"], True), (s["grade"], False),
                           (fmt(s["p_yes_judge"]), True), (fmt(s["p_aug_explanation"]), True), (fmt(s["p_id"]), True),
                           ("; ".join(s["unseen_titles"]) or "–", False), (s["explanation"], False)]
                          for s in ev.samples], cls="expl")]
    if ev.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in ev.notes) + "</ul>")
    return parts


def html_report(ev: Evaluation) -> str:
    k = ev.rounds[-1]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>ExpCTR evaluation report</title>",
        f"<style>{_CSS}</style></head><body>", "<h1>ExpCTR evaluation report</h1>",
        (f"<p>Rounds 0–{k} (round 0 = the base explainer before any RL). The LLM stages work on a seeded sample of "
         f"test pairs: the final round on all <b>{ev.n_pairs}</b> (click rate {ev.label_rate:.3f}), every earlier "
         f"round on the first <b>{ev.n_shared}</b>; the ID-based CTR models were also evaluated on the <b>full "
         "time-based test split</b>. Compare numbers within a table, not across.</p>"),
        f"<h2>Reading</h2><p>{_e(reading(ev))}</p>",
        "<h2>Targets</h2>",
        _table(["target", "level", "value", "reference", ""],
               [[(t["target"], False), (t.get("level", ""), False), (target_value(t.get("value")), True),
                 (target_value(t.get("reference")), True), (met_text(t["met"]), False)] for t in ev.targets]),
        *_ablation(ev),
        *_aug_training(ev),
        *_llm_side(ev),
        f"<h2>Every predictor on the final round's pairs (n = {ev.n_pairs})</h2>",
        ('<p class="note">ID-only = the primary ID model '
         f"(<code>{_e(ev.primary)}</code>). History rules give scores, not probabilities: AUC only. Intervals: "
         "percentile bootstrap over pairs (seeded).</p>"),
        _pred_table(ev.pair_rows), _figure(ev, "roc_test_pairs"),
        *_rounds(ev), *_tail(ev),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


_DEFINITIONS = f"""<details><summary>Definitions</summary><ul class="note">
<li><b>faithful</b>: share of explanations that name no catalogue title other than the pair's history
items and its target. Titles are matched against the whole catalogue, case-, punctuation-, accent- and
whitespace-insensitive, quotes stripped, MovieLens article suffixes undone ("Matrix, The" = "The Matrix"),
year optional, alternative titles in parentheses and the parts before and after a colon included. Titles of
two or more words with at least one uncommon word (and at least {MIN_STRONG_CHARS} letters) match anywhere
they are quoted, followed by their year or written with a capital; single-word or all-common-word titles count
only when quoted or followed by their year; genre names and one-letter titles never count. Invented titles that
are not in the catalogue cannot be recognised here.</li>
<li><b>grounded</b>: share whose reason names an item of the user's history or a genre the target shares with
the liked or disliked items (<code>expctr.evaluation.grounding</code>), the anchor of an anchored opening
included; <b>reason grounded (beyond the opening)</b>: the same test on what the explainer wrote after the opening it
was given (the graded verdict and the anchor item); <b>quotes a title outside</b>: share
quoting a span that is neither a history item nor the target (invented titles, prompt text quoted as a title).</li>
<li><b>positive verdicts</b>: share of explanations whose graded verdict is on the "enjoy" side; <b>verdict =
click</b> / <b>verdict = ID model</b>: share of pairs whose stated side equals the click / the ID model's
P(click) &ge; 0.5 (no verdict counts as "not").</li>
<li><b>stance-only AUC</b>: the AUC of the stated side alone (+1 / −1), the two-point score a plain verdict
gives; <b>LLM − ID</b>, <b>Aug − ID</b>, <b>expl. − facts</b>: AUC differences on the same pairs (paired
bootstrap intervals in metrics/evaluation.json).</li>
<li><b>most common text</b>: share of the round's test explanations identical to its most frequent one.</li>
<li><b>one sentence</b>: a complete sentence within the token cap. <b>distinct-2</b>: distinct bigrams / all
bigrams over the round's explanations. <b>words</b>: whitespace-separated words. <b>stage s</b>: the round
stage's wall seconds.</li></ul></details>"""
