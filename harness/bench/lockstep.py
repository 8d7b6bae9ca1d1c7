"""Lockstep against one trial at a time: slot-epochs a second, and full-protocol trials an hour.

`time_lockstep`: vanilla-LSTM configurations drawn once from `search.space` (numpy seed
0, as the study section draws them) train `epochs` epochs each

- one at a time on the native engine (search.lockstep=1, the default path), and
- K at a time for each K of `slots` (and the K that search.lockstep=auto picks here),
  through harness.training.lockstep on this machine's device,

on one torch thread, denormals flushed. Every run trains the same first configurations
for the same epochs, so the rates compare like with like. A full-protocol trial is
`epochs_per_trial` epochs (the study section's measured mean when it ran in the same
bench, else the configured figure), so trials an hour = slot-epochs an hour / that.
"""

from __future__ import annotations

import time

import torch
from omegaconf import open_dict

from harness.bench.study import configurations
from harness.datasets import load_dataset
from harness.study.sweep import largest_network, space_of, trial_config
from harness.training.lockstep import LockstepTrainer, choose_lockstep, resolve_device, slot_bytes
from harness.training.train import train


def _configs(cfg, points: list[dict], epochs: int) -> list:
    out = []
    for k, point in enumerate(points):
        trial_cfg = trial_config(cfg, point)
        with open_dict(trial_cfg):
            trial_cfg.variant = {"name": "vanilla"}
            trial_cfg.max_epochs, trial_cfg.patience, trial_cfg.seed = epochs, epochs + 1, k
            trial_cfg.train.threads = 1
        out.append(trial_cfg)
    return out


def time_lockstep(cfg, options, epochs_per_trial: float | None = None) -> dict:
    data = load_dataset(cfg.dataset)
    device = resolve_device(options.device)
    epochs = int(options.epochs)
    per_trial = float(epochs_per_trial or options.epochs_per_trial)
    sized = cfg.copy()
    with open_dict(sized):
        sized.variant = {"name": "vanilla"}
    largest = largest_network(sized, space_of(cfg), data)
    per_slot = slot_bytes(largest, data)
    auto = choose_lockstep("auto", device, per_slot, trials_left=int(options.trials_left))
    sizes = sorted({int(k) for k in options.slots} | {auto})
    points = configurations(cfg.search.space, max(sizes))
    print(f"  {data.name}, vanilla, {epochs} epochs a configuration, {device}; a slot takes up to "
          f"{per_slot / 2**20:.1f} MiB (N={largest.forward_layer.hidden_size}); "
          f"auto picks {auto}; a full-protocol trial = {per_trial:.1f} epochs", flush=True)
    torch.set_num_threads(1)
    rows = []
    configs = _configs(cfg, points, epochs)
    n_alone = min(4, len(configs))
    start = time.perf_counter()
    for trial_cfg in configs[:n_alone]:
        train(trial_cfg, data=data, log=lambda _: None)
    wall = time.perf_counter() - start
    rows.append(_row("one at a time (native)", 1, n_alone * epochs, wall, per_trial))
    for slots in sizes:
        trainer = LockstepTrainer(data, slots, device, log=lambda _: None)
        for k, trial_cfg in enumerate(configs[:slots]):
            trainer.add(trial_cfg, k)
        start = time.perf_counter()
        while len(trainer):
            trainer.run_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
        rows.append(_row(f"lockstep on {device}" + (" (auto)" if slots == auto else ""), slots, slots * epochs, wall,
                         per_trial))
    base = rows[0]["slot_epochs_per_s"]
    for row in rows:
        row["vs_one_at_a_time"] = row["slot_epochs_per_s"] / base
        print(f"    {row['how']:28s} K={row['slots']:3d}: {row['slot_epochs_per_s']:7.3f} slot-epochs/s  "
              f"{row['trials_per_hour']:8.1f} full-protocol trials/hour  {row['vs_one_at_a_time']:5.2f}x", flush=True)
    return {"dataset": data.name, "device": str(device), "epochs": epochs, "epochs_per_trial": per_trial,
            "slot_bytes": per_slot, "auto": auto, "rows": rows}


def _row(how: str, slots: int, slot_epochs: int, wall: float, per_trial: float) -> dict:
    rate = slot_epochs / wall
    return {"how": how, "slots": slots, "slot_epochs": slot_epochs, "wall_s": wall, "slot_epochs_per_s": rate,
            "trials_per_hour": rate * 3600 / per_trial}
