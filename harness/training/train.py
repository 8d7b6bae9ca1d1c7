"""Training one configuration: by default the recipe of Greff et al. (2017) (docs/engine.md).

- SGD with Nesterov momentum; the step is learning_rate * (1 - momentum), so that the
  learning rate is the size of a step whatever the momentum; other recipes (`train=adam`,
  `train=adamw`, conf/train/) update otherwise (harness.training.recipes), and their schedule
  runs after each epoch's validation;
- one update after each sequence (train.batch_size = 1; larger batches are an option,
  the default of the adam recipes);
- Gaussian noise of deviation input_noise_std added to the inputs while training only;
- the loss is the sum over a sequence's frames (harness.training.tasks);
- after every epoch the validation metric; the test metric is computed whenever the
  validation metric improves, so the reported test figure is the one at the best
  validation epoch; early stopping after `patience` (15) epochs without improvement,
  at most `max_epochs` (150).

How a step is computed is the engine's business (harness.training.engine, `train.engine`: the
native compiled step by default, torch autograd as the reference), and so is the forward
of validation and test (the compiled loops called directly, or the network's own);
denormal floats are flushed to zero unless `train.flush_denormal=false`.

A loss that becomes NaN or infinite stops the run; the result then carries `failure`
(the reason) and the best figures reached before it (harness.study.sweep records such a trial
as failed).

Entry point: `train(cfg, data=None, out_dir=None) -> TrainingResult` (what metrics.json holds).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from harness.datasets import DataSplits, Sequence, load_dataset
from harness.errors import UserError
from harness.models.networks import SequenceNetwork, count_parameters
from harness.training import tasks
from harness.training.engine import make_forward, make_step
from harness.training.recipes import Recipe
from harness.training.resources import torch_threads


def check_hyperparameters(cfg) -> None:
    """One clear message for a value outside its range, naming the key."""
    checks = [
        ("hidden_size", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        ("learning_rate", lambda v: isinstance(v, (int, float)) and v > 0, "a positive number"),
        ("momentum", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
        ("input_noise_std", lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
        ("max_epochs", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        ("patience", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
        ("seed", lambda v: isinstance(v, int), "an integer"),
    ]
    for key, ok, wanted in checks:
        value = cfg.get(key)
        if isinstance(value, bool) or not ok(value):
            raise UserError(f"{key}={value} is not allowed: it must be {wanted} (e.g. `odyssey train {key}=...`).")


def batches(sequences: list[Sequence], size: int, order: np.ndarray) -> list[list[Sequence]]:
    return [[sequences[k] for k in order[start : start + size]] for start in range(0, len(order), size)]


class EpochRunner:
    """The training part of an epoch: shuffled batches, input noise, one step a batch.

    `run(epoch) -> (summed loss, frames, failure)`; failure is None, or the reason the
    epoch stopped (a non-finite loss: the weights are left as they were before it).
    One sequence a step (batch_size 1), the batches are made once, not again each epoch.
    """

    def __init__(self, step, data: DataSplits, batch_size: int, noise_std: float, rng: np.random.Generator):
        self.step, self.data, self.batch_size, self.noise_std, self.rng = step, data, batch_size, noise_std, rng
        self.single = [tasks.make_batch([s], data.task) for s in data.train] if batch_size == 1 else None

    def run(self, epoch: int) -> tuple[float, int, str | None]:
        order = self.rng.permutation(len(self.data.train))
        if self.single:
            epoch_batches = (self.single[k] for k in order)
        else:
            epoch_batches = (tasks.make_batch(group, self.data.task)
                             for group in batches(self.data.train, self.batch_size, order))
        total_loss, frames = 0.0, 0
        for batch in epoch_batches:
            x = batch.x + self.noise_std * torch.randn_like(batch.x) if self.noise_std > 0 else batch.x
            loss = float(self.step(batch, x))
            if not math.isfinite(loss):
                return total_loss, frames, f"training loss became {loss} in epoch {epoch}"
            total_loss, frames = total_loss + loss, frames + batch.frames
        return total_loss, frames, None


def evaluation_batches(sequences: list[Sequence], task: str, batch_size: int):
    """The batches of an evaluation pass: sequences of similar lengths together, for speed."""
    order = np.argsort([len(s.x) for s in sequences], kind="stable")
    return (tasks.make_batch(group, task) for group in batches(sequences, batch_size, order))


def evaluate(network: SequenceNetwork, task: str, sequences: list[Sequence], batch_size: int,
             forward: Callable | None = None) -> float:
    """The task's metric over a split, without noise. `forward(x, lengths) -> scores` is
    the engine's forward of evaluation (harness.training.engine.make_forward); None: the network's own."""
    forward = forward or make_forward("torch", network, task)
    total, count = 0.0, 0.0
    network.eval()
    for batch in evaluation_batches(sequences, task, batch_size):
        errors, n = tasks.errors(task, forward(batch.x, batch.lengths), batch)
        total, count = total + errors, count + n
    return total / count


@dataclass(frozen=True)
class TrainingResult(Mapping):
    """The outcome of one training: the fields of metrics.json, typed.

    It also reads as that mapping (`result["test_metric"]` is `result.test_metric`).
    The metrics are those of the epoch of best validation; None where no epoch gave a
    finite one. `failure` says why the training stopped early (a non-finite loss), or None.
    """

    dataset: str
    variant: str
    recipe: str
    metric: str                  # the task's metric, e.g. nll (harness.training.tasks.METRICS)
    val_metric: float | None
    test_metric: float | None
    best_epoch: int
    epochs: int
    n_params: int
    seconds: float
    failure: str | None
    hyperparameters: dict
    train: dict                  # the recipe's settings and the batch size
    learning_curve: list         # one {epoch, train_loss_per_frame, val_metric, seconds} an epoch
    data: dict                   # sequences and frames of each split, input_dim, n_outputs

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return (field.name for field in fields(self))

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def trial_attributes(self) -> dict:
        """The figures a sweep's trial records as user attributes."""
        return {"test_metric": self.test_metric, "n_params": self.n_params, "seconds": self.seconds,
                "epochs": self.epochs, "best_epoch": self.best_epoch, "failure": self.failure}


