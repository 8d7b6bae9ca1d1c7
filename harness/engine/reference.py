"""The reference step: autograd through the network, torch's loss and torch's optimizer."""

from __future__ import annotations

import torch

from harness import tasks
from harness.networks import SequenceNetwork


class TorchStep:
    """One update of Greff et al.'s recipe with torch.autograd and torch.optim.SGD.

    `step(batch, x)` trains on `batch` with inputs `x` (the batch's inputs, noise added
    by the caller) and returns the loss as a 0-dim tensor; a non-finite loss is returned
    without updating the weights.
    """

    def __init__(self, network: SequenceNetwork, task: str, learning_rate: float, momentum: float):
        self.network, self.task = network, task
        self.optimizer = torch.optim.SGD(network.parameters(), lr=learning_rate * (1.0 - momentum),
                                         momentum=momentum, nesterov=momentum > 0)

    def __call__(self, batch: tasks.Batch, x: torch.Tensor) -> torch.Tensor:
        loss = tasks.loss(self.task, self.network(x, batch.lengths), batch)
        if not torch.isfinite(loss):
            return loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
