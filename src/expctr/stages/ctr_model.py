"""ctr_model stage: train and compare the ID-based CTR models on the time-based split.

Under `accelerate launch` (params `distributed`) every process trains each model data-parallel; the main
process alone scores the test split and writes models/ctr and the metrics.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_curve

from expctr import distributed
from expctr.config import Params
from expctr.ctr.batch import CTRData
from expctr.ctr.checkpoint import save_id_model
from expctr.ctr.models import build_model
from expctr.ctr.popularity import Popularity
from expctr.ctr.trainer import binary_metrics, fit, predict
from expctr.data.features import SPLITS, FeatureMap
from expctr.errors import ExpCTRError
from expctr.io import atomic_path, write_json
from expctr.paths import ProjectPaths


def load_splits(paths: ProjectPaths) -> tuple[dict[str, pl.DataFrame], FeatureMap]:
    fdir = paths.features
    if not (fdir / "feature_map.json").exists():
        raise ExpCTRError(f"{fdir}/feature_map.json not found: run the features stage first (`dvc repro features`)")
    return {s: pl.read_parquet(fdir / f"{s}.parquet") for s in SPLITS}, FeatureMap.load(fdir / "feature_map.json")


def roc_points(labels: np.ndarray, probs: np.ndarray, max_points: int = 200) -> pl.DataFrame:
    fpr, tpr, _ = roc_curve(labels, probs)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    return pl.DataFrame({"fpr": np.round(fpr[keep], 5), "tpr": np.round(tpr[keep], 5)})


def run(params: Params, paths: ProjectPaths) -> dict:
    p = params.ctr
    torch.set_num_threads(p.threads)
    frames, fmap = load_splits(paths)
    data = {s: CTRData.from_frame(frames[s]) for s in SPLITS}
    main = distributed.is_main_process()
    if not main:
        del frames  # the other processes need the tensors alone: each holds its own copy in memory
    names = [n for n in p.compare if n != "popularity"]
    if p.side_by_side > 1 and distributed.world_size() == 1 and p.device == "cpu":
        trained = _train_side_by_side(params, paths, fmap, names)
    else:
        trained: dict[str, tuple] = {}
        for name in names:  # every process: the collective part
            started = time.perf_counter()
            model = build_model(name, fmap, p, seed=params.seed)
            res = fit(model, data["train"], data["valid"], p, params.seed, desc=name, data_parallel=True)
            trained[name] = (model, res, time.perf_counter() - started)
    if not main:
        return {}
    return _score_and_write(params, paths, frames, data, trained)


_WORKER: dict = {}


def _init_trainer(root: str, threads: int) -> None:
    torch.set_num_threads(threads)
    frames, fmap = load_splits(ProjectPaths(Path(root)))
    _WORKER.update(fmap=fmap, data={s: CTRData.from_frame(frames[s]) for s in ("train", "valid")})


def _train_one(name: str, params: Params) -> tuple[dict, object, float]:
    started = time.perf_counter()
    model = build_model(name, _WORKER["fmap"], params.ctr, seed=params.seed)
    res = fit(model, _WORKER["data"]["train"], _WORKER["data"]["valid"], params.ctr, params.seed, desc=name)
    return model.state_dict(), res, time.perf_counter() - started


def _train_side_by_side(params: Params, paths: ProjectPaths, fmap: FeatureMap, names: list[str]) -> dict[str, tuple]:
    """Each model trained in one of `ctr.side_by_side` spawned processes of `threads // side_by_side` threads: a
    CPU runs these small models faster side by side than one after another on all threads (each model's result
    is its seed's at that thread count, whichever process trains it). Returns (model, fit result, seconds)."""
    p = params.ctr
    threads = max(1, p.threads // p.side_by_side)
    context = multiprocessing.get_context("spawn")  # never fork a process that has started torch's threads
    with ProcessPoolExecutor(min(p.side_by_side, len(names)), mp_context=context, initializer=_init_trainer,
                             initargs=(str(paths.root), threads)) as pool:
        futures = {name: pool.submit(_train_one, name, params) for name in names}
        trained = {}
        for name, future in futures.items():
            state, res, seconds = future.result()
            model = build_model(name, fmap, p, seed=params.seed)
            model.load_state_dict(state)
            trained[name] = (model, res, seconds)
    return trained


def _score_and_write(params: Params, paths: ProjectPaths, frames: dict[str, pl.DataFrame],
                     data: dict[str, CTRData], trained: dict[str, tuple]) -> dict:
    """Main process only: test metrics, checkpoints, ROC points and training curves."""
    p = params.ctr
    test_labels = data["test"].labels.numpy()
    results: dict[str, dict] = {}
    curves: dict[str, pl.DataFrame] = {}
    rocs: dict[str, pl.DataFrame] = {}
    with atomic_path(paths.ctr_models) as out:
        out.mkdir()
        shutil.copy(paths.features / "feature_map.json", out / "feature_map.json")
        for name in p.compare:
            if name == "popularity":
                started = time.perf_counter()
                pop = Popularity().fit(frames["train"]["item_idx"].to_numpy(), frames["train"]["label"].to_numpy())
                probs = pop.predict(frames["test"]["item_idx"].to_numpy())
                write_json(out / "popularity.json", pop.to_dict())
                info = {"train_seconds": round(time.perf_counter() - started, 3)}
            else:
                model, res, train_seconds = trained[name]
                probs = predict(model, data["test"], p.batch_size, next(model.parameters()).device)
                epoch_s = [r["seconds"] for r in res.curve]
                info = {"best_epoch": res.best_epoch, "valid_auc": res.best_valid_auc, "epochs_run": len(res.curve),
                        "seconds_per_epoch": round(float(np.mean(epoch_s)), 3),
                        "train_seconds": round(train_seconds, 3),
                        "parameters": sum(t.numel() for t in model.parameters())}
                # the checkpoint keeps what the model is, not how long it took: a rerun writes the same bytes
                save_id_model(out / f"{name}.pt", name, model.cpu(), params.ctr,
                              {k: v for k, v in info.items() if "seconds" not in k})
                curves[name] = pl.DataFrame(res.curve)
            test = binary_metrics(test_labels, probs)
            results[name] = {"test_auc": test["auc"], "test_logloss": test["logloss"], **info}
            rocs[name] = roc_points(test_labels, probs)
        write_json(out / "primary.json", {"model": p.model, "checkpoint": f"{p.model}.pt"})
    metrics = {"primary": p.model, "test_rows": len(test_labels),
               "test_label_rate": float(test_labels.mean()) if len(test_labels) else 0.0,
               "models": results, "primary_test_auc": results[p.model]["test_auc"],
               "primary_test_logloss": results[p.model]["test_logloss"]}
    write_json(paths.metric("ctr.json"), metrics)
    for folder, tables in (("ctr_roc", rocs), ("ctr_training", curves)):
        with atomic_path(paths.metric(folder)) as tmp:
            tmp.mkdir()
            for name, df in tables.items():
                df.write_csv(tmp / f"{name}.csv")
    return metrics
