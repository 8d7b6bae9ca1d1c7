"""The network of each task: recurrent layer(s) of any variant and a linear read-out.

    next_step   one unidirectional layer        -> K sigmoid outputs (logits here)
    framewise   a bidirectional layer           -> softmax over the classes (logits here)
    ctc         a bidirectional layer           -> softmax over characters + blank
    regression  uni- or bidirectional           -> K linear outputs

A bidirectional layer is one cell each way, their outputs concatenated (Graves &
Schmidhuber 2005, as in Greff et al.); for the gated-feedback RNN each direction gets its
own stack. Sequences in a batch are padded at the end; the backward direction reverses
each sequence within its own length, so padding never leaks into real frames.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.cells import make_layer


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a padded (T, B, D) batch in its first lengths[b] frames."""
    T = x.shape[0]
    steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    index = torch.where(steps < lengths.unsqueeze(0), lengths.unsqueeze(0) - 1 - steps, steps)  # (T, B)
    return x.gather(0, index.unsqueeze(2).expand_as(x))


class SequenceNetwork(nn.Module):
    """Recurrent layer(s) of `variant` and a linear read-out; scores (T, B, n_outputs).

    Every weight, the read-out's too, starts ~ N(0, init_std^2) (Greff et al.: 0.1).
    """

    def __init__(self, variant: str, input_size: int, hidden_size: int, n_outputs: int,
                 bidirectional: bool = False, init_std: float = 0.1, **layer_options):
        super().__init__()
        self.variant = variant
        self.bidirectional = bidirectional
        options = dict(init_std=init_std, **layer_options)
        self.forward_layer = make_layer(variant, input_size, hidden_size, **options)
        self.backward_layer = make_layer(variant, input_size, hidden_size, **options) if bidirectional else None
        width = getattr(self.forward_layer, "output_size", hidden_size) * (2 if bidirectional else 1)
        self.readout = nn.Linear(width, n_outputs)
        with torch.no_grad():
            self.readout.weight.normal_(0.0, init_std)
            self.readout.bias.normal_(0.0, init_std)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x (T, B, M), lengths (B,) or None for full length -> scores (T, B, n_outputs)."""
        y = self.forward_layer(x)  # (T, B, N)
        if self.backward_layer is not None:
            if lengths is None:
                y_back = self.backward_layer(x.flip(0)).flip(0)
            else:
                y_back = reverse_within_lengths(self.backward_layer(reverse_within_lengths(x, lengths)), lengths)
            y = torch.cat((y, y_back), dim=2)  # (T, B, 2N)
        return self.readout(y)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
