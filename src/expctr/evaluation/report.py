"""What the evaluation report shows, its plain-language reading and the short Markdown summary.

The Markdown has its table-breaking characters escaped and no raw HTML (Dagster renders it); the HTML report
is in `report_html`. No timestamps: the same inputs give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Evaluation:
    """Everything the report shows (computed by the evaluation_report stage)."""

    n_pairs: int  # the final round's test pairs
    n_shared: int  # the first n_shared pairs, which every round (0 = base explainer) was evaluated on
    label_rate: float
    rounds: list[int]  # 0..R
    primary: str
    pair_rows: list[dict]  # metrics.predictor_rows on the final round's pairs
    shared_rows: list[dict]  # metrics.predictor_rows of every round and baseline on the shared pairs
    shared_gains: dict[int, dict]  # round -> {llm_minus_id, aug_minus_id} on the shared pairs (paired CIs)
    round_rows: list[dict]  # one dict per round, on its own pairs
    ablation: dict  # the final round's ExpCTR-Aug ablation ({} without one)
    grades: list[dict]  # per verdict grade: the judge on the test pairs and on the RL pool
    aug_fit: dict  # the final round's Aug training per variant (curves)
    targets: list[dict]  # {target, level, value, reference, met}
    stage_seconds: dict  # stage -> wall seconds (None: not recorded)
    full_split: dict | None  # {"rows", "label_rate", "models": [{"model", "auc", "logloss"}]}
    samples: list[dict]
    figures: dict[str, bytes] = field(default_factory=dict)  # file stem -> PNG
    notes: list[str] = field(default_factory=list)


ROUND_COLUMNS: list[tuple[str, str, str]] = [  # key, header, format: each round on its own pairs
    ("round", "round", "d"),
    ("test_pairs", "pairs", "d"),
    ("llm_auc", "ExpCTR-LLM AUC", "3f"),
    ("stance_only_auc", "stance-only AUC", "3f"),
    ("verdict_logit_auc", "verdict-logit AUC", "3f"),
    ("llm_minus_id", "LLM − ID", "+.3f"),
    ("aug_auc", "ExpCTR-Aug AUC", "3f"),
    ("aug_facts_auc", "Aug facts AUC", "3f"),
    ("aug_minus_id", "Aug − ID", "+.3f"),
    ("explanation_minus_facts", "expl. − facts", "+.3f"),
    ("id_auc", "ID AUC", "3f"),
    ("positive_share", "positive verdicts", "3f"),
    ("test_click_rate", "click rate", "3f"),
    ("agree_label", "verdict = click", "3f"),
    ("agree_id", "verdict = ID model", "3f"),
    ("faithfulness", "faithful", "3f"),
    ("grounded", "grounded", "3f"),
    ("reason_grounded", "reason grounded (beyond the opening)", "3f"),
    ("outside_title_share", "quotes a title outside", "3f"),
    ("share_one_sentence", "one sentence", "3f"),
    ("top_explanation_share", "most common text", "3f"),
    ("distinct_2", "distinct-2", "3f"),
    ("mean_words", "words", "1f"),
    ("seconds", "stage s", "0f"),
]
_MD_ROUND_COLUMNS = ("round", "test_pairs", "llm_auc", "aug_auc", "aug_minus_id", "positive_share", "faithfulness",
                     "grounded", "outside_title_share", "share_one_sentence", "seconds")


def fmt(v: Any, spec: str = "3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if spec == "d":
        return str(int(v))
    if not isinstance(v, (int, float)):
        return str(v)
    return format(float(v), spec if spec.startswith("+") else f".{spec}")


def ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ci(row: Mapping | None, lo: str = "auc_ci_low", hi: str = "auc_ci_high", signed: bool = False) -> str:
    """`[low, high]` of a row's interval; – when it has none."""
    row = row or {}
    a, b = row.get(lo), row.get(hi)
    if not (ok(a) and ok(b)):
        return "–"
    return f"[{a:+.3f}, {b:+.3f}]" if signed else f"[{a:.3f}, {b:.3f}]"


def diff_text(d: Mapping | None) -> str:
    """A paired difference as `+0.012 [-0.003, +0.027]`."""
    d = d or {}
    return f"{fmt(d.get('diff'), '+.3f')} {ci(d, 'ci_low', 'ci_high', signed=True)}" if ok(d.get("diff")) else "–"


