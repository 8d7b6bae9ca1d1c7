"""Epochs of the training recipe as a trial runs them, fresh and after training.

An epoch here is what a trial spends on it: one Nesterov update a training sequence
(lr 1e-2, momentum 0.9, no input noise), then the validation metric, and the test metric
when validation improved (harness.training.train's EpochRunner and evaluate). The first two
epochs are the fresh figure; after `warm` untimed epochs, `timed` epochs are the trained
figure, where the weights and states have filled with small values (denormal floats, if
they were not flushed). Each model is measured against torch.nn.LSTM in the same recipe
and the same run (torch.nn.GRU for the GRU, a 3-layer torch.nn.LSTM for the GF-RNNs),
all on the reference engine for torch's modules, with denormals flushed; on JSB the
vanilla LSTM is also run unflushed, to show what flushing saves.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from harness import project_root
from harness.bench.layers import TorchRecurrent
from harness.datasets import load_dataset
from harness.models import names_of, resolve, variant_config
from harness.models.networks import SequenceNetwork
from harness.training.engine import NativeStep, TorchStep, make_forward, make_step
from harness.training.recipes import Recipe
from harness.training.train import EpochRunner, evaluate

LEARNING_RATE, MOMENTUM = 1e-2, 0.9
REFERENCES = {"torch.nn.LSTM": ("lstm", 1), "torch.nn.GRU": ("gru", 1), "torch.nn.LSTM x3": ("lstm", 3)}


def reference_name(model: str) -> str:
    """What `model` is timed against: a 3-layer torch.nn.LSTM for a gated-feedback stack,
    torch.nn.GRU for the GRU, torch.nn.LSTM for an LSTM."""
    kind = resolve(model)
    if kind.gated_feedback:
        return "torch.nn.LSTM x3"
    return "torch.nn.GRU" if kind.cell == "gru" else "torch.nn.LSTM"


def build(model: str, data, hidden_size: int, variant: dict | None = None,
          learning_rate: float = LEARNING_RATE) -> tuple[SequenceNetwork, object]:
    """The network of `model` (ours, with the options of its variant config `variant`, or
    one of REFERENCES) and its training step (Nesterov, `learning_rate`, MOMENTUM)."""
    torch.manual_seed(0)
    if model in REFERENCES:
        kind, layers = REFERENCES[model]
        network = SequenceNetwork("np", data.input_dim, hidden_size, data.n_outputs, bidirectional=data.bidirectional)
        network.forward_layer = TorchRecurrent(kind, data.input_dim, hidden_size, layers)
        if data.bidirectional:
            network.backward_layer = TorchRecurrent(kind, data.input_dim, hidden_size, layers)
        return network, TorchStep(network, data.task, Recipe.nesterov(learning_rate, MOMENTUM))
    options = {k: v for k, v in (variant or {}).items() if k != "name"}
    network = SequenceNetwork(model, data.input_dim, hidden_size, data.n_outputs,
                              bidirectional=data.bidirectional, **options)
    return network, make_step("native", network, data.task, Recipe.nesterov(learning_rate, MOMENTUM),
                              log=lambda _: None)


def epoch_seconds(model: str, data, hidden_size: int, warm: int, timed: int, flush: bool = True,
                  variant: dict | None = None) -> dict:
    network, step = build(model, data, hidden_size, variant)
    return runner_seconds(network, step, data, 1, warm, timed, flush)


def runner_seconds(network, step, data, batch_size: int, warm: int, timed: int, flush: bool = True) -> dict:
    """Fresh (mean of the first two) and trained (after `warm`) seconds of epochs as a trial
    runs them: the training part (harness.training.train.EpochRunner), validation, and test on improvement."""
    runner = EpochRunner(step, data, batch_size=batch_size, noise_std=0.0, rng=np.random.default_rng(0))
    forward = make_forward("native" if isinstance(step, NativeStep) else "torch", network, data.task)
    torch.set_flush_denormal(flush)
    seconds, best, failure = [], math.inf, None
    try:
        for epoch in range(1, warm + timed + 1):
            start = time.perf_counter()
            network.train()
            _, _, failure = runner.run(epoch)
            if failure:
                break
            val_metric = evaluate(network, data.task, data.valid, 32, forward)
            if val_metric < best:
                best = val_metric
                evaluate(network, data.task, data.test, 32, forward)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_flush_denormal(True)
    fresh = float(np.mean(seconds[:2])) if seconds else math.nan
    trained = float(np.mean(seconds[warm:])) if len(seconds) > warm else math.nan
    return {"fresh_s": fresh, "trained_s": trained, "epochs_run": len(seconds), "failure": failure,
            "best_val": best}


def time_epochs(cfg, options) -> list[dict]:
    hidden_size = int(options.hidden_size)
    rows = []
    for dataset, task_options in options.tasks.items():
        dataset_cfg = OmegaConf.load(project_root() / "conf" / "dataset" / f"{dataset}.yaml")
        try:
            data = load_dataset(dataset_cfg)
        except Exception as error:  # a stand-in not generated yet: say so and go on
            print(f"  {dataset}: skipped ({str(error).splitlines()[0][:120]})", flush=True)
            continue
        models = [resolve(m).name for m in names_of(task_options.models or "all", "vanilla",
                                                    f"bench.epochs.tasks.{dataset}.models")]
        variants = {m: variant_config(cfg, m) for m in models}  # their options (GF stacks: layers)
        warm, timed = int(task_options.warm), int(task_options.timed)
        references = sorted({reference_name(m) for m in models}, key=list(REFERENCES).index)
        print(f"  {dataset}: {len(data.train)} training sequences, {data.summary()['train']['frames']} frames; "
              f"trained = mean of epochs {warm + 1}-{warm + timed}", flush=True)
        measured = {}
        runs = [(m, True) for m in references + models]
        if dataset == "jsb_chorales" and "vanilla" in models:
            runs.append(("vanilla", False))
        for model, flush in runs:
            figures = epoch_seconds(model, data, hidden_size, warm, timed, flush, variants.get(model))
            label = model if flush else f"{model} (denormals not flushed)"
            reference = model if model in REFERENCES else reference_name(model)
            base = measured.get(reference, {})
            ratio = figures["trained_s"] / base["trained_s"] if base else 1.0
            fresh_ratio = figures["fresh_s"] / base["fresh_s"] if base else 1.0
            row = {"dataset": dataset, "model": label, "reference": reference, **figures,
                   "ratio_fresh": fresh_ratio, "ratio_trained": ratio}
            rows.append(row)
            if model in REFERENCES:
                measured[model] = figures
            note = f"  stopped: {figures['failure']}" if figures["failure"] else ""
            print(f"    {label:34s} fresh {figures['fresh_s']:7.3f} s  trained {figures['trained_s']:7.3f} s  "
                  f"x{ratio:5.2f} {reference}{note}", flush=True)
    return rows
