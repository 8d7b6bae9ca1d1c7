"""Forward + backward time of our GRU and gated-feedback stacks against torch's own RNNs.

    .venv/bin/python scripts/bench_gru.py [--repeats 7] [--out results/bench/gru.json]

Cases: GRULayer vs torch.nn.GRU; gfrnn (GF-LSTM, 3 layers) vs torch.nn.LSTM(num_layers=3)
and torch.nn.GRU(num_layers=3); gfgru (GF-GRU, 3 layers) vs the same two. Shapes
(N, batch, T) = (100, 1, 60) (Greff's JSB setting: one sequence an update) and
(128, 16, 200); input size M = N. One thread (torch.set_num_threads(1)), every model
timed in the same run, the median of `repeats` timed repetitions after one warm-up.
Prints a table and writes JSON: one record a (shape, model) with seconds and the ratio to
its torch reference (ratio > 1: ours is slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from harness.cells import make_layer

SHAPES = [(100, 1, 60), (128, 16, 200)]


def seconds_per_pass(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median time of forward + backward of sum(output)."""

    def one_pass():
        output = module(x)
        output = output[0] if isinstance(output, tuple) else output
        output.sum().backward()

    one_pass()  # warm-up
    times = []
    for _ in range(repeats):
        module.zero_grad(set_to_none=True)
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def models(N: int) -> dict[str, torch.nn.Module]:
    return {
        "GRULayer": make_layer("gru", N, N),
        "gfrnn (3 layers)": make_layer("gfrnn", N, N, layers=3),
        "gfgru (3 layers)": make_layer("gfgru", N, N, layers=3),
        "torch.nn.GRU": torch.nn.GRU(N, N),
        "torch.nn.GRU (3 layers)": torch.nn.GRU(N, N, num_layers=3),
        "torch.nn.LSTM (3 layers)": torch.nn.LSTM(N, N, num_layers=3),
    }


# (ours, the torch model it is compared with)
PAIRS = [
    ("GRULayer", "torch.nn.GRU"),
    ("gfrnn (3 layers)", "torch.nn.LSTM (3 layers)"),
    ("gfrnn (3 layers)", "torch.nn.GRU (3 layers)"),
    ("gfgru (3 layers)", "torch.nn.LSTM (3 layers)"),
    ("gfgru (3 layers)", "torch.nn.GRU (3 layers)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/bench/gru.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    records = []
    for N, batch, T in SHAPES:
        x = torch.randn(T, batch, N, requires_grad=True)
        timings = {name: seconds_per_pass(module, x, args.repeats) for name, module in models(N).items()}
        for ours, reference in PAIRS:
            records.append({"N": N, "batch": batch, "T": T, "ours": ours, "reference": reference,
                            "ours_seconds": timings[ours], "reference_seconds": timings[reference],
                            "ratio": timings[ours] / timings[reference]})

    print(f"forward + backward, median of {args.repeats}, 1 thread (ratio > 1: ours slower)")
    print(f"{'N, batch, T':>14}  {'ours':<18} {'ms':>8}  {'reference':<25} {'ms':>8}  {'ratio':>6}")
    for r in records:
        print(f"{r['N']:>4}, {r['batch']:>2}, {r['T']:>3}  {r['ours']:<18} {1e3 * r['ours_seconds']:8.1f}  "
              f"{r['reference']:<25} {1e3 * r['reference_seconds']:8.1f}  {r['ratio']:6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"threads": 1, "repeats": args.repeats, "torch": torch.__version__, "records": records}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
