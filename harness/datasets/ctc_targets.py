"""The targets of a CTC data set checked when it is read: every label is a character (1..C,
0 being the blank, harness.training.ctc) and every sequence has the frames its labels need
to be aligned, so that no sequence trains with an infinite or silently zero loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.errors import UserError


def frames_needed(labels: Sequence[int]) -> int:
    """The fewest frames a CTC path of these labels takes: one a label, plus a blank between
    two equal neighbours (a a needs a _ a). With fewer frames the sequence has no alignment,
    its loss is infinite (zero with zero_infinity) and it teaches nothing."""
    labels = list(labels)
    return len(labels) + sum(1 for a, b in zip(labels, labels[1:]) if a == b)


def check_targets(splits, source) -> None:
    """Every CTC sequence of a DataSplits: labels 1..n_outputs-1 and enough frames to align.
    `source` (a file or directory) is named in the message."""
    top = splits.n_outputs - 1
    for split in ("train", "valid", "test"):
        for n, sequence in enumerate(splits.split(split)):
            labels = np.asarray(sequence.y)
            name = sequence.name or f"{split}/{n}"
            if labels.size and (labels.min() < 1 or labels.max() > top):
                bad = int(labels.min() if labels.min() < 1 else labels.max())
                raise UserError(f"{source}: sequence {name} has label {bad}, outside 1..{top} (0 is the CTC blank); "
                                "renumber the labels or set n_classes.")
            needed = frames_needed(labels.tolist())
            if needed > len(sequence.x):
                raise UserError(f"{source}: sequence {name} has {len(labels)} labels, which need at least {needed} "
                                f"frames, but only {len(sequence.x)} frames; CTC cannot align it (its loss would be "
                                "zero, silently): drop the sequence or give it more frames.")

