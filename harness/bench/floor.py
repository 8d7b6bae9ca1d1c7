"""The floor of a training step on this machine, and every model's trained step as a multiple of it.

The floor is the least work a step of one direction must do at one sequence a step: the
two recurrent products, forward a = R y^{t-1} (R: 4N x N) and backward d y^{t-1} =
R^T d a, which cannot start before the step before them is done. They are timed alone,
repeated, with the compiled loops of harness/kernels/floor.cpp (the compiler, flags and
product loops of the cell kernels, loops.h), each in both of its forms (dot products
with rows, or sums of scaled rows, over R or its transposed copy); a direction's floor
is the faster form forward plus the faster form backward, the median of `trials` CPU
timings (time.thread_time) of `repeats` products each.

A model's trained step: the model trains `warm` epochs untimed (harness.training.train's
EpochRunner: one Nesterov update a sequence, lr 1e-2, momentum 0.9, no noise), so that
its weights are a trial's under way, then `timed` epochs are timed in CPU time: the
training part (`step_us`: its CPU time divided by the training frames; both directions
of a bidirectional task) and the whole epoch as a trial spends it (`epoch_us`: training
plus validation, per training frame). The multiples divide by the floor of every
direction at the model's hidden size: 1.0 would be a step that does nothing but its
recurrent products. The torch modules each model is compared against (harness.bench.
epochs.reference_name) run the same recipe on the reference engine, in the same run.
Weights and products are float32, denormals flushed, one torch thread.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from harness import kernels, project_root
from harness.bench.epochs import REFERENCES, build, reference_name
from harness.datasets import load_dataset
from harness.training.engine import make_forward
from harness.models import names_of, resolve, variant_config
from harness.training.train import EpochRunner, evaluate

FORMS = ("dot", "axpy")  # floor.cpp's forms 0 and 1


def products(N: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """R (4N, N) of Greff et al.'s initialisation, its transposed copy, u (N) and da (4N)."""
    generator = torch.Generator().manual_seed(seed)
    R = 0.1 * torch.randn(4 * N, N, generator=generator)
    return R, R.t().contiguous(), torch.randn(N, generator=generator), torch.randn(4 * N, generator=generator)


def floor_row(N: int, repeats: int, trials: int) -> dict:
    """Microseconds of each recurrent product of a step at N blocks, each form, and the floor."""
    module = kernels.floor()
    R, Rt, u, da = products(N)
    row = {"hidden_size": N, "weights_kb": R.numel() * R.element_size() / 1024}
    for direction, x, forward in (("forward", u, True), ("backward", da, False)):
        for form, name in enumerate(FORMS):
            module.products(R, Rt, x, forward, form, repeats)  # once untimed: caches and clocks warm
            times = []
            for _ in range(trials):
                start = time.thread_time()
                module.products(R, Rt, x, forward, form, repeats)
                times.append((time.thread_time() - start) / repeats * 1e6)
            row[f"{direction}_{name}_us"] = statistics.median(times)
        row[f"{direction}_us"] = min(row[f"{direction}_{name}_us"] for name in FORMS)
    row["floor_us"] = row["forward_us"] + row["backward_us"]
    return row


def step_row(model: str, data, hidden_size: int, warm: int, timed: int, variant: dict | None) -> dict:
    """CPU microseconds a training frame of `model` after `warm` epochs: the training part
    of an epoch (`step_us`) and training plus validation (`epoch_us`), medians of `timed`."""
    network, step = build(model, data, hidden_size, variant)
    engine = "native" if type(step).__name__ == "NativeStep" else "torch"
    runner = EpochRunner(step, data, batch_size=1, noise_std=0.0, rng=np.random.default_rng(0))
    forward = make_forward(engine, network, data.task)
    frames = sum(len(s.x) for s in data.train)
    train_s, epoch_s, failure = [], [], None
    for epoch in range(1, warm + timed + 1):
        network.train()
        start = time.thread_time()
        _, _, failure = runner.run(epoch)
        trained = time.thread_time()
        if failure:
            break
        evaluate(network, data.task, data.valid, 32, forward)
        if epoch > warm:
            train_s.append(trained - start)
            epoch_s.append(time.thread_time() - start)
    step_us = statistics.median(train_s) / frames * 1e6 if train_s else float("nan")
    epoch_us = statistics.median(epoch_s) / frames * 1e6 if epoch_s else float("nan")
    return {"dataset": data.name, "model": model, "engine": engine, "hidden_size": hidden_size,
            "directions": 2 if data.bidirectional else 1, "frames": frames, "step_us": step_us,
            "epoch_us": epoch_us, "failure": failure}


