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

    n_pairs: int
    label_rate: float
    rounds: list[int]
    primary: str
    pair_rows: list[dict]  # metrics.predictor_rows on the test pairs
    round_rows: list[dict]  # one dict per round
    full_split: dict | None  # {"rows", "label_rate", "models": [{"model", "auc", "logloss"}]}
    samples: list[dict]
    figures: dict[str, bytes] = field(default_factory=dict)  # file stem -> PNG
    notes: list[str] = field(default_factory=list)


FIGURE_CAPTIONS = {
    "roc_test_pairs": "ROC curves of every predictor on the sampled LLM test pairs.",
    "round_auc": "AUC on the test pairs per round (bars) against the baselines (dashed lines).",
    "round_explanations": "Explanation metrics per round (test pairs).",
    "reward_curves": "GRPO reward per step in the LC and IC stages (mean over the step's completions, "
    "band = ± std), steps counted across rounds.",
}

ROUND_COLUMNS: list[tuple[str, str, str]] = [  # key, header, format
    ("round", "round", "d"),
    ("llm_auc", "ExpCTR-LLM AUC (= LC-AUC)", "3f"),
    ("aug_auc", "ExpCTR-Aug AUC", "3f"),
    ("aug_id_mean_abs_diff", "|Aug − ID| mean", "4f"),
    ("faithfulness", "faithfulness", "3f"),
    ("title_mention_share", "names a title", "3f"),
    ("stance_share", "has stance", "3f"),
    ("positive_stance_share", "positive stance", "3f"),
    ("stance_label_agreement", "stance = label", "3f"),
    ("stance_id_agreement", "stance = ID model", "3f"),
    ("share_one_sentence", "one sentence", "3f"),
    ("top_explanation_share", "most common text", "3f"),
    ("distinct_1", "distinct-1", "3f"),
    ("distinct_2", "distinct-2", "3f"),
    ("mean_words", "mean words", "1f"),
    ("rl_lc_reward_first", "LC reward first step", "3f"),
    ("rl_lc_reward_last", "LC reward last step", "3f"),
    ("rl_ic_reward_first", "IC reward first step", "3f"),
    ("rl_ic_reward_last", "IC reward last step", "3f"),
]


