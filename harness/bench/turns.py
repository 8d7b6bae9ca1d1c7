"""JSB training epochs of several models in turn, against the first (vanilla).

On a shared machine the load changes between one model's epochs and the next model's, so
that epochs timed model after model (the `epochs` section) can differ by more than the
models do. Here every model trains one epoch in turn, round after round (the first round
untimed), and each model's median is divided by the first model's: the load of a round
hits all models alike, so the ratios hold where the seconds do not. An epoch is the
training part (harness.training.train.EpochRunner: one Nesterov update a sequence, lr 1e-2,
momentum 0.9, no noise), on the engine each model trains on (the native engine where it
covers the model, else the torch path), at `hidden_size` blocks.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from omegaconf import OmegaConf

from harness import project_root
from harness.bench.epochs import build
from harness.datasets import load_dataset
from harness.models import names_of, variant_config
from harness.training.train import EpochRunner


def time_in_turn(cfg, options) -> list[dict]:
    data = load_dataset(OmegaConf.load(project_root() / "conf" / "dataset" / "jsb_chorales.yaml"))
    models = names_of(options.models, "vanilla", "bench.turns.models")
    runners = {}
    for model in models:
        network, step = build(model, data, int(options.hidden_size), variant_config(cfg, model))
        runners[model] = (EpochRunner(step, data, batch_size=1, noise_std=0.0, rng=np.random.default_rng(0)),
                          "native" if type(step).__name__ == "NativeStep" else "torch")
    seconds = {model: [] for model in models}
    for round in range(1 + int(options.rounds)):
        for model in models:
            start = time.perf_counter()
            runners[model][0].run(round + 1)
            if round > 0:
                seconds[model].append(time.perf_counter() - start)
    first = statistics.median(seconds[models[0]])
    rows = []
    for model in models:
        median = statistics.median(seconds[model])
        rows.append({"model": model, "engine": runners[model][1], "hidden_size": int(options.hidden_size),
                     "epoch_s": median, "vs_first": median / first, "first": models[0], "rounds": int(options.rounds)})
        print(f"  {model:8s} {runners[model][1]:6s} epoch {median:6.3f} s  x{median / first:5.2f} {models[0]}",
              flush=True)
    return rows
