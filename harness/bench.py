"""`odyssey bench`: how fast every cell is, against torch's own in the same run.

Two measurements, both on one torch thread (as sweep workers run), printed as tables and
written to results/bench/bench.json:

1. forward + backward of one layer, at Greff et al.'s JSB size (N=100, batch 1, T=60)
   and a batched size (N=128, batch 16, T=200): the median over repeats, and its ratio
   to torch.nn.LSTM (LSTM variants, GF-RNN) or torch.nn.GRU (GRU) timed alternately in
   the same loop, so that load on the machine hits both alike;
2. the training recipe itself: `bench.epochs` epochs of one update per JSB sequence
   (Nesterov SGD, sum loss) with our vanilla, NP and FGR cells and with torch.nn.LSTM
   in the same network, N=100.

Keys: bench.repeats, bench.epochs, bench.variants (list; default all), bench.out.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from harness import kernels, project_root
from harness.cells import VARIANTS, make_layer
from harness.datasets import load_dataset
from harness.networks import SequenceNetwork
from harness.tasks import loss as task_loss
from harness.tasks import make_batch

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
    if variant == "gru":
        return "torch.nn.GRU", TorchRecurrent("gru", INPUTS, hidden_size)
    if variant in ("gfrnn", "gfgru"):
        return "torch.nn.LSTM x3", TorchRecurrent("lstm", INPUTS, hidden_size, layers=3)
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


def time_recipe(epochs: int) -> list[dict]:
    """Seconds for `epochs` epochs of Greff's recipe on JSB, ours against torch.nn.LSTM."""
    data = load_dataset({"name": "jsb_chorales", "format": "pianoroll", "task": "next_step",
                         "path": "datasets/jsb_chorales/jsb-chorales-quarter.json"})
    batches = [make_batch([s], "next_step") for s in data.train]
    rows = []
    reference_seconds = None
    for label in ("torch.nn.LSTM", "vanilla", "np", "fgr"):
        torch.manual_seed(0)
        network = SequenceNetwork("np", INPUTS, 100, INPUTS)
        if label == "torch.nn.LSTM":
            network.forward_layer = TorchRecurrent("lstm", INPUTS, 100)
        else:
            network.forward_layer = make_layer(label, INPUTS, 100)
        optimizer = torch.optim.SGD(network.parameters(), lr=1e-2 * 0.1, momentum=0.9, nesterov=True)
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in batches:
                loss = task_loss("next_step", network(batch.x), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        seconds = time.perf_counter() - start
        reference_seconds = reference_seconds or seconds
        rows.append({"model": label, "epochs": epochs, "seconds": seconds, "ratio": seconds / reference_seconds})
        print(f"  {label:14s} {epochs} JSB epochs: {seconds:7.1f} s   ratio {seconds / reference_seconds:5.2f}",
              flush=True)
    return rows


def bench(cfg) -> dict:
    options = dict(cfg.get("bench") or {})
    repeats = int(options.get("repeats", 20))
    epochs = int(options.get("epochs", 5))
    variants = list(options.get("variants") or VARIANTS)
    torch.set_num_threads(1)
    compiled = kernels.lstm() is not None
    print(f"odyssey bench: 1 torch thread, torch {torch.__version__}, "
          f"{'compiled' if compiled else 'Python'} LSTM loops, median of {repeats}")
    print("forward + backward of one layer, against torch in the same run:")
    layers = time_layers(variants, repeats)
    recipe = time_recipe(epochs) if epochs > 0 else []
    result = {"torch": torch.__version__, "threads": 1, "compiled_loops": compiled, "repeats": repeats,
              "layers": layers, "recipe": recipe}
    out = Path(options.get("out") or project_root() / "results" / "bench" / "bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return result
