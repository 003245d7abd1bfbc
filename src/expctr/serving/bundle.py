"""The final model pair as one self-contained directory (what the BentoML model store holds).

Layout::

    manifest.json            versions, settings the predictor needs, file hashes
    ctr/text_ctr.pt          ExpCTR-Aug of the last round (its base is the ID model)
    ctr/feature_map.json     vocabularies the models were trained with
    catalogue.parquet        item_id, title, year, genres, viewers, liked_share + model indices
    users.parquet            known users: ID feature indices + their K most recent ratings
    llm/base/                the base LLM (safetensors + tokenizer), never modified
    llm/adapter/             the final LoRA adapter (IC stage of the last round)
    encoder/                 all-MiniLM-L6-v2 (sentence-transformers)

Known users' histories are their K most recent ratings over all splits: at serving time the whole log is
the past. Everything is copied, so a registered model never depends on the project checkout.

Each catalogue item carries the statistics the explainer's prompt states about its target ("Liked by 72% of
its 1204 viewers so far."): `viewers` and `liked_share` over the TRAINING ratings the models were trained on,
by the same function and prior the training pairs use (`expctr.data.pairs.target_stats`, with every
training rating in the past). Without them a served prompt would differ from every prompt the explainer was
trained on. An item nobody rated in training has viewers 0 ("Nobody has rated it yet."); with
`llm.target_stats: false` both are null and the prompt has no reception line, as in training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from expctr.config import Params
from expctr.data.features import OOV, PAD, FeatureMap
from expctr.data.pairs import target_stats
from expctr.data.sources import sha256_file
from expctr.errors import ExpCTRError
from expctr.llm.encoder import prepare_encoder
from expctr.llm.verdicts import EXPLANATION_PREFIX
from expctr.paths import ProjectPaths

MANIFEST = "manifest.json"
PINNED_MODEL = "pinned_model.txt"  # beside a built Bento's service: the model tag it serves (not the store's latest)
FORMAT_VERSION = 2  # 2: catalogue viewers / liked_share


def dir_digest(path: str | Path) -> str:
    """sha256 over (relative name, file sha256) of every file: a version id for a directory."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def git_commit(root: str | Path) -> str:
    """HEAD's commit (with "+dirty" when tracked files other than pipeline records changed), or "unknown".

    metrics/ and dvc.lock are left out of the dirty check: DVC deletes a stage's metrics before running it and
    rewrites the lock after, so they always differ while the `bento` stage runs."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)metrics", ":(exclude)dvc.lock"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def dvc_lock_hashes(root: str | Path, stages: list[str]) -> dict[str, str]:
    """md5 of each stage's outputs as recorded in dvc.lock ({} when there is no lock file)."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    out = {}
    for stage in stages:
        for o in (data.get("stages", {}).get(stage, {}) or {}).get("outs", []) or []:
            out[f"{stage}:{o['path']}"] = o.get("md5", "")
    return out


def _vocab_idx(vocab: dict[str, int], value: Any) -> int:
    return PAD if value is None else vocab.get(str(value), OOV)


def item_stats(items: pl.DataFrame, train: pl.DataFrame | None) -> pl.DataFrame:
    """item_id, viewers, liked_share of every catalogue item over all of `train` (None: null statistics).

    `target_stats` counts the ratings strictly before a pair's time; asking at one second after the last
    training rating counts them all, so serving states exactly what training's formula gives the present."""
    if train is None:
        return items.select("item_id", pl.lit(None, pl.Int64).alias("viewers"),
                            pl.lit(None, pl.Float64).alias("liked_share"))
    now = int(train["timestamp"].max()) + 1 if train.height else 0
    asked = items.select("item_id", pl.col("item_code").cast(train.schema["item_code"]),
                         pl.lit(now, pl.Int64).cast(train.schema["timestamp"]).alias("timestamp"))
    return target_stats(asked, train).select("item_id", pl.col("viewers").cast(pl.Int64),
                                             pl.col("liked_share").cast(pl.Float64))


def catalogue_table(items: pl.DataFrame, fmap: FeatureMap, train: pl.DataFrame | None = None) -> pl.DataFrame:
    """Catalogue rows with the model indices of each item (unknown to training -> OOV) and its training
    statistics (`item_stats`)."""
    g = fmap.max_genres
    if train is not None and "item_code" not in items.columns:
        raise ExpCTRError("catalogue_table: items need an item_code column to attach training statistics")
    stats = {r["item_id"]: r for r in item_stats(items, train).iter_rows(named=True)}
    rows = []
    for r in items.iter_rows(named=True):
        st = stats.get(r["item_id"], {})
        genres = [str(x) for x in (r["genres"] or [])]
        gidx = [_vocab_idx(fmap.vocabs["genre"], x) for x in genres[:g]]
        rows.append({
            "item_id": r["item_id"], "title": r["title"] or "", "year": r["year"], "genres": genres,
            "item_idx": _vocab_idx(fmap.vocabs["item"], r["item_id"]),
            "decade_idx": _vocab_idx(fmap.vocabs["decade"], r.get("decade")),
            "genre_idx": gidx + [PAD] * (g - len(gidx)),
            "viewers": st.get("viewers"), "liked_share": st.get("liked_share"),
        })
    return pl.DataFrame(rows, schema={"item_id": pl.String, "title": pl.String, "year": pl.Int32,
                                      "genres": pl.List(pl.String), "item_idx": pl.Int32,
                                      "viewers": pl.Int64, "liked_share": pl.Float64,
                                      "decade_idx": pl.Int32, "genre_idx": pl.List(pl.Int32)})


