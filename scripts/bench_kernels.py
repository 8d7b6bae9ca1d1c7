"""How fast the compiled GRU and gated-feedback loops are, against torch's own in the same run.

    .venv/bin/python scripts/bench_kernels.py [--repeats 15] [--out results/bench_kernels.json]

Forward + backward (autograd, as training calls them) of one sequence at Greff et al.'s
sizes (batch 1, T = 100, M = 88 inputs, N = 50, 100, 200): GF-LSTM (gflstm) and GF-GRU
(gfgru) stacks of 3 layers against a 3-layer torch.nn.LSTM of the same N; the GRU
against torch.nn.GRU; and a bidirectional case (one stack a direction against a
bidirectional 3-layer torch.nn.LSTM). Also the plain compiled functions without autograd
(what the native engine calls) and, for the "before" column, the Python loops
(ODYSSEY_PYTHON_LOOPS=1). One torch thread, denormals flushed; ours and torch's are timed
alternately, so that load on the machine hits both alike, and the time is the process's
CPU time (time.process_time), which other processes on a shared machine do not inflate.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from harness import kernels, project_root
from harness.models.cells import make_layer

INPUTS, STEPS, LAYERS = 88, 100, 3


class TorchRecurrent(nn.Module):
    """torch.nn.LSTM / GRU with the (T, B, M) -> (T, B, N) interface of our layers."""

    def __init__(self, kind: str, hidden_size: int, layers: int = 1, bidirectional: bool = False):
        super().__init__()
        module = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = module(INPUTS, hidden_size, num_layers=layers, bidirectional=bidirectional)

    def forward(self, x):
        return self.rnn(x)[0]


class Bidirectional(nn.Module):
    """One stack a direction, as harness.models.networks runs a bidirectional task."""

    def __init__(self, variant: str, hidden_size: int):
        super().__init__()
        self.forward_stack = make_layer(variant, INPUTS, hidden_size, layers=LAYERS)
        self.backward_stack = make_layer(variant, INPUTS, hidden_size, layers=LAYERS)

    def forward(self, x):
        return torch.cat((self.forward_stack(x), self.backward_stack(x.flip(0)).flip(0)), dim=2)


def training_step(module: nn.Module, x: torch.Tensor):
    return lambda: module(x).sum().backward()


def plain_step(stack, x: torch.Tensor):
    """The compiled gated-feedback functions called directly, without autograd."""
    compiled = kernels.gated_feedback()
    below = [w.detach() for w in stack.weight_below]
    bias = [b.detach() for b in stack.bias]
    recurrent = [w.detach() for w in stack.weight_recurrent]
    feedback, global_gates = stack.feedback.detach(), stack.global_gate_recurrent.detach()
    lstm = stack.cell == "gflstm"

    def step():
        y, *saved = compiled.forward(x, below, bias, recurrent, feedback, global_gates, None, lstm, False)
        compiled.backward(torch.ones_like(y), x, below, None, *saved, lstm, False, False)

    return step


def cpu_seconds(step) -> float:
    start = time.process_time()
    step()
    return time.process_time() - start


def compare(ours, reference, repeats: int) -> tuple[float, float]:
    """Median seconds of `ours` and of `reference`, timed alternately after a warm-up."""
    for _ in range(5):
        cpu_seconds(ours), cpu_seconds(reference)
    ours_times, reference_times = [], []
    for _ in range(repeats):
        ours_times.append(cpu_seconds(ours))
        reference_times.append(cpu_seconds(reference))
    return statistics.median(ours_times), statistics.median(reference_times)


def python_loops(step, repeats: int) -> float:
    os.environ["ODYSSEY_PYTHON_LOOPS"] = "1"
    try:
        step()
        return statistics.median(cpu_seconds(step) for _ in range(repeats))
    finally:
        del os.environ["ODYSSEY_PYTHON_LOOPS"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--python-repeats", type=int, default=3, help="repeats of the Python loops (0: skip)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--out", type=Path, default=project_root() / "results" / "bench_kernels.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    compiled = kernels.gru() is not None and kernels.gated_feedback() is not None
    print(f"bench_kernels: torch {torch.__version__}, 1 thread, denormals flushed, compiled loops "
          f"{'ready' if compiled else 'UNAVAILABLE (Python loops)'}, batch 1, T={STEPS}, M={INPUTS}, "
          f"median CPU ms of {args.repeats}")
    header = (f"{'model':22s} {'N':>4s} {'ours ms':>9s} {'reference':>20s} {'ref ms':>8s} {'ratio':>6s} "
              f"{'plain ms':>9s} {'Python ms':>10s} {'Python ratio':>12s}")
    print(header)
    print("-" * len(header))
    rows = []
    x = torch.randn(STEPS, 1, INPUTS)
    cases = [(variant, N, False) for N in args.sizes for variant in ("gflstm", "gfgru", "gru")]
    cases += [(variant, 100, True) for variant in ("gflstm", "gfgru")]
    for variant, N, bidirectional in cases:
        if bidirectional:
            ours = Bidirectional(variant, N)
            name, reference = "torch.nn.LSTM x3 bidi", TorchRecurrent("lstm", N, LAYERS, bidirectional=True)
        elif variant == "gru":
            ours = make_layer("gru", INPUTS, N)
            name, reference = "torch.nn.GRU", TorchRecurrent("gru", N)
        else:
            ours = make_layer(variant, INPUTS, N, layers=LAYERS)
            name, reference = "torch.nn.LSTM x3", TorchRecurrent("lstm", N, LAYERS)
        ours_s, reference_s = compare(training_step(ours, x), training_step(reference, x), args.repeats)
        plain_s = None
        if compiled and variant != "gru" and not bidirectional:
            plain_s = statistics.median(cpu_seconds(plain_step(ours, x)) for _ in range(args.repeats))
        python_s = python_loops(training_step(ours, x), args.python_repeats) if args.python_repeats else None
        label = variant + (" bidirectional" if bidirectional else "") + (f" x{LAYERS}" if variant != "gru" else "")
        row = {"model": label, "variant": variant, "bidirectional": bidirectional, "hidden_size": N, "batch": 1,
               "steps": STEPS, "inputs": INPUTS, "layers": 1 if variant == "gru" else LAYERS,
               "ms": 1e3 * ours_s, "reference": name, "reference_ms": 1e3 * reference_s,
               "ratio": ours_s / reference_s, "plain_ms": plain_s and 1e3 * plain_s,
               "python_loops_ms": python_s and 1e3 * python_s,
               "python_loops_ratio": python_s and python_s / reference_s}
        rows.append(row)
        plain = f"{1e3 * plain_s:9.2f}" if plain_s else f"{'':9s}"
        python = f"{1e3 * python_s:10.1f} {python_s / reference_s:12.2f}" if python_s else ""
        print(f"{label:22s} {N:4d} {1e3 * ours_s:9.2f} {name:>20s} {1e3 * reference_s:8.2f} "
              f"{ours_s / reference_s:6.2f} {plain} {python}", flush=True)
    result = {"torch": torch.__version__, "threads": 1, "flush_denormal": True, "compiled_loops": compiled,
              "timer": "process CPU time, median", "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
