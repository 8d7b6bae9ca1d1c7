"""Epochs of every training recipe (conf/train/) on JSB, on the engine a trial of it uses
and on the torch reference path, as the `recipes` section of `odyssey bench`.

The vanilla LSTM at N=100 trains with each recipe as its file sets it (batch size,
clipping, schedule), learning rate 1e-2 (Greff's recipe: momentum 0.9); the native
engine computes the gradients of every recipe and runs Greff's Nesterov update compiled,
any other update with torch.optim on those gradients (harness.training.engine), so each row says
how much slower the torch path (autograd, the same optimizer) is.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from harness import project_root
from harness.bench.epochs import LEARNING_RATE, MOMENTUM, runner_seconds
from harness.datasets import load_dataset
from harness.models.networks import SequenceNetwork
from harness.training.engine import make_step
from harness.training.recipes import Recipe, recipe_file, shipped_recipes


def time_recipes(options) -> list[dict]:
    data = load_dataset(OmegaConf.load(project_root() / "conf" / "dataset" / "jsb_chorales.yaml"))
    hidden_size, warm, timed = int(options.hidden_size), int(options.warm), int(options.timed)
    print(f"  jsb_chorales, vanilla N={hidden_size}, lr {LEARNING_RATE:g}; trained = mean of epochs "
          f"{warm + 1}-{warm + timed}", flush=True)
    rows = []
    for name in options.names or shipped_recipes():
        train = recipe_file(name)
        cfg = OmegaConf.create({"train": train, "learning_rate": LEARNING_RATE, "momentum": MOMENTUM,
                                "max_epochs": warm + timed})
        recipe, batch_size = Recipe.from_config(cfg), int(train.batch_size)
        figures = {}
        for engine in ("native", "torch"):
            torch.manual_seed(0)
            network = SequenceNetwork("vanilla", data.input_dim, hidden_size, data.n_outputs)
            used = []
            step = make_step(engine, network, data.task, recipe, log=used.append)
            figures[engine] = runner_seconds(network, step, data, batch_size, warm, timed)
            figures[engine]["engine"] = "torch" if used else engine
        native, reference = figures["native"], figures["torch"]
        row = {"recipe": name, "optimizer": recipe.optimizer, "batch_size": batch_size, "engine": native["engine"],
               "fresh_s": native["fresh_s"], "trained_s": native["trained_s"],
               "torch_trained_s": reference["trained_s"],
               "torch_slower": reference["trained_s"] / native["trained_s"], "best_val": native["best_val"]}
        rows.append(row)
        print(f"    train={name:8s} batch {batch_size:3d}  {row['engine']:6s} fresh {row['fresh_s']:6.3f} s  "
              f"trained {row['trained_s']:6.3f} s  torch path {row['torch_trained_s']:6.3f} s "
              f"(x{row['torch_slower']:.2f})", flush=True)
    return rows