def fmt(v: Any, spec: str = "3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if spec == "d":
        return str(int(v))
    return format(float(v), f".{spec}") if isinstance(v, (int, float)) else str(v)


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
    rows = ev.pair_rows
    parts: list[str] = []
    ranked = sorted((r for r in rows if _ok(r["auc"])), key=lambda r: -r["auc"])
    if ranked:
        best = ranked[0]
        parts.append(
            f"On the {ev.n_pairs} sampled test pairs the highest AUC is {best['auc']:.3f}, by "
            f"{best['predictor']} (95% bootstrap interval {_ci(best)})."
        )
    aug, llm = _row(rows, f"expctr_aug_round_{k}"), _row(rows, f"expctr_llm_round_{k}")
    base = _row(rows, "id_only")
    rule = _row(rows, "rule_share_liked")
    zs = _row(rows, "zero_shot_judge")
    for name, r in (("ExpCTR-Aug", aug), ("ExpCTR-LLM", llm)):
        if r is None or not _ok(r["auc"]):
            continue
        refs = []
        for ref_name, ref in (
            (f"the ID-only {ev.primary}", base),
            ("the share-liked rule", rule),
            ("the zero-shot judge", zs),
        ):
            if ref is None or not _ok(ref["auc"]):
                continue
            overlap = _overlap(r, ref)
            refs.append(
                f"{ref_name} {ref['auc']:.3f}"
                + (" (intervals overlap)" if overlap else " (intervals do not overlap)")
            )
        parts.append(f"After round {k}, {name} reaches {r['auc']:.3f} vs " + ", ".join(refs) + ".")
    last = ev.round_rows[-1] if ev.round_rows else {}
    diff = last.get("aug_id_mean_abs_diff")
    top = last.get("top_explanation_share")
    if _ok(top) and top >= 0.2 and top * ev.n_pairs >= 2:
        parts.append(
            f"{top:.0%} of round-{k} explanations are the same sentence "
            f"(\u201c{last.get('top_explanation', '')}\u201d): the explainer has largely collapsed to one "
            "output, which caps what the explanation-based predictors can learn from it."
        )
    if _ok(diff) and diff < 0.01:
        parts.append(
            f"ExpCTR-Aug's probabilities differ from the ID model's by {diff:.4f} on average: the "
            "explanation embeddings barely move it."
        )
    if any(_overlap(r, o) for r in (aug, llm) if r for o in (base, rule, zs) if o):
        parts.append(
            f"With n = {ev.n_pairs} the AUC intervals are about ±"
            f"{_half_width(ranked):.2f} wide, so overlapping differences are not evidence either way."
        )
    if last:
        bits = []
        if _ok(last.get("stance_share")):
            bits.append(f"{last['stance_share']:.0%} of round-{k} explanations state a verdict")
        if _ok(last.get("stance_label_agreement")):
            bits.append(
                f"the verdict matches the true label for {last['stance_label_agreement']:.0%} of those "
                f"and the ID model for {fmt(last.get('stance_id_agreement'), '0%')}"
                if _ok(last.get("stance_id_agreement"))
                else f"the verdict matches the true label for {last['stance_label_agreement']:.0%} of those"
            )
        if _ok(last.get("faithfulness")):
            bits.append(
                f"{1 - last['faithfulness']:.0%} name a catalogue title outside the user's shown "
                f"history and the target (any title at all: {fmt(last.get('title_mention_share'), '0%')})"
            )
        if bits:
            text = "; ".join(bits)
            parts.append(text[:1].upper() + text[1:] + ".")
    if len(ev.round_rows) > 1:
        first = ev.round_rows[0]
        if _ok(first.get("distinct_2")) and _ok(last.get("distinct_2")):
            parts.append(
                f"Distinct-2 goes from {first['distinct_2']:.3f} (round 1) to {last['distinct_2']:.3f} "
                f"(round {k})."
            )
    steps = [r.get("rl_lc_steps") or 0 for r in ev.round_rows]
    if sum(steps):
        parts.append(
            f"The RL budget is small ({sum(steps)} LC steps in all), so the reward curves are noisy "
            "and say little about learning."
        )
    if ev.full_split:
        parts.append(
            f"The full-test-split numbers ({ev.full_split['rows']} rows) come from the ctr_model stage "
            "and are not comparable row-for-row with the pair numbers."
        )
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


def markdown_summary(ev: Evaluation) -> str:
    out = [
        "# ExpCTR evaluation",
        "",
        f"**Sampled LLM test pairs** (n = {ev.n_pairs}, click rate {ev.label_rate:.3f}), {_rounds(ev)}:",
        "",
        _md_table(
            ["predictor", "AUC", "95% CI", "log-loss"],
            [[r["predictor"], fmt(r["auc"]), _ci(r), fmt(r["logloss"])] for r in ev.pair_rows],
            "r",
        ),
        "",
    ]
    if ev.full_split:
        out += [
            f"**Full time-based test split** (n = {ev.full_split['rows']}, metrics/ctr.json):",
            "",
            _md_table(
                ["model", "AUC", "log-loss"],
                [[m["model"], fmt(m["auc"]), fmt(m["logloss"])] for m in ev.full_split["models"]],
                "r",
            ),
            "",
        ]
    cols = [
        ("round", "d"),
        ("llm_auc", "3f"),
        ("aug_auc", "3f"),
        ("faithfulness", "3f"),
        ("stance_label_agreement", "3f"),
        ("stance_id_agreement", "3f"),
        ("share_one_sentence", "3f"),
        ("distinct_2", "3f"),
        ("mean_words", "1f"),
    ]
    out += [
        "**Explanations per round** (test pairs):",
        "",
        _md_table([c for c, _ in cols], [[fmt(r.get(c), f) for c, f in cols] for r in ev.round_rows], "r"),
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


def html_report(ev: Evaluation) -> str:
    k = ev.rounds[-1]
    pairs_table = _html_table(
        ["predictor", "AUC", "95% bootstrap CI", "log-loss", "n"],
        [
            [
                (r["predictor"], False),
                (fmt(r["auc"]), True),
                (_ci(r), True),
                (fmt(r["logloss"]), True),
                (r["n"], True),
            ]
            for r in ev.pair_rows
        ],
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>ExpCTR evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ExpCTR evaluation report</h1>",
        (
            f"<p>{_rounds(ev).capitalize()}. The LLM stages work on a seeded sample of test pairs "
            f"(<b>n = {ev.n_pairs}</b>, click rate {ev.label_rate:.3f}); the ID-based CTR models were "
            "also evaluated on the <b>full time-based test split</b>. The two are different samples: "
            "compare numbers within a table, not across.</p>"
        ),
        f"<h2>Reading</h2><p>{_e(reading(ev))}</p>",
        f"<h2>Predictors on the sampled test pairs (n = {ev.n_pairs})</h2>",
        (
            '<p class="note">ID-only = the primary ID model '
            f"(<code>{_e(ev.primary)}</code>) scored on the pairs; ExpCTR-Aug = ID features + explanation "
            "embeddings; ExpCTR-LLM = the frozen judge's P(Yes) after reading the round's explanation "
            "(its AUC is the LC-AUC). History rules give scores, not probabilities: AUC only. Intervals: "
            "percentile bootstrap over pairs (1000 resamples, seeded).</p>"
        ),
        pairs_table,
    ]
    if ev.full_split:
        fs = ev.full_split
        parts += [
            f"<h2>ID-based models on the full test split (n = {_e(fs['rows'])})</h2>",
            (
                '<p class="note">From <code>metrics/ctr.json</code> '
                f"(click rate {fmt(fs.get('label_rate'))}); popularity has no per-pair score, "
                "so it appears only here.</p>"
            ),
            _html_table(
                ["model", "AUC", "log-loss"],
                [
                    [
                        (m["model"] + (" (primary)" if m["model"] == ev.primary else ""), False),
                        (fmt(m["auc"]), True),
                        (fmt(m["logloss"]), True),
                    ]
                    for m in fs["models"]
                ],
            ),
        ]
    if "roc_test_pairs" in ev.figures:
        parts.append(_figure("roc_test_pairs", ev.figures["roc_test_pairs"]))
    parts += [
        f"<h2>Explanations per round (test pairs, n = {ev.n_pairs})</h2>",
        _html_table(
            [h for _, h, _ in ROUND_COLUMNS],
            [[(fmt(r.get(key), spec), True) for key, _, spec in ROUND_COLUMNS] for r in ev.round_rows],
        ),
        _DEFINITIONS,
    ]
    for name in ("round_auc", "round_explanations", "reward_curves"):
        if name in ev.figures:
            parts.append(_figure(name, ev.figures[name]))
    if ev.samples:
        parts += [
            f"<h2>Sample explanations (round {k})</h2>",
            _html_table(
                [
                    "user",
                    "target",
                    "label",
                    "stance",
                    "P(Yes) judge",
                    "P(click) Aug",
                    "P(click) ID",
                    "titles outside the context",
                    "explanation",
                ],
                [
                    [
                        (s["user_id"], False),
                        (s["target"], False),
                        (s["label"], True),
                        (s["stance"], True),
                        (fmt(s["p_yes_judge"]), True),
                        (fmt(s["p_click_aug"]), True),
                        (fmt(s["p_click_id"]), True),
                        ("; ".join(s["unseen_titles"]) or "–", False),
                        (s["explanation"], False),
                    ]
                    for s in ev.samples
                ],
                cls="expl",
            ),
        ]
    if ev.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in ev.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_DEFINITIONS = f"""<details><summary>Definitions</summary><ul class="note">
<li><b>faithfulness</b>: share of explanations that name no catalogue title other than the pair's history
items and its target. Titles are matched against the whole catalogue, case-, punctuation-, accent- and
whitespace-insensitive, quotes stripped, MovieLens article suffixes undone ("Matrix, The" = "The Matrix"),
year optional, alternative titles in parentheses and the parts before and after a colon included. Titles of
two or more words with at least one uncommon word (and at least {MIN_STRONG_CHARS} letters) match anywhere
they are quoted, followed by their year or written with a capital (so "its heavy-metal soundtrack" is not
the film Heavy Metal); single-word or all-common-word titles ("Heat", "Big", "Only You") count only when
quoted or followed by their year; genre names and one-letter titles never count. Invented titles that are
not in the catalogue cannot be recognised, and the pair's whole history counts as shown: both make the
measure lenient. <b>names a title</b>: share naming any catalogue title.</li>
<li><b>|Aug − ID| mean</b>: mean absolute difference between ExpCTR-Aug's and the ID model's P(click) on
the pairs (how much the explanation embeddings change the prediction).</li>
<li><b>has stance</b>: share whose verdict (<code>stance</code>) is +1 or -1; <b>stance = label</b> /
<b>stance = ID model</b>: among those, the share whose verdict equals the true click / the ID model's
P(click) &ge; 0.5.</li>
<li><b>most common text</b>: share of the round's test explanations identical to its most frequent one
(1/n when all differ).</li>
<li><b>one sentence</b>: from <code>metrics/round_k.json</code> (complete sentence within the token cap).
<b>distinct-n</b>: distinct n-grams / all n-grams over the round's test explanations (lower-cased words; every
explanation starts with the fixed prefix "The user will probably", which lowers both).
<b>mean words</b>: whitespace-separated words.</li>
<li><b>LC reward first/last step</b>: mean GRPO reward of the stage's first and last step
(<code>models/rounds/round_k/rl_lc.jsonl</code>, <code>rl_ic.jsonl</code>).</li></ul></details>"""
