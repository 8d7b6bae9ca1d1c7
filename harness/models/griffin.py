"""Griffin's real-gated linear recurrent unit (RG-LRU), a cell given as a class (docs/cells.md).

De, Smith, Fernando, Botev, Cristian-Muraru, Gu, Haroun, Berrada, Chen, Srinivasan,
Desjardins, Doucet, Budden, Teh, Pascanu, de Freitas & Gulcehre, "Griffin: Mixing Gated
Linear Recurrences with Local Attention for Efficient Language Models", arXiv 2402.19427
(2024), section 2.4, in the symbols of docs/cells.md (x^t has M values, N blocks)::

    u^t  = W_u x^t + b_u                              the unit's input
    r^t  = sigma(W_a x^t + b_a)                       recurrence gate
    i^t  = sigma(W_x x^t + b_x)                       input gate
    a^t  = sigma(lambda + lambda_0)^(c r^t)           decay, c = 8
    h^t  = a^t * h^{t-1} + sqrt(1 - (a^t)^2) * (i^t * u^t)

where W_* are N x M, b_* and lambda have N entries, h^0 = 0. Griffin applies the unit to
an N-dimensional signal (a linear layer and a short convolution before it, its gates
block-diagonal N x N); here the unit takes x^t itself: the input branch u^t is that
linear layer (no convolution) and the gates read x^t through full N x M matrices, like
minGRU's. The decay is a fixed `lambda_0` plus a learned lambda, so that odyssey's
initialisation of every parameter ~ N(0, init_std^2) (harness.models.cell_class) starts the
unit where Griffin starts it, a^c in [0.9, 0.999]: lambda_0 = 5.05 gives a^c = 0.95 at
lambda = 0 (init_std 0.1 spreads it over about 0.93-0.96).

No gate reads the state, so a sequence is the recurrence h^t = a^t h^{t-1} + b^t of
harness.models.minimal, computed by its loop or its scan (`form`, as minGRU's); log a^t =
-c r^t softplus(-(lambda + lambda_0)) is computed in log space, and 1 - (a^t)^2 as
-expm1(2 log a^t).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.minimal import InputGatedCell

# c of Griffin's section 2.4, and lambda_0: sigma(lambda_0)^c = 0.95, the middle of
# Griffin's initial range of a^c, [0.9, 0.999].
DECAY_POWER = 8.0
DECAY_OFFSET = math.log(0.95 ** (1 / DECAY_POWER) / (1 - 0.95 ** (1 / DECAY_POWER)))


class RGLRU(InputGatedCell):
    """The RG-LRU of Griffin (De et al. 2024), on the layer's input (module docstring)::

        r^t = sigma(W_a x^t + b_a),  i^t = sigma(W_x x^t + b_x)
        a^t = sigma(lambda + lambda_0)^(8 r^t)
        h^t = a^t * h^{t-1} + sqrt(1 - (a^t)^2) * (i^t * (W_u x^t + b_u))

    Stored: `weight_input` (3N, M) and `bias` (3N) with rows a, x, u, and `decay`
    (lambda, N). Input x (T, B, M), output h (T, B, N). Weights (export_weights):
    W_a W_x W_u b_a b_x b_u lambda.
    """

    BLOCKS = ("a", "x", "u")

    def __init__(self, input_size: int, hidden_size: int, form: str = "auto", chunk: int = 16):
        super().__init__(input_size, hidden_size, form, chunk)
        self.decay = nn.Parameter(torch.zeros(hidden_size))  # lambda; odyssey draws it ~ N(0, init_std^2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_r, a_i, u = self.projections(x)  # (T, B, N) each
        log_base = -F.softplus(-(self.decay + DECAY_OFFSET))  # log sigma(lambda + lambda_0), (N,)
        log_a = DECAY_POWER * torch.sigmoid(a_r) * log_base  # (T, B, N)
        keep_in = (-torch.expm1(2 * log_a)).clamp_min(1e-12).sqrt()  # sqrt(1 - a^2)
        return self.recurrence(log_a, log_a.exp(), keep_in * torch.sigmoid(a_i) * u)

    def weight_views(self) -> dict[str, torch.Tensor]:
        return {**super().weight_views(), "lambda": self.decay}
