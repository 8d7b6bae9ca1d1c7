"""Lockstep: many trials of a study trained at once, as one batched computation.

Greff et al.'s recipe updates after every single sequence, so one trial cannot fill a
GPU. A study is hundreds of independent trials of the same shapes; `search.lockstep=K`
trains K of them side by side in one worker: each slot keeps its own weights,
hyperparameters, seed, data order, input noise and early stopping, and its numbers are
those of the same trial trained alone (tests/test_lockstep.py). Slots of different hidden
sizes share a step by exact zero padding (harness.training.lockstep.stack).

    stack.py     the K slots' weights stacked and padded; the batched forward pass; Greff's update
    trainer.py   the slots' trials: set up as alone, an epoch of all of them, validation, early stopping
    device.py    train.device (cpu, cuda, auto), the memory of a slot, the K of search.lockstep=auto

The sweep (harness.study.sweep) asks the study for a trial whenever a slot is free, and tells
each result as soon as its slot ends. docs/engine.md, "Lockstep", has the measurements.
"""

from harness.training.lockstep.device import check_lockstep_setting, choose_lockstep, resolve_device, slot_bytes
from harness.training.lockstep.trainer import LockstepTrainer, covers, train_on_device

__all__ = ["LockstepTrainer", "check_lockstep_setting", "choose_lockstep", "covers", "resolve_device", "slot_bytes", "train_on_device"]
