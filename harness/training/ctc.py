"""CTC decoding and the character error rate of the handwriting task.

The network emits, at every step t, scores over C + 1 outputs: output 0 is the CTC blank,
outputs 1..C the characters of `DataSplits.classes` (blank first). Training uses
`torch.nn.functional.ctc_loss(..., blank=0, reduction='sum')` on the reference path and
its compiled equal on the native engine (harness/kernels/ctc.cpp, docs/engine.md); the
metric is the character error rate of best-path decoding, as in Greff et al. (2017)
(here in Python, the reference of the compiled decoding the native engine evaluates with):

    CER = sum over lines of edit distance(hypothesis, reference)
          / sum over lines of len(reference)

i.e. total edits over total reference characters of a split (not a mean of per-line
rates), so long lines weigh more, as in the speech and handwriting literature.
"""

from __future__ import annotations

from collections.abc import Sequence

import editdistance
import numpy as np

BLANK = 0


def best_path(log_probs) -> list[int]:
    """Best-path (greedy) decoding of one sequence.

    log_probs: (T, C + 1) scores, a torch.Tensor or np.ndarray (log-probabilities,
    probabilities or raw scores: only the arg-max of each step matters).
    Returns the labels 1..C of the most probable path after merging repeated outputs
    and then dropping blanks: blank-separated repeats stay (a a _ a -> a a).
    """
    if hasattr(log_probs, "detach"):  # a torch.Tensor, possibly on a device, with grad
        log_probs = log_probs.detach().cpu().numpy()
    scores = np.asarray(log_probs)
    if scores.ndim != 2:
        raise ValueError(f"best_path expects scores of shape (T, C + 1), got shape {scores.shape}")
    if scores.shape[0] == 0:
        return []
    path = scores.argmax(axis=1)  # (T,)
    keep = np.ones(len(path), dtype=bool)
    keep[1:] = path[1:] != path[:-1]  # first step of every run of equal outputs
    return [int(label) for label in path[keep] if label != BLANK]


def edit_distance(hypothesis: Sequence[int], reference: Sequence[int]) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, each costing 1."""
    return int(editdistance.eval(list(hypothesis), list(reference)))


def character_error_rate(hypotheses: list[list[int]], references: list[list[int]]) -> float:
    """Total edit distance over total reference length, over all lines of a split.

    Raises ValueError if the two lists differ in length or the references hold no
    character at all (the rate is undefined then).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    edits = sum(edit_distance(h, r) for h, r in zip(hypotheses, references))
    characters = sum(len(r) for r in references)
    if characters == 0:
        raise ValueError("the references hold no characters; the character error rate is undefined")
    return edits / characters


def labels_to_text(labels: Sequence[int], classes: Sequence[str]) -> str:
    """The text of a label sequence, with `classes` = DataSplits.classes (blank first)."""
    return "".join(classes[label] for label in labels)
