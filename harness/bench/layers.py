"""Forward + backward of one layer of every model, fresh weights, against torch.

At Greff et al.'s JSB size (N=100, batch 1, T=60) and a batched size (N=128, batch 16,
T=200): the median over repeats, and its ratio to torch.nn.LSTM (LSTM variants),
torch.nn.GRU (GRU) or a 3-layer torch.nn.LSTM (GF-RNN), timed alternately in the same
loop, so that load on the machine hits both alike.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from harness.models import resolve
from harness.models.cells import make_layer

SHAPES = ({"hidden_size": 100, "batch": 1, "steps": 60}, {"hidden_size": 128, "batch": 16, "steps": 200})
INPUTS = 88


class TorchRecurrent(nn.Module):
    """torch.nn.LSTM / GRU with the (T, B, M) -> (T, B, N) interface of our layers."""

    def __init__(self, kind: str, input_size: int, hidden_size: int, layers: int = 1):
        super().__init__()
        module = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = module(input_size, hidden_size, num_layers=layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def reference_for(variant: str, hidden_size: int) -> tuple[str, nn.Module]:
    model = resolve(variant)
    if model.gated_feedback:
        return "torch.nn.LSTM x3", TorchRecurrent("lstm", INPUTS, hidden_size, layers=3)
    if model.cell == "gru":
        return "torch.nn.GRU", TorchRecurrent("gru", INPUTS, hidden_size)
    return "torch.nn.LSTM", TorchRecurrent("lstm", INPUTS, hidden_size)


def step_seconds(module: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    module(x).sum().backward()
    return time.perf_counter() - start


def time_layers(variants: list[str], repeats: int) -> list[dict]:
    rows = []
    for shape in SHAPES:
        N, B, T = shape["hidden_size"], shape["batch"], shape["steps"]
        x = torch.randn(T, B, INPUTS)
        for variant in variants:
            ours = make_layer(variant, INPUTS, N)
            name, reference = reference_for(variant, N)
            for _ in range(2):  # warm up both
                step_seconds(ours, x), step_seconds(reference, x)
            ours_times, reference_times = [], []
            for _ in range(repeats):  # alternate, so that load affects both alike
                ours_times.append(step_seconds(ours, x))
                reference_times.append(step_seconds(reference, x))
            ours_median, reference_median = statistics.median(ours_times), statistics.median(reference_times)
            rows.append({**shape, "variant": variant, "reference": name,
                         "ms": 1e3 * ours_median, "reference_ms": 1e3 * reference_median,
                         "ratio": ours_median / reference_median})
            print(f"  N={N:3d} B={B:2d} T={T:3d}  {variant:8s} {1e3 * ours_median:8.2f} ms   "
                  f"{name:17s} {1e3 * reference_median:8.2f} ms   ratio {ours_median / reference_median:5.2f}",
                  flush=True)
    return rows
