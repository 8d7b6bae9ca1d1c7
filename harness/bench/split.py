"""Where a trained epoch spends its time: the phases of the native step and of validation.

For each data set and hidden size asked: a vanilla network (Nesterov, `learning_rate`,
momentum 0.9) trains `warm` epochs untimed
(so that its weights are those of a trial under way, denormals flushed), then one epoch
is timed phase by phase as harness.training.train runs it: for every training sequence the
native step's `forward` (both directions' compiled loops), `loss` (read-out, loss and
d loss / d scores: softmax cross-entropy per frame, or CTC), `backward` (read-out and
both directions through time) and `update`; what the epoch took beyond these is
`python` (the loop, the batches, the noise, reading the loss). Validation is timed the
same way: `forward` (scores of each batch) and `errors` (best-path decoding and edit
distance for CTC, arg-max for the frames). A bidirectional torch.nn.LSTM doing the same
epoch (reference engine: autograd, torch's losses, torch.optim) is timed in the same
run. Every figure is the CPU time of the training thread (time.thread_time, one torch
thread: all of the work runs on it), so that other processes on a shared machine, which
stretch wall-clock times by several times, do not count.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from omegaconf import OmegaConf

from harness import project_root
from harness.bench.epochs import MOMENTUM, build
from harness.datasets import load_dataset
from harness.training import tasks
from harness.training.engine import NativeForward, NativeStep
from harness.training.train import EpochRunner, evaluate, evaluation_batches

TRAINING_PHASES = ("forward", "loss", "backward", "update", "python")
VALIDATION_PHASES = ("forward", "errors", "python")


class _Clock:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.last = time.thread_time()

    def lap(self, phase: str) -> None:
        now = time.thread_time()
        self.seconds[phase] += now - self.last
        self.last = now


def _subset(data, sequences: int | None):
    """The data set with its first `sequences` training and validation sequences (all: None)."""
    if not sequences:
        return data
    data.train, data.valid = data.train[:sequences], data.valid[: max(1, sequences // 4)]
    return data


def timed_training(step: NativeStep, data, rng: np.random.Generator) -> dict[str, float]:
    """One training epoch of `step`, phase by phase (EpochRunner's order and batches)."""
    runner = EpochRunner(step, data, batch_size=1, noise_std=0.0, rng=rng)
    order = rng.permutation(len(data.train))
    clock = _Clock()
    start, skipped = clock.last, 0
    for k in order:
        batch = runner.single[k]
        clock.lap("python")
        with torch.no_grad():
            Y, runs = step.forward(batch, batch.x)
            clock.lap("forward")
            loss, dS = step.loss(Y, batch)
            clock.lap("loss")
            if torch.isfinite(loss):
                step.backward(Y, dS, runs, batch)
                clock.lap("backward")
                step.update()
                clock.lap("update")
            else:
                skipped += 1
        loss.item()
    clock.lap("python")
    return {**{p: clock.seconds[p] for p in TRAINING_PHASES}, "total": clock.last - start,
            "non_finite_steps": skipped}


def timed_validation(forward, task: str, sequences, batch_size: int) -> dict[str, float]:
    """One validation pass (harness.training.train.evaluate's batches and engine), phase by phase."""
    clock = _Clock()
    start = clock.last
    for batch in evaluation_batches(sequences, task, batch_size):
        clock.lap("python")
        scores = forward(batch.x, batch.lengths)
        clock.lap("forward")
        tasks.errors(task, scores, batch)
        clock.lap("errors")
    clock.lap("python")
    return {**{p: clock.seconds[p] for p in VALIDATION_PHASES}, "total": clock.last - start}


def reference_epoch_seconds(data, hidden_size: int, warm: int, learning_rate: float) -> float:
    """A trained epoch (training, then validation) of a bidirectional torch.nn.LSTM on the
    reference engine, after `warm` untimed epochs."""
    network, step = build("torch.nn.LSTM", data, hidden_size, learning_rate=learning_rate)
    runner = EpochRunner(step, data, batch_size=1, noise_std=0.0, rng=np.random.default_rng(0))
    for epoch in range(warm):
        runner.run(epoch + 1)
    start = time.thread_time()
    network.train()
    runner.run(warm + 1)
    evaluate(network, data.task, data.valid, 32)
    return time.thread_time() - start


def time_split(options) -> list[dict]:
    rows = []
    for dataset in options.datasets:
        dataset_cfg = OmegaConf.load(project_root() / "conf" / "dataset" / f"{dataset}.yaml")
        try:
            data = _subset(load_dataset(dataset_cfg), options.sequences)
        except Exception as error:  # a stand-in not generated yet: say so and go on
            print(f"  {dataset}: skipped ({str(error).splitlines()[0][:120]})", flush=True)
            continue
        frames = sum(len(s.x) for s in data.train)
        print(f"  {dataset} ({data.task}): {len(data.train)} training sequences ({frames} frames), "
              f"{len(data.valid)} validation; {options.warm} warm epochs, then one timed", flush=True)
        for hidden_size in options.hidden_sizes:
            row = split_row(data, int(hidden_size), int(options.warm), float(options.learning_rate))
            rows.append(row)
            print("    " + split_line(row), flush=True)
    return rows


def split_row(data, hidden_size: int, warm: int, learning_rate: float) -> dict:
    """The phases of one trained epoch of a vanilla network of `hidden_size` blocks on
    `data`, and a torch.nn.LSTM's trained epoch beside it. A step whose loss is not
    finite has no backward and no update: the row counts them (`non_finite_steps`), and
    such a row does not measure a training epoch (take a smaller learning rate)."""
    network, step = build("vanilla", data, hidden_size, learning_rate=learning_rate)
    rng = np.random.default_rng(0)
    runner = EpochRunner(step, data, batch_size=1, noise_std=0.0, rng=rng)
    for epoch in range(warm):
        runner.run(epoch + 1)
    training = timed_training(step, data, rng)
    validation = timed_validation(NativeForward(network), data.task, data.valid, 32)
    reference_s = reference_epoch_seconds(data, hidden_size, warm, learning_rate)
    epoch = training["total"] + validation["total"]
    return {"dataset": data.name, "task": data.task, "hidden_size": hidden_size, "training": training,
            "validation": validation, "epoch_s": epoch, "torch_epoch_s": reference_s,
            "ratio": epoch / reference_s, "learning_rate": learning_rate, "momentum": MOMENTUM}


def split_line(row: dict) -> str:
    epoch = row["epoch_s"]
    parts = [f"train {p} {100 * row['training'][p] / epoch:4.1f}%" for p in TRAINING_PHASES]
    parts += [f"valid {p} {100 * row['validation'][p] / epoch:4.1f}%" for p in VALIDATION_PHASES]
    skipped = row["training"]["non_finite_steps"]
    note = f"  ({skipped} steps with a non-finite loss: not a training epoch)" if skipped else ""
    return (f"N={row['hidden_size']:3d}  epoch {epoch:6.2f} s, torch.nn.LSTM {row['torch_epoch_s']:6.2f} s "
            f"(x{row['ratio']:.2f}):  " + ", ".join(parts) + note)


def split_table(rows: list[dict]) -> list[str]:
    """The rows as Markdown: each phase's share of the trained epoch, in per cent."""
    lines = ["| data set | N | epoch (s) | torch.nn.LSTM (s) | ratio | "
             + " | ".join(f"train {p} %" for p in TRAINING_PHASES) + " | "
             + " | ".join(f"valid {p} %" for p in VALIDATION_PHASES) + " |",
             "|---|---|---|---|---|" + "---|" * (len(TRAINING_PHASES) + len(VALIDATION_PHASES))]
    for r in rows:
        shares = [100 * r["training"][p] / r["epoch_s"] for p in TRAINING_PHASES]
        shares += [100 * r["validation"][p] / r["epoch_s"] for p in VALIDATION_PHASES]
        lines.append(f"| {r['dataset']} | {r['hidden_size']} | {r['epoch_s']:.2f} | {r['torch_epoch_s']:.2f} | "
                     f"{r['ratio']:.2f} | " + " | ".join(f"{x:.1f}" for x in shares) + " |")
    return lines
