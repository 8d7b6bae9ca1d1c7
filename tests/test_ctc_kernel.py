"""The compiled CTC of the native engine (harness/kernels/ctc.cpp): the loss and its
gradient with respect to the scores against torch.nn.functional.ctc_loss through
log_softmax (autograd, float64), and best-path decoding and the edit distance against a
hand-worked example and a plain dynamic programme."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness import kernels

K = 6  # five characters and the blank


@pytest.fixture
def ctc():
    module = kernels.ctc()
    if module is None:
        pytest.skip("the compiled CTC could not be built here (see the warning; scripts/setup.sh builds it)")
    return module


def torch_reference(scores, targets, lengths, target_lengths):
    """Losses (B,) and d (sum of losses) / d scores, through torch's log-space CTC."""
    scores = scores.detach().clone().requires_grad_(True)
    losses = F.ctc_loss(F.log_softmax(scores, dim=2), targets, lengths, target_lengths, blank=0, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), scores)
    return losses.detach(), grad


# (frames, labels) of each sequence of a batch; padded to the longest
CASES = {
    "random labels": [(12, [3, 1, 4, 1, 5]), (9, [2, 5, 3])],
    "repeated labels": [(10, [2, 2, 2, 4, 4]), (7, [1, 1, 3])],
    "as long as the frames allow": [(9, [1, 2, 2, 3, 3, 4, 5]), (5, [4, 4, 4])],  # 9 = 7 + 2 blanks; 5 = 3 + 2
    "a single label": [(8, [3]), (1, [5])],
    "long sequence": [(400, [1, 2, 3, 4, 5] * 20)],
}


def batch(case, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    T = max(frames for frames, _ in case)
    scores = 2 * torch.randn(T, len(case), K, generator=generator, dtype=dtype)
    targets = torch.tensor([label for _, labels in case for label in labels])
    lengths = torch.tensor([frames for frames, _ in case])
    target_lengths = torch.tensor([len(labels) for _, labels in case])
    return scores, targets, lengths, target_lengths


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradient_equal_torch(ctc, name):
    scores, targets, lengths, target_lengths = batch(CASES[name], torch.float64)
    expected_losses, expected_grad = torch_reference(scores, targets, lengths, target_lengths)
    losses, grad = ctc.ctc_loss(scores, targets, lengths, target_lengths)
    assert torch.allclose(losses, expected_losses, rtol=1e-10, atol=0), (losses, expected_losses)
    assert torch.allclose(grad, expected_grad, rtol=1e-8, atol=1e-12)
    for b, frames in enumerate(lengths.tolist()):  # padding has no gradient
        assert not grad[frames:, b].any()


def test_float32_scores_within_float_tolerance(ctc):
    scores, targets, lengths, target_lengths = batch(CASES["random labels"], torch.float32, seed=3)
    expected_losses, expected_grad = torch_reference(scores.double(), targets, lengths, target_lengths)
    losses, grad = ctc.ctc_loss(scores, targets, lengths, target_lengths)
    assert grad.dtype == torch.float32
    assert torch.allclose(losses, expected_losses, rtol=1e-5)
    assert torch.allclose(grad.double(), expected_grad, rtol=1e-5, atol=1e-6)


def test_a_label_far_below_the_largest_score(ctc):
    """Float scores whose label lies 100 below the others (beyond fast_exp's range): one
    frame, one label, so the loss is -log softmax = 100 + log(2 + e^-100), 100 + log 2 to float precision."""
    scores = torch.tensor([[[0.0, -100.0, 0.0]]])
    losses, grad = ctc.ctc_loss(scores, torch.tensor([1]), torch.tensor([1]), torch.tensor([1]))
    expected, expected_grad = torch_reference(scores.double(), torch.tensor([1]), torch.tensor([1]), torch.tensor([1]))
    assert float(losses[0]) == pytest.approx(float(expected[0]), rel=1e-6)
    assert float(losses[0]) == pytest.approx(100 + math.log(2), rel=1e-6)
    assert torch.allclose(grad.double(), expected_grad, atol=1e-6)


def test_a_hand_worked_loss(ctc):
    """Two frames, one label a: the paths a a, a _, _ a emit it, so p = y1(a) y2(a) +
    y1(a) y2(_) + y1(_) y2(a); with uniform scores over 3 outputs every y is 1/3, p = 3/9."""
    losses, grad = ctc.ctc_loss(torch.zeros(2, 1, 3, dtype=torch.float64), torch.tensor([1]), torch.tensor([2]),
                                torch.tensor([1]))
    assert float(losses[0]) == pytest.approx(math.log(3), rel=1e-12)
    # occupancy of a at frame 1: paths a a and a _ (2 of 3), so d/ds(a) = 1/3 - 2/3
    assert float(grad[0, 0, 1]) == pytest.approx(1 / 3 - 2 / 3, rel=1e-12)
    assert float(grad[0, 0, 2]) == pytest.approx(1 / 3, rel=1e-12)  # never emitted: y itself


def test_a_target_longer_than_its_frames_is_refused_not_zeroed(ctc):
    """a a needs three frames (a _ a); two cannot align it: an error naming the sequence,
    never a zero or infinite loss."""
    with pytest.raises(RuntimeError, match="sequence 1 of the batch has 2 labels, which need at least 3 frames"):
        ctc.ctc_loss(torch.zeros(4, 2, 3), torch.tensor([1, 2, 1, 1]), torch.tensor([4, 2]), torch.tensor([2, 2]))


def test_best_path_and_error_counts_by_hand(ctc):
    """Outputs: 0 blank, 1 'a', 2 'b'. Arg-max paths (frames of each sequence):
    sequence 0: a a _ a b b  -> merge repeats: a _ a b -> drop blanks: a a b
    sequence 1: _ b _ _ (then padding, which would read a a) -> b
    References a b b (a a b -> a b b: one substitution) and a b (b -> a b: one insertion):
    2 edits over 5 characters."""
    paths = [[1, 1, 0, 1, 2, 2], [0, 2, 0, 0, 1, 1]]
    scores = torch.zeros(6, 2, 3)
    for b, path in enumerate(paths):
        for t, output in enumerate(path):
            scores[t, b, output] = 1.0
    lengths = torch.tensor([6, 4])
    assert ctc.best_path(scores, lengths) == [[1, 1, 2], [2]]
    edits, characters = ctc.decoding_errors(scores, lengths, torch.tensor([1, 2, 2, 1, 2]), torch.tensor([3, 2]))
    assert (edits, characters) == (2, 5)


def dynamic_programme(a, b) -> int:
    table = [[i + j if i == 0 or j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[len(a)][len(b)]


def test_edit_distance(ctc):
    assert ctc.edit_distance([1, 2, 3], [1, 3]) == 1
    assert ctc.edit_distance([], [5, 5]) == 2
    assert ctc.edit_distance([1, 2, 3, 4], [2, 1, 3, 5, 4]) == 3  # two substitutions (or an insertion and a deletion), one insertion
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        a = torch.randint(1, 4, (int(torch.randint(0, 8, (1,), generator=generator)),), generator=generator).tolist()
        b = torch.randint(1, 4, (int(torch.randint(0, 8, (1,), generator=generator)),), generator=generator).tolist()
        assert ctc.edit_distance(a, b) == dynamic_programme(a, b)