def users_table(users: pl.DataFrame, interactions: pl.DataFrame, fmap: FeatureMap) -> pl.DataFrame:
    """Known users: feature indices and their K most recent (item_id, rating), most recent last."""
    k = fmap.history_len
    recent = (
        interactions.sort(["user_id", "timestamp", "item_id"])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").tail(k).alias("hist_item_id"), pl.col("rating").tail(k).cast(pl.Float32).alias("hist_rating"))
    )
    v = fmap.vocabs
    enc = users.select(
        "user_id",
        pl.col("user_id").map_elements(lambda x: _vocab_idx(v["user"], x), return_dtype=pl.Int32).alias("user_idx"),
        pl.col("gender").map_elements(lambda x: _vocab_idx(v["gender"], x), return_dtype=pl.Int32).alias("gender_idx"),
        pl.col("age").map_elements(lambda x: _vocab_idx(v["age"], x), return_dtype=pl.Int32).alias("age_idx"),
        pl.col("occupation").map_elements(lambda x: _vocab_idx(v["occupation"], x), return_dtype=pl.Int32
                                          ).alias("occupation_idx"),
    )
    out = enc.join(recent, on="user_id", how="left")
    return out.with_columns(pl.col("hist_item_id").fill_null(pl.lit([], dtype=pl.List(pl.String))),
                            pl.col("hist_rating").fill_null(pl.lit([], dtype=pl.List(pl.Float32))))


def _copytree(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise ExpCTRError(f"{src}: missing (run the pipeline up to the last round first: dvc repro)")
    shutil.copytree(src, dst)


def write_bundle(dest: str | Path, root: str | Path, params: Params) -> dict[str, Any]:
    """Copy the final model pair of the project at `root` into `dest` (an empty or new directory).

    Returns the manifest. The caller owns atomicity (BentoML's model store writes to a temporary
    directory and only registers it when the `with` block succeeds; `expctr bundle` renames).
    """
    root, dest = Path(root), Path(dest)
    paths = ProjectPaths(root)
    k = params.rounds
    round_dir = paths.round_dir(k)
    fmap_path = paths.ctr_models / "feature_map.json"
    for need in (round_dir / "text_ctr.pt", round_dir / "adapter", fmap_path, paths.base_llm,
                 paths.features / "items.parquet", paths.features / "train.parquet", paths.raw / "users.parquet", paths.raw / "interactions.parquet"):
        if not need.exists():
            raise ExpCTRError(f"{need}: missing (run the pipeline up to explainer_round_{k} first: dvc repro)")
    dest.mkdir(parents=True, exist_ok=True)
    fmap = FeatureMap.load(fmap_path)
    (dest / "ctr").mkdir(exist_ok=True)
    shutil.copy2(round_dir / "text_ctr.pt", dest / "ctr" / "text_ctr.pt")
    shutil.copy2(fmap_path, dest / "ctr" / "feature_map.json")
    train = (pl.read_parquet(paths.features / "train.parquet", columns=["item_code", "timestamp", "label"])
             if params.llm.target_stats else None)
    catalogue_table(pl.read_parquet(paths.features / "items.parquet"), fmap, train).write_parquet(
        dest / "catalogue.parquet")
    users_table(pl.read_parquet(paths.raw / "users.parquet"), pl.read_parquet(paths.raw / "interactions.parquet"),
                fmap).write_parquet(dest / "users.parquet")
    (dest / "llm").mkdir(exist_ok=True)
    _copytree(paths.base_llm, dest / "llm" / "base")
    _copytree(round_dir / "adapter", dest / "llm" / "adapter")
    _copytree(prepare_encoder(paths.resolve(params.data.cache_dir)), dest / "encoder")

    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": params.data.dataset if params.data.source == "embedded" else params.data.format,
        "rounds": k,
        "git_commit": git_commit(root),
        "dvc_lock": dvc_lock_hashes(root, ["ctr_model", "base_llm", f"explainer_round_{k}"]),
        "versions": {
            "ctr_model": sha256_file(dest / "ctr" / "text_ctr.pt")[:16],
            "explainer_adapter": dir_digest(dest / "llm" / "adapter")[:16],
            "base_llm": dir_digest(dest / "llm" / "base")[:16],
        },
        "history_len": fmap.history_len,
        "click_threshold": fmap.click_threshold,
        "rating_range": list(params.data.rating_range),
        "max_prompt_tokens": params.llm.max_prompt_tokens,
        "explanation_prefix": EXPLANATION_PREFIX,
        "target_stats": params.llm.target_stats,
        "llm": {"dtype": params.llm.dtype, "device": params.llm.device,
                "quote_free_reason": params.llm.quote_free_reason},
        "serving": params.serving.model_dump(),
        "n_items": pl.read_parquet(dest / "catalogue.parquet").height,
        "n_users": pl.read_parquet(dest / "users.parquet").height,
    }
    manifest["versions"]["model"] = hashlib.sha256(
        json.dumps(manifest["versions"], sort_keys=True).encode()).hexdigest()[:16]
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    if not path.exists():
        raise ExpCTRError(f"{path}: not a model-pair bundle (no {MANIFEST}; build one with `expctr bundle`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExpCTRError(f"{path}: bundle format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


__all__ = ["MANIFEST", "PINNED_MODEL", "catalogue_table", "dir_digest", "dvc_lock_hashes", "git_commit", "item_stats", "read_manifest",
           "sha256_file", "users_table", "write_bundle"]
