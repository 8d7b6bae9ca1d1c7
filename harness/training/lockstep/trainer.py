"""Training K trials side by side: one step of every slot at once, each slot its own trial.

A slot is set up exactly as harness.training.train.train sets up a trial alone: torch seeded with
the trial's seed, the network built from it (harness.training.train.make_network), a numpy
generator of the same seed for the data order, and the input noise drawn from a torch
generator that continues where the network's initialisation left torch's (so the noise of
slot k is the noise the trial alone draws, on any device: it is drawn on the CPU). Each
epoch every slot visits the training split in its own order, one sequence a step, and
all slots' steps run as one batched computation (harness.training.lockstep.stack); then each slot
is validated, tested when it improves, and ends by its own early stopping
(harness.training.train.Progress, the same rules as alone).

All slots are in phase: every epoch has one step a training sequence, so a trial that
joins does so at an epoch boundary, when the stack is rebuilt from the slots that go on
(their weights and Nesterov buffers carried over) and the newcomers.

Covered: Greff's recipe (train=greff: Nesterov SGD, batch 1, no clipping, no schedule)
on the LSTM family (the nine variants and models of one's own switches), every task
(CTC through torch's loss). `covers(cfg, network)` says what is not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
import torch

from harness.datasets import DataSplits
from harness.errors import UserError
from harness.models.cell_class import CellClass
from harness.models.cells import LSTMLayer
from harness.models.networks import count_parameters
from harness.training import tasks
from harness.training.lockstep.stack import SlotModel, SlotStack
from harness.training.recipes import Recipe
from harness.training.train import Progress, check_hyperparameters, make_network, write_metrics


def covers(cfg, network=None) -> str | None:
    """None if lockstep can train trials of `cfg`, else what it lacks (for a message)."""
    recipe = Recipe.from_config(cfg)
    if recipe.optimizer != "sgd_nesterov" or recipe.max_grad_norm is not None or recipe.schedule != "none":
        return f"the recipe train={recipe.name} (lockstep trains Greff's: Nesterov SGD, no clipping, no schedule)"
    if int(cfg.train.get("batch_size", 1)) != 1:
        return f"train.batch_size={cfg.train.batch_size} (lockstep trains one sequence a step)"
    if network is not None and isinstance(network.forward_layer, CellClass):
        return f"the model {cfg.variant.name}, a cell given as a class (lockstep covers the LSTM family)"
    if network is not None and not isinstance(network.forward_layer, LSTMLayer):
        return f"the model {cfg.variant.name} (lockstep covers the LSTM family)"
    return None


@dataclass
class Slot:
    """One trial in the lockstep: its config, random streams and record."""

    key: Hashable
    cfg: object
    recipe: Recipe
    weights: dict
    hidden_size: int
    n_params: int
    rng: np.random.Generator
    noise: torch.Generator
    noise_std: float
    progress: Progress
    on_epoch: Callable[[int, float], None] | None
    out_dir: Path | None
    momenta: dict | None = None
    epoch: int = 0
    started: float = field(default_factory=time.perf_counter)
    loss: float = 0.0
    frames: int = 0
    failed: str | None = None  # the training loss became non-finite this epoch


class LockstepTrainer:
    """Up to `capacity` trials of one model and data set trained at once on `device`.

    `add(cfg, key, on_epoch, out_dir)` queues a trial (it joins at the next epoch);
    `run_epoch()` trains every slot one epoch and returns [(key, outcome)] for the slots
    that ended: a TrainingResult (metrics.json written to out_dir), or the exception that
    its `on_epoch` raised (optuna.TrialPruned, say), which ends that slot only.
    """

    def __init__(self, data: DataSplits, capacity: int, device: torch.device, log: Callable[[str], None] = print):
        self.data, self.capacity, self.device, self.log = data, capacity, device, log
        self.task = data.task
        self.metric = tasks.METRICS[data.task]
        self.slots: list[Slot] = []
        self.waiting: list[Slot] = []
        self.model: SlotModel | None = None
        self.stack: SlotStack | None = None
        self.eval_batches: dict[str, list[tasks.Batch]] = {}
        self.changed = True  # the slots differ from the stack's: rebuild it before the next epoch

    @property
    def free(self) -> int:
        return self.capacity - len(self.slots) - len(self.waiting)

    def __len__(self) -> int:
        return len(self.slots) + len(self.waiting)

    def add(self, cfg, key: Hashable, on_epoch=None, out_dir: Path | None = None) -> None:
        """Queue the trial `cfg` (its root config, with its seed), as train(cfg) would set it up."""
        if self.free <= 0:
            raise ValueError("the lockstep is full")
        check_hyperparameters(cfg)
        torch.manual_seed(int(cfg.seed))
        network = make_network(cfg, self.data)
        noise = torch.Generator().manual_seed(0)
        noise.set_state(torch.get_rng_state())  # the trial alone draws its noise from here on
        reason = covers(cfg, network)
        if reason is not None:
            raise UserError(f"lockstep (search.lockstep > 1, or a train.device other than cpu) does not cover "
                            f"{reason}; train it with train.device=cpu and search.lockstep=1.")
        if self.model is None:
            self.model = SlotModel(network)
            self.eval_batch_size = int(cfg.train.get("eval_batch_size", 32))
        self.waiting.append(Slot(
            key=key, cfg=cfg, recipe=Recipe.from_config(cfg), weights=self.model.weights_of(network),
            hidden_size=int(cfg.hidden_size), n_params=count_parameters(network),
            rng=np.random.default_rng(int(cfg.seed)), noise=noise, noise_std=float(cfg.input_noise_std),
            progress=Progress(int(cfg.max_epochs), int(cfg.patience), self.metric), on_epoch=on_epoch,
            out_dir=out_dir))

    # -- an epoch -------------------------------------------------------------------------

    def restack(self) -> None:
        """Rebuild the stack when slots have left or joined (at an epoch boundary)."""
        if self.stack is not None:
            for k, slot in enumerate(self.slots):
                slot.weights, slot.momenta = self.stack.export(k)
        self.slots += self.waiting
        self.waiting = []
        self.stack = SlotStack(self.model, [(s.weights, s.momenta, s.hidden_size) for s in self.slots], self.device) \
            if self.slots else None
        self.changed = False

    def run_epoch(self) -> list[tuple[Hashable, object]]:
        if self.waiting or self.changed:
            self.restack()
        if not self.slots:
            return []
        for slot in self.slots:
            slot.epoch += 1
            slot.loss, slot.frames, slot.failed = 0.0, 0, None
        self.train_epoch()
        ended = []
        self.validate(ended)
        if ended:
            keys = {key for key, _ in ended}
            self.stack_keep([k for k, slot in enumerate(self.slots) if slot.key not in keys])
        return ended

    def train_epoch(self) -> None:
        slots, stack, device = self.slots, self.stack, self.device
        orders = [slot.rng.permutation(len(self.data.train)) for slot in slots]
        step_sizes = torch.tensor([s.recipe.learning_rate * (1 - s.recipe.momentum) for s in slots], device=device)
        momenta = torch.tensor([s.recipe.momentum for s in slots], device=device)
        for step in range(len(self.data.train)):
            sequences = [self.data.train[order[step]] for order in orders]
            batch = tasks.make_batch(sequences, self.task)  # x (T, K, M): slot k's sequence in column k
            x = batch.x
            for k, slot in enumerate(slots):
                if slot.noise_std > 0:
                    T_k = int(batch.lengths[k])
                    x[:T_k, k] += slot.noise_std * torch.randn((T_k, 1, x.shape[2]), generator=slot.noise)[:, 0]
            batch = to_device(batch, device)
            scores = stack.forward(batch.x.transpose(0, 1).unsqueeze(2), batch.lengths.unsqueeze(1))  # (K, T, 1, O)
            losses = tasks.sequence_losses(self.task, scores[:, :, 0].transpose(0, 1), batch)  # (K,)
            losses.sum().backward()
            values = losses.detach().cpu().tolist()
            active = []
            for k, (slot, value) in enumerate(zip(slots, values)):
                if slot.failed is None and not np.isfinite(value):
                    slot.failed = f"training loss became {value} in epoch {slot.epoch}"
                if slot.failed is None:
                    slot.loss, slot.frames = slot.loss + value, slot.frames + int(batch.lengths[k])
                active.append(slot.failed is None)
            stack.nesterov_(step_sizes, momenta, torch.tensor(active, device=device))

    def validate(self, ended: list) -> None:
        """Validate every slot that trained the whole epoch; test those that improved;
        record, report, and end what stops."""
        live = [k for k, slot in enumerate(self.slots) if slot.failed is None]
        values = dict(zip(live, self.evaluate("valid", live))) if live else {}
        improved = [k for k in live if self.slots[k].progress.validated(self.slots[k].epoch, values[k])]
        tests = dict(zip(improved, self.evaluate("test", improved))) if improved else {}
        for k, slot in enumerate(self.slots):
            progress = slot.progress
            progress.failure = progress.failure or slot.failed
            if k in tests:
                progress.improved(slot.epoch, values[k], tests[k])
            if progress.failure:
                ended.append((slot.key, self.finish(slot)))
                continue
            progress.record(slot.epoch, slot.loss, slot.frames, values[k], time.perf_counter() - slot.started)
            try:
                if slot.on_epoch is not None:
                    slot.on_epoch(slot.epoch, values[k])
            except Exception as error:  # optuna.TrialPruned, or the caller's own reason to stop
                ended.append((slot.key, error))
                continue
            if progress.stops(slot.epoch):
                ended.append((slot.key, self.finish(slot)))

    def finish(self, slot: Slot):
        result = slot.progress.result(slot.cfg, self.data, slot.recipe, 1, slot.n_params,
                                      time.perf_counter() - slot.started)
        write_metrics(result, slot.out_dir)
        return result

    def stack_keep(self, kept: list[int]) -> None:
        """Drop the slots that ended (their weights go; the others' are carried over)."""
        for k in kept:
            self.slots[k].weights, self.slots[k].momenta = self.stack.export(k)
        self.slots = [self.slots[k] for k in kept]
        self.stack = None
        self.changed = True

    @torch.no_grad()
    def evaluate(self, split: str, slots: list[int]) -> list[float]:
        """The task's metric over a split for the slots of index `slots`, without noise."""
        if split not in self.eval_batches:
            sequences = getattr(self.data, split)
            order = np.argsort([len(s.x) for s in sequences], kind="stable")
            size = self.eval_batch_size
            self.eval_batches[split] = [
                to_device(tasks.make_batch([sequences[j] for j in order[start:start + size]], self.task), self.device)
                for start in range(0, len(order), size)]
        index = torch.tensor(slots, device=self.device)
        totals, counts = [0.0] * len(slots), [0.0] * len(slots)
        for batch in self.eval_batches[split]:
            K = len(slots)
            x = batch.x.unsqueeze(0).expand(K, *batch.x.shape)  # (K, T, B, M): the same sequences
            lengths = batch.lengths.unsqueeze(0).expand(K, -1)
            scores = self.stack.forward(x, lengths, index)  # (K, T, B, O)
            for j in range(K):
                errors, n = tasks.errors(self.task, scores[j], batch)
                totals[j], counts[j] = totals[j] + errors, counts[j] + n
        return [total / count for total, count in zip(totals, counts)]


def to_device(batch: tasks.Batch, device: torch.device) -> tasks.Batch:
    if device.type == "cpu":
        return batch
    move = (lambda t: None if t is None else t.to(device))
    return tasks.Batch(x=move(batch.x), lengths=move(batch.lengths), y=move(batch.y), mask=move(batch.mask),
                       target_lengths=move(batch.target_lengths))


def train_on_device(cfg, data: DataSplits, device: torch.device, out_dir: Path | None = None,
                    log: Callable[[str], None] = print):
    """`odyssey train` on a device other than the CPU: the trial as the one slot of a
    lockstep (the sweep's path there), with the same result as harness.training.train.train."""
    trainer = LockstepTrainer(data, 1, device, log=log)
    trainer.add(cfg, "run", on_epoch=lambda epoch, value: log(f"  epoch {epoch:3d}  val {value:.4f}"), out_dir=out_dir)
    log(f"{data.name} / {cfg.variant.name}: N={cfg.hidden_size} on {device} (lockstep, one slot)")
    while True:
        for _, result in trainer.run_epoch():
            log(f"  {cfg.variant.name}: best validation {result.metric} {result.val_metric} at epoch "
                f"{result.best_epoch}, test {result.metric} {result.test_metric}, {result.seconds:.1f} s")
            return result
