"""Trust benchmark of the served Bento: do its explanations agree with their scores, cite the user's own
history, name only real titles of the pair, and come as one complete sentence; and how fast are they.

Usage:  .venv/bin/python bench/trust_bench.py [--target expctr:latest] [--users 100] [--candidates 10] [--cold 20]
Needs a packaged Bento (`dvc repro bento`). Starts `bentoml serve TARGET` on a free port of 127.0.0.1 (or uses
a running server: --url), then sends, one request at a time:

- known users:  --users random known users x --candidates random catalogue items outside their history,
                `POST /predict` with `explain: true` (100 x 10 = 1,000 explained pairs by default);
- cold start:   --cold histories of other known users sent as a `history` (item, rating) list, with
                --candidates items each.

Each request is sent twice: first uncached (cold latency: the explanations are written), then again (cached
latency). Every explanation of the first pass is checked from its text alone, with the library's checks and
the history the explainer saw (rebuilt with the bundle's tokenizer and prompt budget):

- stance-score agreement: the verdict the text states ("will probably (not) enjoy") is the one its p_click
  implies (>= decision_threshold: enjoy);                                                      goal 100 %
- grounded: names a history item or a genre the target shares with the history;              goal >= 95 %
- invented titles: quoted spans that are no item of the pair, split into catalogue titles and titles that
  exist nowhere, plus unquoted catalogue titles outside the pair;                                 goal 0
- complete single sentences;                                                                  goal 100 %
- the reason's side: a positive verdict citing the liked side, a negative one the disliked side (diagnostic);
- the server's own flags (faithful / grounded / complete, regenerated) and where p_click came from.

Results: bench/results/trust.json (written atomically; --out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import polars as pl
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import explainer_counts, free_port, start_server, stop_server, wait_ready

from expctr.config import ServingParams
from expctr.evaluation.faithfulness import TitleIndex, quoted_outside, title_keys, unseen_mentions
from expctr.evaluation.grounding import grounding
from expctr.llm.explanations import stance
from expctr.llm.prompts import Item
from expctr.serving.checks import is_one_complete_sentence
from expctr.serving.prompt import served_prompt


class Bundle:
    """The packaged pair's catalogue, known users and prompt settings (what the explainer was shown)."""

    def __init__(self, path: Path):
        from expctr.llm.base_model import load_tokenizer

        self.manifest = json.loads((path / "manifest.json").read_text())
        cat = pl.read_parquet(path / "catalogue.parquet")
        self.item_ids = cat["item_id"].to_list()
        self.items = {i: Item(t, y, tuple(g or ()), viewers=v, liked_share=s) for i, t, y, g, v, s in
                      zip(self.item_ids, cat["title"].to_list(), cat["year"].to_list(), cat["genres"].to_list(),
                          cat["viewers"].to_list(), cat["liked_share"].to_list())}
        self.index = TitleIndex.from_catalogue(cat["title"].to_list(), cat["year"].to_list())
        self.users = {r["user_id"]: list(zip(r["hist_item_id"], r["hist_rating"]))
                      for r in pl.read_parquet(path / "users.parquet").iter_rows(named=True)}
        self.threshold = float(self.manifest["click_threshold"])
        self.k = int(self.manifest["history_len"])
        self.max_prompt_tokens = int(self.manifest["max_prompt_tokens"])
        # the server's opening mode: its packaged serving params (defaults where they predate a setting)
        self.opening = ServingParams.model_validate(self.manifest.get("serving", {})).reason_opening
        self.tokenizer = load_tokenizer(path / "llm" / "base")

    def history(self, rated: list[tuple[str, float]]) -> list[Item]:
        """The explainer's history for (item, rating) pairs: known items, most recent K, liked by threshold."""
        out = []
        for item_id, rating in rated:
            if item_id in self.items:
                it = self.items[item_id]
                out.append(Item(it.title, it.year, it.genres, float(rating) >= self.threshold))
        return out[-self.k:]

    def seen(self, history: list[Item], target: Item, positive: bool) -> list[Item]:
        """The part of the history that fit the prompt, as the server builds it."""
        return served_prompt(self.tokenizer, history, target, 0.9 if positive else 0.1, self.max_prompt_tokens,
                             self.opening).history