def time_floor(cfg, options) -> dict:
    if kernels.floor() is None:
        print("  skipped: the compiled loops could not be built on this machine", flush=True)
        return {}
    repeats, trials = int(options.repeats), int(options.trials)
    sizes = sorted({int(n) for task in options.tasks.values() for n in task.hidden_sizes})
    floors = {}
    for N in sizes:
        row = floors[N] = floor_row(N, repeats, trials)
        forms = "  ".join(f"{d} {name} {row[f'{d}_{name}_us']:.2f}" for d in ("forward", "backward") for name in FORMS)
        print(f"  N={N:3d}  floor {row['floor_us']:6.2f} us a direction-step "
              f"(forward {row['forward_us']:.2f} + backward {row['backward_us']:.2f}; {forms})", flush=True)
    steps = []
    for dataset, task in options.tasks.items():
        try:
            data = load_dataset(OmegaConf.load(project_root() / "conf" / "dataset" / f"{dataset}.yaml"))
        except Exception as error:  # a stand-in not generated yet: say so and go on
            print(f"  {dataset}: skipped ({str(error).splitlines()[0][:120]})", flush=True)
            continue
        models = [resolve(m).name for m in names_of(task.models or "all", "vanilla", f"bench.floor.tasks.{dataset}.models")]
        references = sorted({reference_name(m) for m in models}, key=list(REFERENCES).index)
        for N in (int(n) for n in task.hidden_sizes):
            measured = {}
            for model in references + models:
                row = step_row(model, data, N, int(task.warm), int(task.timed), variant_config(cfg, model)
                               if model not in REFERENCES else None)
                floor = row["directions"] * floors[N]["floor_us"]
                reference = model if model in REFERENCES else reference_name(model)
                row.update(floor_us=floor, step_multiple=row["step_us"] / floor,
                           epoch_multiple=row["epoch_us"] / floor, reference=reference,
                           step_vs_reference=row["step_us"] / measured[reference]["step_us"]
                           if reference in measured else 1.0)
                if model in REFERENCES:
                    measured[model] = row
                steps.append(row)
                note = f"  stopped: {row['failure']}" if row["failure"] else ""
                print(f"  {dataset:16s} N={N:3d} {model:16s} step {row['step_us']:6.2f} us = "
                      f"{row['step_multiple']:5.2f}x floor, epoch {row['epoch_us']:6.2f} us = "
                      f"{row['epoch_multiple']:5.2f}x; step x{row['step_vs_reference']:.2f} {reference}{note}",
                      flush=True)
    return {"products": list(floors.values()), "steps": steps}


def floor_table(result: dict) -> list[str]:
    """The floor and the steps as Markdown."""
    lines = ["| N | recurrent weights (KB) | forward R y (us) | backward R^T da (us) | floor, a direction-step (us) |",
             "|---|---|---|---|---|"]
    for r in result["products"]:
        lines.append(f"| {r['hidden_size']} | {r['weights_kb']:.0f} | {r['forward_us']:.2f} | {r['backward_us']:.2f} | "
                     f"{r['floor_us']:.2f} |")
    lines += ["", "| data set | N | model | engine | trained step (us a frame) | x floor | with validation (us) "
              "| x floor | step against | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["steps"]:
        lines.append(f"| {r['dataset']} | {r['hidden_size']} | {r['model']} | {r['engine']} | {r['step_us']:.2f} | "
                     f"{r['step_multiple']:.2f} | {r['epoch_us']:.2f} | {r['epoch_multiple']:.2f} | "
                     f"{r['reference']} | {r['step_vs_reference']:.2f} |")
    return lines