def make_network(cfg, data: DataSplits) -> SequenceNetwork:
    """The network of a training of `cfg` on `data`, initialised from torch's current
    random state (train() seeds it with cfg.seed first): train.forget_bias unless the
    variant's config sets its own (make_layer drops it where there is no forget gate),
    and the variant's options such as GF-RNN's `layers` or a class's `cell`."""
    options = cfg.train
    variant = OmegaConf.to_container(cfg.variant, resolve=True) if isinstance(cfg.variant, DictConfig) else cfg.variant
    layer_options = {"forget_bias": float(options.get("forget_bias", 0.0)),
                     **{k: v for k, v in dict(variant).items() if k != "name"}}
    return SequenceNetwork(cfg.variant.name, data.input_dim, int(cfg.hidden_size), data.n_outputs,
                           bidirectional=data.bidirectional, init_std=float(options.get("init_std", 0.1)),
                           **layer_options)


class Progress:
    """The record of one training's epochs: the learning curve, the epoch of best
    validation with its test metric, and the rules that end a training (early stopping
    after `patience` epochs without improvement, a non-finite validation metric).
    train() and the lockstep trainer (harness.training.lockstep) keep theirs the same way."""

    def __init__(self, max_epochs: int, patience: int, metric: str):
        self.max_epochs, self.patience, self.metric = max_epochs, patience, metric
        self.curve: list[dict] = []
        self.best = {"val_metric": math.inf, "test_metric": math.nan, "best_epoch": 0}
        self.failure: str | None = None

    def validated(self, epoch: int, val_metric: float) -> bool:
        """Record an epoch's validation; True if it improves (the caller then computes
        the test metric and passes it to `improved`). A non-finite one ends the training."""
        if not math.isfinite(val_metric):
            self.failure = f"validation {self.metric} became {val_metric} in epoch {epoch}"
            return False
        return val_metric < self.best["val_metric"]

    def improved(self, epoch: int, val_metric: float, test_metric: float) -> None:
        self.best = {"val_metric": val_metric, "test_metric": test_metric, "best_epoch": epoch}

    def record(self, epoch: int, total_loss: float, frames: int, val_metric: float, seconds: float) -> None:
        self.curve.append({"epoch": epoch, "train_loss_per_frame": total_loss / max(frames, 1),
                           "val_metric": val_metric, "seconds": seconds})

    def log_line(self) -> str:
        last, best = self.curve[-1], self.best
        return (f"  epoch {last['epoch']:3d}/{self.max_epochs}  train loss {last['train_loss_per_frame']:8.4f}/frame  "
                f"val {self.metric} {last['val_metric']:.4f}  best {best['val_metric']:.4f} (epoch "
                f"{best['best_epoch']}, test {best['test_metric']:.4f})  {last['seconds']:6.1f} s")

    def stops(self, epoch: int) -> bool:
        """Whether the training ends after `epoch`: patience run out, or the last epoch."""
        return epoch - self.best["best_epoch"] >= self.patience or epoch >= self.max_epochs

    def result(self, cfg, data: DataSplits, recipe: Recipe, batch_size: int, n_params: int,
               seconds: float) -> TrainingResult:
        best = self.best
        return TrainingResult(
            dataset=data.name,
            variant=cfg.variant.name,
            recipe=recipe.name,
            metric=self.metric,
            val_metric=best["val_metric"] if math.isfinite(best["val_metric"]) else None,
            test_metric=best["test_metric"] if math.isfinite(best["test_metric"]) else None,
            best_epoch=best["best_epoch"],
            epochs=len(self.curve),
            n_params=n_params,
            seconds=seconds,
            failure=self.failure,
            hyperparameters={key: cfg[key] for key in ("hidden_size", "learning_rate", "momentum", "input_noise_std",
                                                       "max_epochs", "patience", "seed")
                             if key != "momentum" or recipe.optimizer == "sgd_nesterov"},  # adam has none
            train={**recipe.as_dict(), "batch_size": batch_size},
            learning_curve=self.curve,
            data=data.summary(),
        )


