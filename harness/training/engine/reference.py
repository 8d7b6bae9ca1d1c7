"""The reference step: autograd through the network, torch's loss and the recipe's torch.optim optimizer."""

from __future__ import annotations

import torch

from harness.models.networks import SequenceNetwork
from harness.training import tasks
from harness.training.recipes import Recipe


class TorchStep:
    """One update of a recipe with torch.autograd and the recipe's torch.optim optimizer
    (Greff et al.'s: torch.optim.SGD(nesterov=True), step learning_rate * (1 - momentum)).

    `step(batch, x)` trains on `batch` with inputs `x` (the batch's inputs, noise added
    by the caller) and returns the loss as a 0-dim tensor; a non-finite loss is returned
    without updating the weights.
    """

    def __init__(self, network: SequenceNetwork, task: str, recipe: Recipe):
        self.network, self.task = network, task
        self.update = recipe.update(network.parameters())

    def __call__(self, batch: tasks.Batch, x: torch.Tensor) -> torch.Tensor:
        loss = tasks.loss(self.task, self.network(x, batch.lengths), batch)
        if not torch.isfinite(loss):
            return loss.detach()
        self.update.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.update()
        return loss.detach()
