"""How one training step runs: the torch reference path and the native engine.

A step takes one batch (one sequence in Greff et al.'s recipe, a minibatch in others),
computes the task's loss (summed over frames, harness.training.tasks) and its gradient into every
parameter's `.grad`, and applies the recipe's update (harness.training.recipes: clipping, then
Nesterov SGD, Adam or AdamW). Two engines compute the same thing:

- `torch` (`TorchStep`, the reference): the network's forward through autograd,
  `harness.training.tasks.loss`, `loss.backward()` and the recipe's torch.optim optimizer;
- `native` (`NativeStep`, the default for the LSTM family): the compiled LSTM loops
  called directly (no autograd graph), the read-out, loss and its gradient in closed form
  (CTC: the compiled forward-backward of harness/kernels/ctc.cpp), the backward pass through time into
  preallocated gradient buffers (the parameters' `.grad`), and Greff's Nesterov update
  in one compiled loop over every tensor; any other update is the recipe's torch.optim
  optimizer on those same gradients. The GRU and the GF-RNN stacks run their own
  compiled loops through their autograd functions; where the compiled loops could not
  be built, `make_step` says so once and trains on the reference path.

Validation and test run the engine's forward (`make_forward`): `NativeForward`, the
compiled loops called directly without autograd, where the native engine trains the
network; the network's own forward otherwise.

`train.engine` (conf/train/greff.yaml) chooses; tests/test_engine.py checks that both give
the same gradients and the same weights after several updates, for every LSTM variant
and task, and tests/test_recipes.py the updates against torch.optim applied by hand.
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.errors import UserError
from harness.models.networks import SequenceNetwork
from harness.training.engine.native import NativeForward, NativeStep, native_supports
from harness.training.engine.reference import TorchStep
from harness.training.recipes import Recipe

ENGINES = ("native", "torch")


def make_step(engine: str, network: SequenceNetwork, task: str, recipe: Recipe,
              log: Callable[[str], None] = print):
    """The step function `step(batch, x) -> loss` of `engine` for this network, task and
    recipe; `step.update` is the recipe's update (its `end_epoch` runs the schedule)."""
    if engine not in ENGINES:
        raise UserError(f"train.engine={engine} is unknown; choose one of {', '.join(ENGINES)}.")
    if engine == "native":
        reason = native_supports(network, task)
        if reason is None:
            return NativeStep(network, task, recipe)
        log(f"  engine: the native engine does not cover {reason}; training on the torch path")
    return TorchStep(network, task, recipe)


def make_forward(engine: str, network: SequenceNetwork, task: str) -> Callable:
    """The forward of evaluation, `forward(x, lengths) -> scores (T, B, K)` without autograd:
    the compiled loops called directly (NativeForward) where the native engine trains this
    network, else the network's own forward (the reference path)."""
    if engine == "native" and native_supports(network, task) is None:
        return NativeForward(network)

    @torch.no_grad()
    def reference(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return network(x, lengths)

    return reference