def plan_requests(bundle: Bundle, n_users: int, n_cold: int, n_cand: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    users = sorted(u for u, h in bundle.users.items() if h)
    if len(users) < n_users + n_cold:
        raise SystemExit(f"the bundle has {len(users)} users with a history; asked for {n_users} + {n_cold}")
    picked = rng.sample(users, n_users + n_cold)

    def candidates(rated):
        mine = {i for i, _ in rated}
        pool = [i for i in bundle.item_ids if i not in mine]
        return rng.sample(pool, n_cand)

    plans = []
    for n, uid in enumerate(picked):
        rated = [(i, float(r)) for i, r in bundle.users[uid]]
        body = {"candidates": candidates(rated), "explain": True}
        if n < n_users:
            plans.append({"kind": "known", "rated": rated, "body": {"user_id": uid, **body}})
        else:
            hist = [{"item_id": i, "rating": r} for i, r in rated if i in bundle.items]
            plans.append({"kind": "cold", "rated": rated, "body": {"history": hist, **body}})
    return plans


def send_all(url: str, plans: list[dict], desc: str) -> list[tuple[float, int, dict | None]]:
    out = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for plan in tqdm(plans, desc=desc, unit="request"):
            t0 = time.perf_counter()
            try:
                r = client.post("/predict", json=plan["body"])
                status, body = r.status_code, (r.json() if r.status_code == 200 else None)
            except httpx.HTTPError:
                status, body = -1, None
            out.append((time.perf_counter() - t0, status, body))
    return out


def latency(results, kinds: list[str] | None = None, plans=None, where=None) -> dict:
    """p50/p95/mean of the requests of `kinds` (all when None) for which `where(body)` holds (all when None)."""
    ms = np.array([lat for n, (lat, _, body) in enumerate(results)
                   if (kinds is None or plans[n]["kind"] in kinds) and (where is None or where(body))]) * 1000
    if not len(ms):
        return {"requests": 0}
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "mean_ms": round(float(ms.mean()), 1)}


def any_regenerated(body: dict | None) -> bool:
    """Whether the server wrote any explanation of this slate a second time (a second generation pass)."""
    return bool(body) and any(it.get("regenerated") for it in body["items"] if it.get("explanation"))


