"""minGRU and minLSTM (harness.models.minimal): the recurrence as a loop against the chunked scan.

Forward + backward of one layer, fresh weights (the same for both forms), at the shapes of
`bench.scan.shapes` (one sequence a step as in Greff's recipe, and minibatches), the
median over repeats, timed alternately with torch.nn.GRU / torch.nn.LSTM of the same
size in the same loop, so that load on the machine hits all alike. `auto` is the form
harness.models.minimal chooses at that shape; the table says whether it chose the faster.
"""

from __future__ import annotations

import statistics

import torch

from harness.bench.layers import INPUTS, TorchRecurrent, step_seconds
from harness.models.minimal import SCAN_WIDTH, MinGRU, MinLSTM

MODELS = {"mingru": (MinGRU, "gru"), "minlstm": (MinLSTM, "lstm")}


def time_scan(options) -> list[dict]:
    rows = []
    for shape in options.shapes:
        N, B, T = int(shape.hidden_size), int(shape.batch), int(shape.steps)
        x = torch.randn(T, B, INPUTS)
        for name, (cls, kind) in MODELS.items():
            loop = cls(input_size=INPUTS, hidden_size=N, form="loop")
            scan = cls(input_size=INPUTS, hidden_size=N, form="scan")
            scan.load_state_dict(loop.state_dict())
            reference = TorchRecurrent(kind, INPUTS, N)
            modules = {"loop": loop, "scan": scan, "torch": reference}
            times = {key: [] for key in modules}
            for repeat in range(2 + int(options.repeats)):  # two untimed passes warm every module up
                for key, module in modules.items():
                    seconds = step_seconds(module, x)
                    if repeat >= 2:
                        times[key].append(seconds)
            ms = {key: 1e3 * statistics.median(values) for key, values in times.items()}
            auto = "scan" if B * N <= SCAN_WIDTH else "loop"
            faster = "scan" if ms["scan"] < ms["loop"] else "loop"
            rows.append({"hidden_size": N, "batch": B, "steps": T, "model": name, "loop_ms": ms["loop"],
                         "scan_ms": ms["scan"], "scan_vs_loop": ms["scan"] / ms["loop"], "auto": auto,
                         "faster": faster, "reference": f"torch.nn.{kind.upper()}", "reference_ms": ms["torch"]})
            print(f"  N={N:3d} B={B:2d} T={T:3d}  {name:8s} loop {ms['loop']:7.2f} ms  scan {ms['scan']:7.2f} ms  "
                  f"scan/loop {ms['scan'] / ms['loop']:5.2f}  auto {auto} ({'faster' if auto == faster else 'SLOWER'})"
                  f"  torch.nn.{kind.upper()} {ms['torch']:7.2f} ms", flush=True)
    return rows
