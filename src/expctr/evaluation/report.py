"""Render the evaluation as a self-contained HTML report and a short Markdown summary.

Everything that comes from data (titles, explanations, user ids, model names) is HTML-escaped in the HTML
and has its table-breaking characters escaped in the Markdown. Figures are embedded as base64 PNG (the
same PNGs are written beside the report). No timestamps: the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from expctr.evaluation.faithfulness import MIN_STRONG_CHARS


@dataclass
class Evaluation:
    """Everything the report shows (computed by the evaluation_report stage)."""

    n_pairs: int  # the last round's test pairs
    n_shared: int  # the first n_shared pairs, which every round (0 = base explainer) was evaluated on
    label_rate: float
    rounds: list[int]  # 0..R
    primary: str
    pair_rows: list[dict]  # metrics.predictor_rows on the last round's pairs
    shared_rows: list[dict]  # metrics.predictor_rows of every round and baseline on the shared pairs
    round_rows: list[dict]  # one dict per round
    targets: list[dict]  # issue 8's targets: {target, value, reference?, met}
    stage_seconds: dict  # stage -> wall seconds (None: not recorded)
    full_split: dict | None  # {"rows", "label_rate", "models": [{"model", "auc", "logloss"}]}
    samples: list[dict]
    figures: dict[str, bytes] = field(default_factory=dict)  # file stem -> PNG
    notes: list[str] = field(default_factory=list)


FIGURE_CAPTIONS = {
    "roc_test_pairs": "ROC curves of every predictor on the last round's test pairs.",
    "round_auc": "AUC per round on the pairs every round was evaluated on, with 95 % bootstrap intervals, against "
    "the baselines (dashed lines). Round 0 is the base explainer before any RL.",
    "round_verdicts": "Verdicts and explanations per round: share of positive verdicts (against the click rate and "
    "the ID model's positive rate), agreement with the click and with the ID model's decision, faithfulness, "
    "complete single sentences.",
    "reward_curves": "RL reward curves per stage: the dense verdict step's exact expected reward per batch (top) "
    "and the GRPO reason step's mean reward per step (bottom).",
}

ROUND_COLUMNS: list[tuple[str, str, str]] = [  # key, header, format
    ("round", "round", "d"),
    ("test_pairs", "pairs", "d"),
    ("llm_auc", "ExpCTR-LLM AUC", "3f"),
    ("verdict_logit_auc", "verdict-logit AUC", "3f"),
    ("aug_auc", "ExpCTR-Aug AUC", "3f"),
    ("aug_minus_id", "Aug − ID", "+.3f"),
    ("id_auc", "ID AUC", "3f"),
    ("positive_share", "positive verdicts", "3f"),
    ("test_click_rate", "click rate", "3f"),
    ("agree_label", "verdict = click", "3f"),
    ("agree_id", "verdict = ID model", "3f"),
    ("faithfulness", "faithful", "3f"),
    ("grounded", "grounded", "3f"),
    ("outside_title_share", "quotes a title outside", "3f"),
    ("share_one_sentence", "one sentence", "3f"),
    ("top_explanation_share", "most common text", "3f"),
    ("distinct_2", "distinct-2", "3f"),
    ("mean_words", "words", "1f"),
    ("seconds", "stage s", "0f"),
]


def fmt(v: Any, spec: str = "3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if spec == "d":
        return str(int(v))
    if not isinstance(v, (int, float)):
        return str(v)
    return format(float(v), spec if spec.startswith("+") else f".{spec}")


def _ci(row: Mapping) -> str:
    lo, hi = row.get("auc_ci_low"), row.get("auc_ci_high")
    return (
        "–"
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi))
        else f"[{lo:.3f}, {hi:.3f}]"
    )


# ------------------------------------------------------------------------------------------ reading


def _row(rows: Sequence[Mapping], key: str) -> Mapping | None:
    return next((r for r in rows if r["key"] == key), None)


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def reading(ev: Evaluation) -> str:
    """One honest paragraph generated from the numbers (what they show, and how much n allows)."""
    k = ev.rounds[-1]
    final, shared = ev.pair_rows, ev.shared_rows
    parts: list[str] = []
    llm, aug = _row(final, f"expctr_llm_round_{k}"), _row(final, f"expctr_aug_round_{k}")
    refs = [(name, _row(final, key)) for name, key in ((f"the ID model ({ev.primary})", "id_only"),
                                                        ("the share-liked rule", "rule_share_liked"),
                                                        ("the genre-overlap rule", "rule_genre_overlap"),
                                                        ("the zero-shot judge", "zero_shot_judge"))]
    for name, r in (("ExpCTR-LLM", llm), ("ExpCTR-Aug", aug)):
        if r is None or not _ok(r["auc"]):
            continue
        bits = [f"{ref_name} {ref['auc']:.3f}" + (" (intervals overlap)" if _overlap(r, ref) else "")
                for ref_name, ref in refs if ref is not None and _ok(ref["auc"])]
        parts.append(f"On the last round's {ev.n_pairs} test pairs, {name} after round {k} reaches "
                     f"{r['auc']:.3f} {_ci(r)} against " + ", ".join(bits) + ".")
    r0, rk = _row(shared, "expctr_llm_round_0"), _row(shared, f"expctr_llm_round_{k}")
    if r0 and rk and _ok(r0["auc"]) and _ok(rk["auc"]):
        trend = ", ".join(f"{_row(shared, f'expctr_llm_round_{j}')['auc']:.3f}" for j in ev.rounds
                          if _row(shared, f"expctr_llm_round_{j}") and _ok(_row(shared, f"expctr_llm_round_{j}")["auc"]))
        parts.append(f"On the {ev.n_shared} pairs every round saw, ExpCTR-LLM goes {trend} from the base explainer "
                     f"(round 0) to round {k}" + ("; the round-0 and round-" + str(k) + " intervals "
                                                 + ("overlap" if _overlap(r0, rk) else "do not overlap")) + ".")
    last = ev.round_rows[-1] if ev.round_rows else {}
    if _ok(last.get("positive_share")) and _ok(last.get("test_click_rate")):
        parts.append(f"Round {k} says \u201cwill probably enjoy\u201d on {last['positive_share']:.0%} of its pairs "
                     f"(click rate {last['test_click_rate']:.0%}); its verdict matches the click on "
                     f"{fmt(last.get('agree_label'), '0%')} and the ID model's decision on "
                     f"{fmt(last.get('agree_id'), '0%')} of pairs.")
    if _ok(last.get("aug_minus_id")):
        parts.append(f"ExpCTR-Aug minus the ID model: {last['aug_minus_id']:+.3f} AUC (paired 95 % interval "
                     f"[{fmt(last.get('aug_minus_id_ci_low'))}, {fmt(last.get('aug_minus_id_ci_high'))}]).")
    top = last.get("top_explanation_share")
    if _ok(top) and top >= 0.2 and top * ev.n_pairs >= 2:
        parts.append(f"{top:.0%} of round-{k} explanations are the same sentence "
                     f"(\u201c{last.get('top_explanation', '')}\u201d).")
    met = [t for t in ev.targets if t["met"] is True]
    missed = [t["target"] for t in ev.targets if t["met"] is False]
    if ev.targets:
        parts.append(f"Targets met: {len(met)} of {len(ev.targets)}"
                     + (f"; missed: {'; '.join(missed)}." if missed else "."))
    if ev.full_split:
        parts.append(f"The full-test-split numbers ({ev.full_split['rows']} rows) come from the ctr_model stage "
                     "and are not comparable row-for-row with the pair numbers.")
    return " ".join(parts)


def _rounds(ev: Evaluation) -> str:
    return f"round {ev.rounds[0]}" if len(ev.rounds) == 1 else f"rounds {ev.rounds[0]}–{ev.rounds[-1]}"


def _overlap(a: Mapping | None, b: Mapping | None) -> bool:
    if not a or not b:
        return False
    vals = [a.get("auc_ci_low"), a.get("auc_ci_high"), b.get("auc_ci_low"), b.get("auc_ci_high")]
    if not all(_ok(v) for v in vals):
        return False
    return not (vals[1] < vals[2] or vals[3] < vals[0])


def _half_width(rows: Sequence[Mapping]) -> float:
    w = [
        (r["auc_ci_high"] - r["auc_ci_low"]) / 2
        for r in rows
        if _ok(r.get("auc_ci_low")) and _ok(r.get("auc_ci_high"))
    ]
    return float(sum(w) / len(w)) if w else math.nan


# ------------------------------------------------------------------------------------------ markdown


def _md_cell(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _md_text(text: str) -> str:
    """Paragraph text that may quote data: no raw HTML survives (Dagster and viewers render Markdown)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    rule = "|" + "|".join(("---:" if align and i > 0 else "---") for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", rule]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _target_value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {'yes' if x else 'no'}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return fmt(v)


def _met(v: bool | None) -> str:
    return {True: "met", False: "missed", None: "n/a"}[v]


def markdown_summary(ev: Evaluation) -> str:
    k = ev.rounds[-1]
    out = [
        "# ExpCTR evaluation",
        "",
        f"**Last round's test pairs** (n = {ev.n_pairs}, click rate {ev.label_rate:.3f}), round {k}:",
        "",
        _md_table(["predictor", "AUC", "95% CI", "log-loss"],
                  [[r["predictor"], fmt(r["auc"]), _ci(r), fmt(r["logloss"])] for r in ev.pair_rows], "r"),
        "",
        f"**Every round on the same {ev.n_shared} pairs** (round 0 = the base explainer before any RL):",
        "",
        _md_table(["predictor", "AUC", "95% CI"],
                  [[r["predictor"], fmt(r["auc"]), _ci(r)] for r in ev.shared_rows], "r"),
        "",
    ]
    cols = [(key, head, spec) for key, head, spec in ROUND_COLUMNS
            if key in ("round", "test_pairs", "llm_auc", "aug_minus_id", "positive_share", "agree_label",
                       "agree_id", "faithfulness", "grounded", "share_one_sentence", "seconds")]
    out += [
        "**Per round** (each on its own test pairs):",
        "",
        _md_table([h for _, h, _ in cols], [[fmt(r.get(key), spec) for key, _, spec in cols] for r in ev.round_rows],
                  "r"),
        "",
        "**Targets** (issue 8):",
        "",
        _md_table(["target", "value", "reference", ""],
                  [[t["target"], _target_value(t.get("value")), _target_value(t.get("reference")), _met(t["met"])]
                   for t in ev.targets]),
        "",
        _md_text(reading(ev)),
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1,h2{font-weight:600}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ddd;padding:.3em .55em;
vertical-align:top}th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9em}figure{margin:1em 0}figcaption{color:#555;font-size:.88em}
img{max-width:100%;height:auto}td.expl{max-width:34em}code{background:#f4f4f4;padding:0 .2em}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[tuple[Any, bool]]], cls: str = "") -> str:
    """`rows` cells are (text, numeric); every cell is escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if num else cls}">{_e(v)}</td>' for v, num in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(name: str, png: bytes) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    cap = FIGURE_CAPTIONS.get(name, name)
    return (
        f'<figure><img alt="{_e(cap)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_e(cap)} (<code>{_e(name)}.png</code>)</figcaption></figure>"
    )


def _pred_table(rows: Sequence[Mapping]) -> str:
    return _html_table(["predictor", "AUC", "95% bootstrap CI", "log-loss", "n"],
                       [[(r["predictor"], False), (fmt(r["auc"]), True), (_ci(r), True), (fmt(r["logloss"]), True),
                         (r["n"], True)] for r in rows])


def _confusion(c: Mapping | None, what: str) -> str:
    if not c:
        return ""
    return _html_table([f"verdict \\ {what}", "positive", "negative"],
                       [[("will enjoy", False), (c["positive_verdict_and_positive"], True),
                         (c["positive_verdict_and_negative"], True)],
                        [("will not enjoy (or none)", False), (c["negative_verdict_and_positive"], True),
                         (c["negative_verdict_and_negative"], True)]])


def html_report(ev: Evaluation) -> str:
    k = ev.rounds[-1]
    last = ev.round_rows[-1] if ev.round_rows else {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>ExpCTR evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ExpCTR evaluation report</h1>",
        (f"<p>Rounds 0–{k} (round 0 = the base explainer before any RL). The LLM stages work on a seeded sample of "
         f"test pairs: the last round on all <b>{ev.n_pairs}</b> (click rate {ev.label_rate:.3f}), every earlier "
         f"round on the first <b>{ev.n_shared}</b>; the ID-based CTR models were also evaluated on the <b>full "
         "time-based test split</b>. Compare numbers within a table, not across.</p>"),
        f"<h2>Reading</h2><p>{_e(reading(ev))}</p>",
        "<h2>Targets</h2>",
        _html_table(["target", "value", "reference", ""],
                    [[(t["target"], False), (_target_value(t.get("value")), True),
                      (_target_value(t.get("reference")), True), (_met(t["met"]), False)] for t in ev.targets]),
        f"<h2>Every predictor on the last round's pairs (n = {ev.n_pairs})</h2>",
        ('<p class="note">ID-only = the primary ID model '
         f"(<code>{_e(ev.primary)}</code>); ExpCTR-Aug = ID features + explanation embeddings; ExpCTR-LLM = the "
         "frozen judge's P(Yes) after reading the round's explanation (its AUC is the LC-AUC); verdict logit = the "
         "explainer's own logit(\u201cenjoy\u201d) − logit(\u201cnot\u201d) after \u201cThe user will "
         "probably\u201d (a score: AUC only). History rules give scores, not probabilities: AUC only. Intervals: "
         "percentile bootstrap over pairs (seeded).</p>"),
        _pred_table(ev.pair_rows),
        f"<h2>Every round on the same {ev.n_shared} pairs</h2>",
        _pred_table(ev.shared_rows),
    ]
    for name in ("round_auc", "roc_test_pairs"):
        if name in ev.figures:
            parts.append(_figure(name, ev.figures[name]))
    if ev.full_split:
        fs = ev.full_split
        parts += [
            f"<h2>ID-based models on the full test split (n = {_e(fs['rows'])})</h2>",
            ('<p class="note">From <code>metrics/ctr.json</code> '
             f"(click rate {fmt(fs.get('label_rate'))}).</p>"),
            _html_table(["model", "AUC", "log-loss"],
                        [[(m["model"] + (" (primary)" if m["model"] == ev.primary else ""), False),
                          (fmt(m["auc"]), True), (fmt(m["logloss"]), True)] for m in fs["models"]]),
        ]
    parts += [
        "<h2>Rounds (each on its own test pairs)</h2>",
        _html_table([h for _, h, _ in ROUND_COLUMNS],
                    [[(fmt(r.get(key), spec), True) for key, _, spec in ROUND_COLUMNS] for r in ev.round_rows]),
        _DEFINITIONS,
        f"<h3>Round {k}: verdicts against the clicks and against the ID model's decision (p ≥ 0.5)</h3>",
        _confusion(last.get("confusion_label"), "click"),
        _confusion(last.get("confusion_id"), "ID model"),
    ]
    for name in ("round_verdicts", "reward_curves"):
        if name in ev.figures:
            parts.append(_figure(name, ev.figures[name]))
    rises = [(r["round"], name, v) for r in ev.round_rows for name, v in (r.get("rewards_rise") or {}).items()]
    if rises:
        parts += ["<h3>Do the rewards rise? (mean of the first vs the last quarter of each stage's steps)</h3>",
                  _html_table(["round", "stage / step", "first quarter", "last quarter", "rises"],
                              [[(k_, True), (name, False), (fmt(v.get("first_quarter")), True),
                                (fmt(v.get("last_quarter")), True), (_met(v.get("rises")).replace("met", "yes")
                                                                     .replace("missed", "no"), False)]
                               for k_, name, v in rises])]
    if ev.stage_seconds:
        total = sum(v for v in ev.stage_seconds.values() if v)
        parts += ["<h2>Wall time per stage</h2>",
                  _html_table(["stage", "seconds"], [[(s_, False), (fmt(v, "0f"), True)]
                                                     for s_, v in ev.stage_seconds.items()]
                              + [[("total (stages that record it)", False), (fmt(total, "0f"), True)]])]
    if ev.samples:
        parts += [
            f"<h2>Sample explanations (round {k})</h2>",
            _html_table(["user", "target", "label", "stance", "P(Yes) judge", "P(click) Aug", "P(click) ID",
                         "titles outside the context", "explanation"],
                        [[(s_["user_id"], False), (s_["target"], False), (s_["label"], True), (s_["stance"], True),
                          (fmt(s_["p_yes_judge"]), True), (fmt(s_["p_click_aug"]), True),
                          (fmt(s_["p_click_id"]), True), ("; ".join(s_["unseen_titles"]) or "–", False),
                          (s_["explanation"], False)] for s_ in ev.samples], cls="expl"),
        ]
    if ev.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in ev.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


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
the liked or disliked items (<code>expctr.evaluation.grounding</code>); <b>quotes a title outside</b>: share
quoting a span that is neither a history item nor the target (invented titles, prompt text quoted as a title).</li>
<li><b>positive verdicts</b>: share of explanations whose verdict is "will enjoy"; <b>verdict = click</b> /
<b>verdict = ID model</b>: share of pairs whose verdict equals the click / the ID model's P(click) &ge; 0.5 (no
verdict counts as "not").</li>
<li><b>Aug − ID</b>: ExpCTR-Aug's AUC minus the ID model's on the same pairs (paired bootstrap interval in
metrics/evaluation.json).</li>
<li><b>most common text</b>: share of the round's test explanations identical to its most frequent one.</li>
<li><b>one sentence</b>: a complete sentence within the token cap. <b>distinct-2</b>: distinct bigrams / all
bigrams over the round's explanations. <b>words</b>: whitespace-separated words. <b>stage s</b>: the round
stage's wall seconds.</li></ul></details>"""