def check_items(bundle: Bundle, plans: list[dict], results) -> tuple[dict, list[dict]]:
    """Every explained item of the first pass, checked from its text (see the module docstring)."""
    rows = []
    for plan, (_, status, body) in zip(plans, results):
        if status != 200 or body is None:
            continue
        history = bundle.history(plan["rated"])
        for it in body["items"]:
            target = bundle.items[it["item_id"]]
            positive = it["p_click"] >= body["decision_threshold"]
            seen = bundle.seen(history, target, positive)
            text = it["explanation"] or ""
            quoted = quoted_outside(text, seen, target)
            in_catalogue = [q for q in quoted if any(k in bundle.index.titles for k in title_keys(q))]
            unquoted = [m.title for m in unseen_mentions(bundle.index, text, seen, target)
                        if not any(m.key in title_keys(q) for q in quoted)]
            g = grounding(text, seen, target)
            rows.append({
                "kind": plan["kind"], "item_id": it["item_id"], "p_click": it["p_click"], "p_source": it["p_source"],
                "explanation": text, "stance_agrees": stance(text) == (1 if positive else -1),
                "stance_field_agrees": it["stance"] == ("enjoy" if positive else "not_enjoy"),
                "grounded": g.grounded, "side_agrees": ("liked" if positive else "disliked") in g.sides(),
                "invented": [q for q in quoted if q not in in_catalogue], "catalogue_outside": in_catalogue + unquoted,
                "complete": is_one_complete_sentence(text),
                "flags": {k: it[k] for k in ("faithful", "grounded", "complete", "regenerated", "cached")},
            })
    n = len(rows)

    def share(pred) -> float | None:
        return round(sum(1 for r in rows if pred(r)) / n, 4) if n else None

    grounded_rows = [r for r in rows if r["grounded"]]
    summary = {
        "explanations": n,
        "stance_score_agreement": share(lambda r: r["stance_agrees"]),
        "stance_field_agreement": share(lambda r: r["stance_field_agrees"]),
        "grounded_rate": share(lambda r: r["grounded"]),
        "reason_side_agrees_with_verdict": round(sum(r["side_agrees"] for r in grounded_rows) / len(grounded_rows), 4)
        if grounded_rows else None,
        "explanations_with_invented_titles": sum(1 for r in rows if r["invented"]),
        "invented_titles": sum(len(r["invented"]) for r in rows),
        "explanations_with_catalogue_titles_outside_pair": sum(1 for r in rows if r["catalogue_outside"]),
        "catalogue_titles_outside_pair": sum(len(r["catalogue_outside"]) for r in rows),
        "complete_single_sentence_rate": share(lambda r: r["complete"]),
        "server_flags": {
            "faithful_false": sum(1 for r in rows if r["flags"]["faithful"] is False),
            "grounded_false": sum(1 for r in rows if r["flags"]["grounded"] is False),
            "complete_false": sum(1 for r in rows if r["flags"]["complete"] is False),
            "regenerated": sum(1 for r in rows if r["flags"]["regenerated"]),
            "flags_match_checks": share(lambda r: r["flags"]["grounded"] == r["grounded"]
                                        and r["flags"]["complete"] == r["complete"]
                                        and r["flags"]["faithful"] == (not r["invented"] and not r["catalogue_outside"])),
        },
        "p_source": dict(Counter(r["p_source"] for r in rows)),
        "by_kind": {kind: {"explanations": sum(1 for r in rows if r["kind"] == kind),
                           "grounded_rate": round(float(np.mean([r["grounded"] for r in rows if r["kind"] == kind])), 4)}
                    for kind in sorted({r["kind"] for r in rows})},
    }
    return summary, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="expctr:latest", help="Bento tag to serve (ignored with --url)")
    ap.add_argument("--model", default="expctr_pair:latest", help="the served model pair in the BentoML store")
    ap.add_argument("--url", default=None, help="use this running server instead of starting one")
    ap.add_argument("--users", type=int, default=100, help="known users (one request each)")
    ap.add_argument("--cold", type=int, default=20, help="cold-start histories (one request each)")
    ap.add_argument("--candidates", type=int, default=10, help="explained candidates per request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=12, help="explained items kept in the results file")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trust.json")
    args = ap.parse_args(argv)

    import bentoml

    bundle = Bundle(Path(bentoml.models.get(args.model).path))
    plans = plan_requests(bundle, args.users, args.cold, args.candidates, args.seed)
    proc, url = None, args.url
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.target, port, None, args.out.with_suffix(".server.log"))
    try:
        ready_s = wait_ready(url, proc, timeout=600) if proc is not None else None
        cold = send_all(url, plans, "uncached")
        cached = send_all(url, plans, "cached")
        counts = explainer_counts(url)
    finally:
        stop_server(proc)
    summary, rows = check_items(bundle, plans, cold)
    errors = Counter(str(s) for _, s, _ in cold + cached if s != 200)
    res = {
        "target": args.target if proc is not None else "running server", "model": args.model,
        "cpu_threads": os.cpu_count(), "ready_s": None if ready_s is None else round(ready_s, 1),
        "settings": {"users": args.users, "cold": args.cold, "candidates": args.candidates, "seed": args.seed},
        "decision_threshold": next((b["decision_threshold"] for _, _, b in cold if b), None),
        "errors": dict(errors),
        **summary,
        "latency": {
            "uncached": latency(cold), "cached": latency(cached),
            "uncached_known_users": latency(cold, ["known"], plans),
            "uncached_cold_start": latency(cold, ["cold"], plans),
            # Why a slate is slow: a regenerated explanation costs the slate a second generation pass.
            "uncached_no_regeneration": latency(cold, where=lambda b: b is not None and not any_regenerated(b)),
            "uncached_with_regeneration": latency(cold, where=any_regenerated),
        },
        "all_cached_on_second_pass": all(it["cached"] for _, s, b in cached if b for it in b["items"]),
        "explainer_counts": counts,
        "examples": rows[:args.examples],
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in res.items() if k != "examples"}, indent=2))
    print(f"wrote {args.out}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
