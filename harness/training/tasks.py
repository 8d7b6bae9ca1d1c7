"""What is learned and how it is scored: the loss and the metric of each task (docs/tasks.md).

Every loss is the SUM over the frames of the batch (Greff et al.'s convention, which the
learning-rate range of the search assumes). Every metric is lower-is-better and is
accumulated over a whole split as (sum of errors, count) before dividing:

| task       | loss                               | metric                                        |
|------------|------------------------------------|-----------------------------------------------|
| next_step  | Bernoulli NLL of frame t+1, summed | `nll`: NLL per predicted frame (sum over keys)|
| framewise  | cross-entropy per frame, summed    | `frame_error`: misclassified frames / frames  |
| regression | squared error, summed              | `mse`: squared error per output value         |
| ctc        | CTC, summed over sequences         | `cer`: edit distance / reference characters   |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from harness import kernels
from harness.datasets import Sequence

PADDING_CLASS = -100  # ignored by cross_entropy


@dataclass
class Batch:
    """Sequences padded at the end: x (T, B, D), lengths (B,), targets as the task needs."""

    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor  # (T, B) True on real frames
    target_lengths: torch.Tensor | None = None  # ctc only

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())


def make_batch(sequences: list[Sequence], task: str) -> Batch:
    lengths = torch.tensor([len(s.x) for s in sequences])
    T, B, D = int(lengths.max()), len(sequences), sequences[0].x.shape[1]
    x = torch.zeros(T, B, D)
    mask = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)
    for b, s in enumerate(sequences):
        x[: len(s.x), b] = torch.from_numpy(s.x)
    target_lengths = None
    if task == "ctc":
        y = torch.from_numpy(np.concatenate([s.y for s in sequences]).astype(np.int64))
        target_lengths = torch.tensor([len(s.y) for s in sequences])
    elif task == "framewise":
        y = torch.full((T, B), PADDING_CLASS, dtype=torch.int64)
        for b, s in enumerate(sequences):
            y[: len(s.y), b] = torch.from_numpy(s.y.astype(np.int64))
    else:  # next_step, regression: float targets (T, B, K)
        y = torch.zeros(T, B, sequences[0].y.shape[1])
        for b, s in enumerate(sequences):
            y[: len(s.y), b] = torch.from_numpy(s.y)
    return Batch(x=x, lengths=lengths, y=y, mask=mask, target_lengths=target_lengths)


def sequence_losses(task: str, scores: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The training loss of each sequence of a batch (B,), summed over its frames; scores (T, B, K)."""
    if task == "next_step":
        per_value = F.binary_cross_entropy_with_logits(scores, batch.y, reduction="none")
        return (per_value.sum(2) * batch.mask).sum(0)
    if task == "framewise":
        per_frame = F.cross_entropy(scores.reshape(-1, scores.shape[2]), batch.y.reshape(-1),
                                    ignore_index=PADDING_CLASS, reduction="none")
        return per_frame.view(batch.y.shape).sum(0)
    if task == "regression":
        return (((scores - batch.y) ** 2).sum(2) * batch.mask).sum(0)
    if task == "ctc":
        # zero_infinity: a label sequence longer than its input has no alignment; it adds 0.
        return F.ctc_loss(F.log_softmax(scores, dim=2), batch.y, batch.lengths, batch.target_lengths,
                          blank=0, reduction="none", zero_infinity=True)
    raise ValueError(f"unknown task {task}")


def loss(task: str, scores: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The training loss of a batch, summed over its frames and sequences; scores (T, B, K)."""
    return sequence_losses(task, scores, batch).sum()


METRICS = {"next_step": "nll", "framewise": "frame_error", "regression": "mse", "ctc": "cer"}


def errors(task: str, scores: torch.Tensor, batch: Batch) -> tuple[float, float]:
    """(sum of errors, count) of a batch; the split's metric is their ratio over all batches."""
    if task == "next_step":
        return float(loss(task, scores, batch)), float(batch.frames)
    if task == "framewise":
        wrong = (scores.argmax(2) != batch.y) & batch.mask
        return float(wrong.sum()), float(batch.frames)
    if task == "regression":
        return float(loss(task, scores, batch)), float(batch.frames * scores.shape[2])
    if task == "ctc":
        compiled = kernels.ctc() if scores.device.type == "cpu" else None
        if compiled is not None:  # the same decoding and edit distance, compiled (harness/kernels/ctc.cpp)
            edits, characters = compiled.decoding_errors(scores.detach(), batch.lengths, batch.y,
                                                          batch.target_lengths)
            return float(edits), float(characters)
        from harness.training.ctc import best_path, character_error_rate

        hypotheses = [best_path(scores[: int(n), b].detach()) for b, n in enumerate(batch.lengths)]
        references = [r.tolist() for r in torch.split(batch.y, batch.target_lengths.tolist())]
        characters = float(sum(len(r) for r in references))
        return character_error_rate(hypotheses, references) * characters, characters
    raise ValueError(f"unknown task {task}")
