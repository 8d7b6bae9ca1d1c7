"""Make the worked example's data: the "most recent marker" task, as three .npz files.

Each sequence is a stream of symbols, one a frame, given one-hot: 4 markers (A, B, C, D)
and 4 distractors. The first frame is always a marker; after it each frame is a marker
with probability 0.1, otherwise a distractor. The target of every frame is the class of
the most recent marker seen so far (0..3 for A..D), which a network can only know by
remembering it: a memoryless model sees a distractor on about 85% of the frames and can
do no better there than guess, so its frame error stays near 0.6, while an LSTM can
reach close to 0.

    python examples/own_dataset/make_data.py [--out examples/own_dataset/data] [--seed 0]

writes train.npz (300 sequences), valid.npz (60) and test.npz (60), each with
x float32 (sum of T, 8), lengths int64 (n,) and y int64 (sum of T,), the layout of
harness/datasets/npz.py. Sequences have 15 to 40 frames. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MARKERS, DISTRACTORS = 4, 4
MARKER_PROBABILITY = 0.1
SEQUENCES = {"train": 300, "valid": 60, "test": 60}
SHORTEST, LONGEST = 15, 40


def make_split(rng: np.random.Generator, n_sequences: int) -> dict[str, np.ndarray]:
    lengths = rng.integers(SHORTEST, LONGEST + 1, size=n_sequences)
    xs, ys = [], []
    for length in lengths:
        is_marker = rng.random(length) < MARKER_PROBABILITY
        is_marker[0] = True
        symbols = np.where(is_marker, rng.integers(0, MARKERS, size=length),
                           MARKERS + rng.integers(0, DISTRACTORS, size=length))
        # the most recent marker: carry each marker's class forward over the distractors
        last_marker = np.maximum.accumulate(np.where(is_marker, np.arange(length), 0))
        xs.append(np.eye(MARKERS + DISTRACTORS, dtype=np.float32)[symbols])
        ys.append(symbols[last_marker])
    return {"x": np.concatenate(xs), "lengths": lengths.astype(np.int64),
            "y": np.concatenate(ys).astype(np.int64)}


def main(out: Path, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n_sequences in SEQUENCES.items():
        arrays = make_split(rng, n_sequences)
        np.savez(out / f"{split}.npz", **arrays)
        print(f"{out / split}.npz: {n_sequences} sequences, {len(arrays['x'])} frames")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    main(arguments.out, arguments.seed)
