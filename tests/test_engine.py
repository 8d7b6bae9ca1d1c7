"""The native engine against the torch reference: same loss, same gradients of every
weight, same weights after several Nesterov updates, and the same scores and metrics of
evaluation, for every model and task.

The reference is independent of the engine's step: autograd through the network's own
forward (LSTMRecurrence.backward for the loops), harness.training.tasks.loss, and
torch.optim.SGD(nesterov=True).
"""

import copy
import math

import numpy as np
import pytest
import torch

from harness import kernels
from harness.datasets import Sequence
from harness.datasets.ctc_targets import frames_needed
from harness.models import LSTM_VARIANTS
from harness.models.networks import SequenceNetwork
from harness.training import tasks
from harness.training.engine import NativeForward, NativeStep, TorchStep, make_forward, make_step
from harness.training.recipes import Recipe
from harness.training.train import evaluate

pytestmark = pytest.mark.skipif(kernels.lstm() is None, reason="the compiled loops could not be built")

M, N, K = 5, 4, 3  # inputs, blocks, outputs (CTC: K - 1 characters + blank)
GREFF = Recipe.nesterov(0.1, 0.9)
TASKS = {"next_step": False, "regression": False, "framewise": True, "ctc": True}  # task: bidirectional


def sequences(task: str, lengths: list[int], seed: int) -> list[Sequence]:
    rng = np.random.default_rng(seed)
    out = []
    for n, T in enumerate(lengths):
        x = rng.normal(size=(T, M)).astype(np.float32)
        if task == "next_step":
            y = (rng.random((T, K)) < 0.3).astype(np.float32)
        elif task == "regression":
            y = rng.normal(size=(T, K)).astype(np.float32)
        elif task == "framewise":
            y = rng.integers(0, K, size=T)
        elif n % 3 != 1:  # ctc: a third as many labels as frames (two characters: repeats), or one
            y = rng.integers(1, K, size=max(1, T // 3))
        else:  # ctc: as many labels as the frames allow (a repeat needs a blank between)
            y = [int(rng.integers(1, K))]
            while frames_needed(y) < T:
                # room for a repeat, or else the other of the two characters (K = 3)
                y.append(int(rng.integers(1, K)) if frames_needed(y) + 2 <= T else 3 - y[-1])
            y = np.array(y)
        out.append(Sequence(x=x, y=y))
    return out


MODELS = [*LSTM_VARIANTS, "gru", "gfrnn", "gfgru"]


def networks(variant: str, task: str, dtype) -> tuple[SequenceNetwork, SequenceNetwork]:
    torch.manual_seed(7)
    options = {"layers": 2} if variant.startswith("gf") else {}
    network = SequenceNetwork(variant, M, N, K, bidirectional=TASKS[task], init_std=0.3, **options).to(dtype)
    return network, copy.deepcopy(network)


def batch_of(group, task, dtype):
    batch = tasks.make_batch(group, task)
    batch.x = batch.x.to(dtype)
    if batch.y.is_floating_point():
        batch.y = batch.y.to(dtype)
    return batch


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("variant", MODELS)
@pytest.mark.parametrize("lengths", [[7], [6, 9, 3]], ids=["one sequence", "padded batch"])
def test_gradients_match_autograd(variant, task, lengths, monkeypatch):
    """The reference runs the cells' Python loops, so it shares no compiled code."""
    reference, native = networks(variant, task, torch.float64)
    batch = batch_of(sequences(task, lengths, seed=1), task, torch.float64)
    monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", "1")
    loss = tasks.loss(task, reference(batch.x, batch.lengths), batch)
    loss.backward()
    monkeypatch.delenv("ODYSSEY_PYTHON_LOOPS")
    step = NativeStep(native, task, Recipe.nesterov(0.1, 0.5))
    native_loss = step(batch, batch.x)
    assert float(native_loss) == pytest.approx(loss.item(), rel=1e-10)
    for (name, p), g in zip(reference.named_parameters(), step.grads):
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(g, expected, rtol=1e-8, atol=1e-10), name


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("variant", MODELS)
def test_weights_after_several_updates(variant, task):
    """Five Nesterov updates, one sequence each, float32 as in training."""
    reference, native = networks(variant, task, torch.float32)
    torch_step = TorchStep(reference, task, Recipe.nesterov(0.05, 0.9))
    native_step = NativeStep(native, task, Recipe.nesterov(0.05, 0.9))
    for seq in sequences(task, [8, 5, 11, 6, 9], seed=2):
        batch = batch_of([seq], task, torch.float32)
        a, b = torch_step(batch, batch.x), native_step(batch, batch.x)
        assert float(b) == pytest.approx(float(a), rel=1e-4)
    for (name, p), q in zip(reference.named_parameters(), native.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("variant", MODELS)
def test_native_evaluation_matches_the_reference(variant, task, monkeypatch):
    """Validation's forward through the compiled loops (NativeForward, in slices of at most
    4 sequences and the whole batch at once) against the network's own forward on the
    cells' Python loops: the same scores on every real frame (float64), and the same
    metric over batches of 5 sequences (float32, as evaluation runs)."""
    group = sequences(task, [5, 9, 3, 7, 4, 8, 6], seed=5)
    batch = batch_of(group, task, torch.float64)
    results = {}
    for engine in ("torch", "native"):
        monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", "1" if engine == "torch" else "0")
        for dtype in (torch.float64, torch.float32):
            network, _ = networks(variant, task, dtype)
            with torch.no_grad():
                network.readout.weight.mul_(10)  # scores far apart: a metric of arg-maxes is decided
            forward = make_forward(engine, network, task)
            assert isinstance(forward, NativeForward) == (engine == "native")
            if dtype == torch.float64:
                results[engine, "scores"] = forward(batch.x, batch.lengths)[batch.mask]
                if engine == "native":  # the whole batch at once, as for N > NativeForward.SLICED_UP_TO
                    forward.slice = None
                    results["whole batch", "scores"] = forward(batch.x, batch.lengths)[batch.mask]
            else:
                results[engine, "metric"] = evaluate(network, task, group, 5, forward)
    for how in ("native", "whole batch"):
        assert torch.allclose(results[how, "scores"], results["torch", "scores"], rtol=1e-10, atol=1e-12), how
    assert results["native", "metric"] == pytest.approx(results["torch", "metric"], rel=1e-5)


def test_momentum_zero_is_plain_sgd():
    """momentum 0: theta <- theta - lr g, checked by hand on the read-out bias."""
    _, native = networks("vanilla", "regression", torch.float64)
    batch = batch_of(sequences("regression", [5], seed=3), "regression", torch.float64)
    reference = copy.deepcopy(native)
    loss = tasks.loss("regression", reference(batch.x, batch.lengths), batch)
    (grad_b,) = torch.autograd.grad(loss, reference.readout.bias)
    before = native.readout.bias.detach().clone()
    NativeStep(native, "regression", Recipe.nesterov(0.2, 0.0))(batch, batch.x)
    assert torch.allclose(native.readout.bias, before - 0.2 * grad_b, rtol=1e-10)


def test_nonfinite_loss_leaves_weights_alone():
    _, native = networks("vanilla", "regression", torch.float32)
    batch = batch_of(sequences("regression", [5], seed=4), "regression", torch.float32)
    before = [p.detach().clone() for p in native.parameters()]
    loss = NativeStep(native, "regression", Recipe.nesterov(0.1, 0.9))(batch, batch.x * float("nan"))
    assert not math.isfinite(float(loss))
    assert all(torch.equal(p, q) for p, q in zip(native.parameters(), before))


def test_make_step_chooses_the_engine(monkeypatch):
    torch.manual_seed(0)
    network = SequenceNetwork("gru", M, N, K)
    assert isinstance(make_step("native", network, "next_step", GREFF), NativeStep)
    assert isinstance(make_step("torch", network, "next_step", GREFF), TorchStep)
    monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", "1")  # no compiled loops: the torch path, said once
    messages = []
    assert isinstance(make_step("native", network, "next_step", GREFF, log=messages.append), TorchStep)
    assert "compiled loops" in messages[0]
