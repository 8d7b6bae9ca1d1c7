"""Compiled time loops for the cells (harness/kernels/*.cpp), built once with torch's
C++ extension tools and cached in the virtualenv (.venv/torch_extensions, or $TORCH_EXTENSIONS_DIR).

The C++ mirrors the Python loops of harness/models/cells.py and harness/models/gated_feedback.py
equation for equation; it exists because at Greff et al.'s sizes (batch 1, N <= 200)
Python's cost per call is most of the time. `python -m harness.kernels` (run by
scripts/setup.sh) builds them (about a minute each); if they cannot be built, or
ODYSSEY_PYTHON_LOOPS=1 is set, the cells run their Python loops, with the same results.

Each module is also a pair of plain functions, usable without autograd (tensors
contiguous, float32 or float64; `saved` is whatever forward returned after y, passed
back unchanged and in order; dx is None unless need_dx):

`gru()` (gru.cpp), the GRU of cells.GRULayer; W (3N, M), R (3N, N), b (3N), rows z, r, h:
    forward(x (T, B, M), W, R, b) -> [h (T, B, N), *saved]
    backward(dY (T, B, N), x, W, R, *saved, need_dx) -> [dx, dW, dR, db]

`gated_feedback()` (gated_feedback.cpp), GF-LSTM (lstm=True) and GF-GRU, on the
parameters of gated_feedback.GatedFeedbackRNN as it stores them (lists of L tensors,
layer 1 first; layouts in its docstring):
    forward(x (T, B, M), weight_below, bias, weight_recurrent, feedback, global_gate_recurrent,
            fixed, lstm, concat) -> [y (T, B, L N) if concat else (T, B, N), *saved]
    backward(dY, x, weight_below, fixed, *saved, lstm, concat, need_dx)
        -> [dx, d feedback, d global_gate_recurrent, *d weight_below (L), *d bias (L),
            *d weight_recurrent (L)], each the shape of its parameter
    (`fixed`: the (L, B, L) fixed global gates [j, b, i] of `_fixed_gates`, or None.)

`ctc()` (ctc.cpp), CTC for the native engine (blank 0; lengths int64):
    ctc_loss(scores (T, B, K), targets (concatenated), input_lengths (B), target_lengths (B))
        -> [losses (B) double, d (sum of losses) / d scores (T, B, K)]
    best_path(scores, lengths) -> [labels of each sequence]
    edit_distance(a, b) -> int
    decoding_errors(scores, lengths, targets, target_lengths) -> [edits, target labels]

`lstm()` (lstm.cpp): see cells.LSTMRecurrence.

`floor()` (floor.cpp), the recurrent products of one step alone (harness.bench.floor):
    products(R (4N, n_rec), Rt (R transposed, contiguous), input, forward, form, repeats)
        -> R input (forward) or R^T input (backward), computed `repeats` times in the
        form `form` (0: dot products with rows, 1: sums of scaled rows; see floor.cpp)
"""

from __future__ import annotations

import fcntl
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

_loaded: dict[str, object] = {}
CTC_MODULE = "odyssey_ctc_v2"  # the name of the built CTC module (its folder under build_directory)


def lstm():
    """The compiled LSTM loops, or None (then cells.py uses its Python loops)."""
    if os.environ.get("ODYSSEY_PYTHON_LOOPS") == "1":
        return None
    if "lstm" not in _loaded:
        _loaded["lstm"] = _build("odyssey_lstm_v10", "lstm.cpp", ["-fno-trapping-math"])  # see _module
    return _loaded["lstm"]


def gru():
    """The compiled GRU loops (gru.cpp), or None (then cells.py uses its Python loops)."""
    return _module("gru", "odyssey_gru_v3", "gru.cpp")


def gated_feedback():
    """The compiled GF-LSTM / GF-GRU loops (gated_feedback.cpp), or None (Python loops)."""
    return _module("gated_feedback", "odyssey_gated_feedback_v5", "gated_feedback.cpp")


def ctc():
    """The compiled CTC loss, gradient and best-path decoding (ctc.cpp), or None (then the
    native engine uses torch's ctc_loss, and evaluation harness/training/ctc.py's decoding)."""
    return _module("ctc", CTC_MODULE, "ctc.cpp")


def floor():
    """The recurrent products of a step alone (floor.cpp), for `odyssey bench`'s floor, or None."""
    return _module("floor", "odyssey_floor_v1", "floor.cpp")


def _module(key: str, name: str, source: str):
    if os.environ.get("ODYSSEY_PYTHON_LOOPS") == "1":
        return None
    if key not in _loaded:
        # -fno-trapping-math: without it GCC keeps the clamp in fast_exp (loops.h) a branch
        # and leaves every loop with an exp in it scalar; values are the same either way.
        _loaded[key] = _build(name, source, ["-fno-trapping-math"])
    return _loaded[key]


def build_directory(name: str) -> Path:
    """Where module `name` is built and cached: one folder a virtualenv (unless
    TORCH_EXTENSIONS_DIR says otherwise), since two checkouts on one machine would
    otherwise rebuild each other's modules in turn."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(sys.prefix) / "torch_extensions") / name


def _build(name: str, source: str, flags: list[str] = ()):
    # The build needs the virtualenv's `ninja`; the same PATH every time also keeps ninja
    # from rebuilding because the environment differs between processes.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep)[:1]:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils import cpp_extension

        directory = build_directory(name)
        directory.mkdir(parents=True, exist_ok=True)
        with _loading(directory):
            return cpp_extension.load(name=name, sources=[str(Path(__file__).with_name(source))],
                                      extra_cflags=["-O3", "-march=native", *flags], verbose=False,
                                      build_directory=str(directory))
    except Exception as error:  # no compiler, no ninja: fall back to Python, and say so once
        warnings.warn(f"the compiled cell loops could not be built ({str(error).splitlines()[0][:160]}); "
                      "using the Python loops (same results, slower). Run scripts/setup.sh to see why.")
        return None


@contextmanager
def _loading(directory: Path):
    """Hold an exclusive flock on `directory`/odyssey.lock while torch loads (and if
    need be builds) the module there, and clear a `lock` file that a dead process left.

    Every process, even one whose module is built, takes torch's build lock (the file
    `lock`, created and deleted by torch.utils.file_baton.FileBaton) while it loads; a
    process killed meanwhile (SIGKILL, the out-of-memory killer, a batch system's time
    limit) leaves the file, and every later process on the machine then waits for it
    forever. A flock is released by the kernel when its process dies, so whoever holds it
    knows that no other odyssey process is loading, and that a `lock` file is stale."""
    with open(directory / "odyssey.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: torch's own lock alone, as before
            yield
            return
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