def write_metrics(result: TrainingResult, out_dir: Path | None) -> None:
    """metrics.json of a training in out_dir (nothing without one)."""
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "metrics.json", "w") as handle:
            json.dump(asdict(result), handle, indent=2)


def train(cfg, data: DataSplits | None = None, out_dir: Path | None = None,
          log: Callable[[str], None] = print,
          on_epoch: Callable[[int, float], None] | None = None) -> TrainingResult:
    """Train the configuration `cfg` (the root config) and return its metrics.

    `data` may be passed in to avoid reading the data set again (a sweep reads it once);
    with `out_dir`, metrics.json is written there. `on_epoch(epoch, val_metric)` is called
    after every epoch's validation (a sweep reports it to its trial); an exception it
    raises ends the training and propagates (a pruner's TrialPruned, for instance).
    """
    check_hyperparameters(cfg)
    variant = cfg.variant.name  # one model (harness.models; validate has refused a list)
    options = dict(cfg.train)
    recipe = Recipe.from_config(cfg)
    # auto: all cores for one training (a sweep worker sets its share, cores / workers)
    torch.set_num_threads(torch_threads(options.get("threads")))
    # Trained weights and states fill with denormal floats, which slow CPU arithmetic
    # 1.3-2.4x; flushing them to zero changes results only within float tolerance.
    torch.set_flush_denormal(bool(options.get("flush_denormal", True)))
    data = data if data is not None else load_dataset(cfg.dataset)
    batch_size = int(options.get("batch_size", 1))
    if batch_size > len(data.train):
        raise UserError(f"train.batch_size={batch_size} is larger than the training split of {data.name} "
                        f"({len(data.train)} sequences); choose at most {len(data.train)}.")
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    network = make_network(cfg, data)
    engine = str(options.get("engine", "native"))
    step = make_step(engine, network, data.task, recipe, log=log)
    forward = make_forward(engine, network, data.task)  # of validation and test
    noise_std = float(cfg.input_noise_std)
    runner = EpochRunner(step, data, batch_size, noise_std, rng)
    eval_batch_size = int(options.get("eval_batch_size", 32))
    max_epochs, patience = int(cfg.max_epochs), int(cfg.patience)
    metric = tasks.METRICS[data.task]

    log(f"{data.name} / {variant}: N={cfg.hidden_size}, {recipe.describe()}, batch {batch_size}, "
        f"noise={noise_std}, {count_parameters(network)} parameters, "
        f"{len(data.train)} training sequences, up to {max_epochs} epochs")
    start = time.perf_counter()
    progress = Progress(max_epochs, patience, metric)
    for epoch in range(1, max_epochs + 1):
        network.train()
        total_loss, frames, progress.failure = runner.run(epoch)
        if progress.failure:
            log(f"  stopped: {progress.failure}")
            break
        val_metric = evaluate(network, data.task, data.valid, eval_batch_size, forward)
        if progress.validated(epoch, val_metric):
            progress.improved(epoch, val_metric, evaluate(network, data.task, data.test, eval_batch_size, forward))
        if progress.failure:
            log(f"  stopped: {progress.failure}")
            break
        step.update.end_epoch(val_metric)
        progress.record(epoch, total_loss, frames, val_metric, time.perf_counter() - start)
        log(progress.log_line())
        if on_epoch is not None:
            on_epoch(epoch, val_metric)
        if progress.stops(epoch):
            if epoch < max_epochs:
                log(f"  early stop: no improvement for {patience} epochs")
            break

    result = progress.result(cfg, data, recipe, batch_size, count_parameters(network), time.perf_counter() - start)
    log(f"  {variant}: best validation {metric} {result.val_metric} at epoch {result.best_epoch}, "
        f"test {metric} {result.test_metric}, {result.seconds:.1f} s")
    write_metrics(result, out_dir)
    return result
