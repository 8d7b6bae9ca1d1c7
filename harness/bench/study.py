"""A small fixed full-protocol JSB study, and what it says about whole studies.

`time_study`: `configurations` vanilla-LSTM configurations drawn once (numpy seed 0) from
`search.space` (Greff et al.'s ranges), each trained with the full protocol (`max_epochs`,
`patience` of the root config: 150 and 15) by a pool of 1 and of 2 worker processes (one
torch thread each, as a sweep's workers), on the native engine; with `today: true` also on
the torch autograd path without denormal flushing (how trials ran before the native
engine), 2 workers. Wall time from the first trial handed out to the last one back.

`project_studies`: the hours of a study of `trials_per_model` trials for each of Greff's
nine LSTM variants, the GRU and the GF-LSTM (11 models) on this machine with 2 workers.
JSB: the measured seconds a trial, scaled for each model by its trained-epoch time
relative to the vanilla LSTM (the `epochs` section). TIMIT-like and handwriting-like:
projected, not measured: the JSB study's mean epochs a trial times that task's trained
vanilla epoch, the same per-model factors, and the 2-worker speed-up measured on JSB.
"""

from __future__ import annotations

import math
import multiprocessing
import time

import numpy as np
from omegaconf import OmegaConf, open_dict

from harness.models import LISTS
from harness.study.sweep import trial_config
from harness.training.train import train

# The models of the projected study (harness.models): Greff's nine, the GRU and the GF-LSTM.
STUDY_MODELS = (*LISTS["lstm"], "gru", "gflstm")


def configurations(space, count: int) -> list[dict]:
    """`count` points of the search space, drawn once with numpy seed 0."""
    rng = np.random.default_rng(0)
    points = []
    for _ in range(count):
        point = {}
        for name, spec in space.items():
            low, high = float(spec.low), float(spec.high)
            value = math.exp(rng.uniform(math.log(low), math.log(high))) if spec.log else rng.uniform(low, high)
            point[name] = int(round(value)) if spec.type == "int" else float(value)
        points.append(point)
    return points


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _train_one(job: tuple[dict, dict]) -> dict:
    container, point = job
    result = train(trial_config(OmegaConf.create(container), point), log=lambda _: None)
    return {key: result[key] for key in ("epochs", "seconds", "val_metric", "test_metric", "best_epoch", "failure")}


def run_pool(cfg, points: list[dict], workers: int, engine: str, flush: bool) -> dict:
    base = cfg.copy()
    with open_dict(base):
        base.variant = {"name": "vanilla"}
        base.train.engine, base.train.flush_denormal, base.train.threads = engine, flush, 1
    container = OmegaConf.to_container(base, resolve=True)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        pool.map(_init_worker_ready, range(workers))  # every worker started and importing done
        start = time.perf_counter()
        trials = list(pool.imap_unordered(_train_one, [(container, p) for p in points]))
        wall = time.perf_counter() - start
    epochs = [t["epochs"] for t in trials]
    return {"engine": engine, "flush_denormal": flush, "workers": workers, "trials": len(trials),
            "wall_s": wall, "trials_per_hour": len(trials) / wall * 3600,
            "mean_trial_s": float(np.mean([t["seconds"] for t in trials])),
            "mean_epochs": float(np.mean(epochs)), "results": trials}


def _init_worker_ready(_: int) -> bool:
    return True


def time_study(cfg, options) -> dict:
    points = configurations(cfg.search.space, int(options.configurations))
    print(f"  {len(points)} vanilla configurations from search.space, up to {cfg.max_epochs} epochs, "
          f"patience {cfg.patience}", flush=True)
    runs = [(w, "native", True) for w in options.workers]
    if options.today:
        runs.append((max(options.workers), "torch", False))
    rows = []
    for workers, engine, flush in runs:
        row = run_pool(cfg, points, int(workers), engine, flush)
        rows.append(row)
        print(f"    {engine:6s} {'flushed' if flush else 'not flushed':11s} {workers} worker(s): "
              f"{row['wall_s']:7.1f} s  {row['trials_per_hour']:7.1f} trials/hour  "
              f"mean {row['mean_epochs']:5.1f} epochs, {row['mean_trial_s']:6.1f} s a trial", flush=True)
    return {"configurations": points, "runs": rows}


def project_studies(study: dict, epochs: list[dict], trials_per_model: int) -> dict:
    native = {r["workers"]: r for r in study["runs"] if r["engine"] == "native"}
    if 1 not in native or 2 not in native:
        return {}
    one, two = native[1], native[2]
    speedup = one["wall_s"] / two["wall_s"]
    trained = {(r["dataset"], r["model"]): r["trained_s"] for r in epochs}
    jsb_vanilla = trained.get(("jsb_chorales", "vanilla"))
    factors = {m: (trained.get(("jsb_chorales", m), math.nan) / jsb_vanilla if jsb_vanilla else math.nan)
               for m in STUDY_MODELS}
    known = [f for f in factors.values() if math.isfinite(f)]
    factor_sum = sum(f if math.isfinite(f) else float(np.mean(known) if known else 1.0) for f in factors.values())
    out = {"speedup_2_workers": speedup, "model_factors": factors, "tasks": {}}
    seconds_per_trial = {"jsb_chorales": one["mean_trial_s"]}
    for dataset in ("timit_like", "handwriting_like"):
        epoch = trained.get((dataset, "vanilla"))
        if epoch and math.isfinite(epoch):
            seconds_per_trial[dataset] = one["mean_epochs"] * epoch
    print(f"  projected {trials_per_model}-trial studies of {len(STUDY_MODELS)} models, 2 workers "
          f"(2-worker speed-up {speedup:.2f}x):", flush=True)
    for dataset, seconds in seconds_per_trial.items():
        hours = trials_per_model * factor_sum * seconds / speedup / 3600
        how = "measured trials" if dataset == "jsb_chorales" else "projected from trained epochs"
        out["tasks"][dataset] = {"vanilla_trial_s": seconds, "study_hours": hours, "basis": how}
        print(f"    {dataset:18s} vanilla trial {seconds:7.1f} s   study {hours:7.1f} h   ({how})", flush=True)
    return out