def row_of(rows: Sequence[Mapping], key: str) -> Mapping | None:
    return next((r for r in rows if r["key"] == key), None)


def overlap(a: Mapping | None, b: Mapping | None) -> bool:
    if not a or not b:
        return False
    vals = [a.get("auc_ci_low"), a.get("auc_ci_high"), b.get("auc_ci_low"), b.get("auc_ci_high")]
    if not all(ok(v) for v in vals):
        return False
    return not (vals[1] < vals[2] or vals[3] < vals[0])


def target_value(v: Any) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{k}: {target_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(target_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return fmt(v)


def met_text(v: bool | None) -> str:
    return {True: "met", False: "missed", None: "n/a"}[v]


ABLATION_ROWS = (("explanation", "(a) ExpCTR-Aug: ID + the pair's explanation"),
                 ("facts", "(b) Aug: ID + the prompt's facts only"),
                 ("shuffled", "(c) Aug: ID + another pair's explanation of the same user"))


def ablation_table(ev: Evaluation) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ablation: each variant and the ID model, then (a) - (b) and (a) - (c)."""
    ab = ev.ablation
    variants = ab.get("variants") or {}
    rows = [[name, fmt(variants[v].get("auc")), ci(variants[v]), fmt(variants[v].get("logloss")),
             diff_text(variants[v].get("minus_id"))] for v, name in ABLATION_ROWS if v in variants]
    idm = ab.get("id_only") or {}
    rows.append([f"ID model ({ev.primary})", fmt(idm.get("auc")), ci(idm), fmt(idm.get("logloss")), "–"])
    for key, name in (("explanation_minus_facts", "(a) − (b): what the explanation adds over the facts"),
                      ("explanation_minus_shuffled", "(a) − (c): the pair's own explanation over a shuffled one")):
        if key in ab:
            rows.append([name, diff_text(ab[key]), "", "", ""])
    return ["", "AUC", "95% CI", "log-loss", "minus ID (paired 95% CI)"], rows


def shared_round_table(ev: Evaluation) -> tuple[list[str], list[list[str]]]:
    """(header, rows): both predictors per round on the shared pairs, with their gains over the ID model."""
    shared = {r["key"]: r for r in ev.shared_rows}
    rows = []
    for k in ev.rounds:
        llm, aug = shared.get(f"expctr_llm_round_{k}"), shared.get(f"expctr_aug_round_{k}")
        g = ev.shared_gains.get(k) or {}
        rows.append(["base (0)" if k == 0 else str(k), fmt((llm or {}).get("auc")), ci(llm),
                     diff_text(g.get("llm_minus_id")), fmt((aug or {}).get("auc")), ci(aug),
                     diff_text(g.get("aug_minus_id"))])
    return ["round", "ExpCTR-LLM AUC", "95% CI", "LLM − ID", "ExpCTR-Aug AUC", "95% CI", "Aug − ID"], rows


def grade_table(ev: Evaluation) -> tuple[list[str], list[list[str]]]:
    return (["verdict grade", "test pairs", "judge mean P(Yes)", "click rate", "pool: judge mean P(Yes)",
             "pool: reads above the next grade"],
            [[g["grade"], str(g["n"]), fmt(g.get("mean_p_yes")), fmt(g.get("click_rate")),
              fmt(g.get("pool_mean_p_yes")), fmt(g.get("pool_ordered_with_next"))] for g in ev.grades])


def reading(ev: Evaluation) -> str:
    """One honest paragraph generated from the numbers (what they show, and how much n allows)."""
    k = ev.rounds[-1]
    final, shared = ev.pair_rows, ev.shared_rows
    parts: list[str] = []
    llm = row_of(final, f"expctr_llm_round_{k}")
    refs = [(name, row_of(final, key)) for name, key in ((f"the ID model ({ev.primary})", "id_only"),
                                                          ("the stated stance alone", f"stance_only_round_{k}"),
                                                          ("the zero-shot judge", "zero_shot_judge"),
                                                          ("the share-liked rule", "rule_share_liked"))]
    if llm and ok(llm["auc"]):
        bits = [f"{name} {r['auc']:.3f}" + (" (intervals overlap)" if overlap(llm, r) else "")
                for name, r in refs if r is not None and ok(r["auc"])]
        parts.append(f"On the final round's {ev.n_pairs} test pairs, ExpCTR-LLM after round {k} reaches "
                     f"{llm['auc']:.3f} {ci(llm)} against " + ", ".join(bits) + ".")
    if ev.ablation.get("reading"):
        parts.append(ev.ablation["reading"])
    trend = [(j, row_of(shared, f"expctr_llm_round_{j}"), row_of(shared, f"expctr_aug_round_{j}")) for j in ev.rounds]
    llm_trend = ", ".join(f"{r['auc']:.3f}" for _, r, _ in trend if r and ok(r["auc"]))
    aug_trend = ", ".join(f"{a['auc']:.3f}" for _, _, a in trend if a and ok(a["auc"]))
    if llm_trend:
        parts.append(f"On the {ev.n_shared} pairs every round saw, ExpCTR-LLM goes {llm_trend} from the base "
                     f"explainer to round {k}" + (f" and ExpCTR-Aug {aug_trend} from round 1" if aug_trend else "")
                     + ".")
    last = ev.round_rows[-1] if ev.round_rows else {}
    if ok(last.get("positive_share")) and ok(last.get("test_click_rate")):
        parts.append(f"Round {k} states a positive verdict on {last['positive_share']:.0%} of its pairs (click rate "
                     f"{last['test_click_rate']:.0%}); the stated side matches the click on "
                     f"{fmt(last.get('agree_label'), '0%')} and the ID model's decision on "
                     f"{fmt(last.get('agree_id'), '0%')} of pairs.")
    top = last.get("top_explanation_share")
    if ok(top) and top >= 0.2 and top * ev.n_pairs >= 2:
        parts.append(f"{top:.0%} of round-{k} explanations are the same sentence "
                     f"(\u201c{last.get('top_explanation', '')}\u201d).")
    if ev.targets:
        missed = [t["target"] for t in ev.targets if t["met"] is False]
        parts.append(f"Targets met: {sum(t['met'] is True for t in ev.targets)} of {len(ev.targets)}"
                     + (f"; missed: {'; '.join(missed)}." if missed else "."))
    if ev.full_split:
        parts.append(f"The full-test-split numbers ({ev.full_split['rows']} rows) come from the ctr_model stage "
                     "and are not comparable row-for-row with the pair numbers.")
    return " ".join(parts)


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
    k = ev.rounds[-1]
    out = [
        "# ExpCTR evaluation",
        "",
        f"**Final round's test pairs** (n = {ev.n_pairs}, click rate {ev.label_rate:.3f}), round {k}:",
        "",
        _md_table(["predictor", "AUC", "95% CI", "log-loss"],
                  [[r["predictor"], fmt(r["auc"]), ci(r), fmt(r["logloss"])] for r in ev.pair_rows], "r"),
        "",
    ]
    if ev.ablation:
        out += [f"**ExpCTR-Aug ablation** (round {ev.ablation['round']}, n = {ev.ablation.get('n')}):", "",
                _md_table(*ablation_table(ev), "r"), "", _md_text(ev.ablation.get("reading", "")), ""]
    out += [
        f"**Round over round on the same {ev.n_shared} pairs** (round 0 = the base explainer before any RL):",
        "",
        _md_table(*shared_round_table(ev), "r"),
        "",
        f"**The judge per verdict grade** (round {k}'s test pairs; pool = llm_pairs' bare sentences):",
        "",
        _md_table(*grade_table(ev), "r"),
        "",
        "**Per round** (each on its own test pairs):",
        "",
        _md_table([h for key, h, _ in ROUND_COLUMNS if key in _MD_ROUND_COLUMNS],
                  [[fmt(r.get(key), spec) for key, _, spec in ROUND_COLUMNS if key in _MD_ROUND_COLUMNS]
                   for r in ev.round_rows], "r"),
        "",
        "**Targets**:",
        "",
        _md_table(["target", "level", "value", "reference", ""],
                  [[t["target"], t.get("level", ""), target_value(t.get("value")),
                    target_value(t.get("reference")), met_text(t["met"])] for t in ev.targets]),
        "",
        _md_text(reading(ev)),
        "",
    ]
    return "\n".join(out)
