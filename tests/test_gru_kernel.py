"""The compiled GRU loops (harness/kernels/gru.cpp) against the Python loops of
harness.models.cells.GRURecurrence (the reference, itself held to autograd through the
equations of docs/cells.md in test_cells.py): outputs and every gradient, float64 to 1e-10 and float32 to
float tolerance, at batch sizes on both sides of the small-batch products (loops.h)."""

import pytest
import torch

from harness import kernels
from harness.models.cells import make_layer

TOLERANCE = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=2e-5, rtol=1e-4)}


@pytest.fixture
def compiled_gru():
    module = kernels.gru()
    if module is None:
        pytest.skip("the compiled GRU loops could not be built here (see the warning; scripts/setup.sh builds them)")
    return module


def gru_results(monkeypatch, python_loops, dtype, M, N, T, B, seed=0):
    """h and the gradients of x and of every parameter of a GRU layer with random weights."""
    monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", "1" if python_loops else "0")
    generator = torch.Generator().manual_seed(seed)
    layer = make_layer("gru", M, N).to(dtype)
    layer.import_weights({k: torch.randn(v.shape, generator=generator, dtype=dtype) * 0.6
                          for k, v in layer.export_weights().items()})
    x = torch.randn(T, B, M, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(T, B, N, generator=generator, dtype=dtype)
    h = layer(x)
    return [h, *torch.autograd.grad((h * weight).sum(), [x, *layer.parameters()])]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("M,N,T,B", [(5, 4, 7, 1), (3, 9, 5, 3), (6, 5, 4, 7), (88, 33, 12, 1)])
def test_compiled_loops_equal_the_python_loops(compiled_gru, monkeypatch, dtype, M, N, T, B):
    compiled = gru_results(monkeypatch, False, dtype, M, N, T, B)
    python = gru_results(monkeypatch, True, dtype, M, N, T, B)
    assert compiled[1].abs().max() > 1e-3  # the gradients are not trivially zero
    for name, ours, reference in zip(["h", "x", "W", "R", "b"], compiled, python):
        assert ours.dtype == dtype
        assert torch.allclose(ours, reference, **TOLERANCE[dtype]), name


def test_python_loops_switch_turns_the_compiled_loops_off(compiled_gru, monkeypatch):
    monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", "1")
    assert kernels.gru() is None and kernels.gated_feedback() is None


def test_plain_functions_without_autograd(compiled_gru, monkeypatch, float64):
    """forward -> [h, *saved] and backward(dY, x, W, R, *saved, need_dx) -> [dx, dW, dR, db]
    (the signatures of the kernels module docstring) against autograd of the Python loops."""
    monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", "1")
    M, N, T, B = 4, 6, 5, 2
    layer = make_layer("gru", M, N)
    x = torch.randn(T, B, M, requires_grad=True)
    dY = torch.randn(T, B, N)
    h = layer(x)
    expected = torch.autograd.grad(h, [x, layer.weight_input, layer.weight_recurrent, layer.bias], dY)
    W, R, b = (p.detach() for p in (layer.weight_input, layer.weight_recurrent, layer.bias))
    with torch.no_grad():
        h_compiled, *saved = compiled_gru.forward(x.detach(), W, R, b)
        grads = compiled_gru.backward(dY, x.detach(), W, R, *saved, True)
        no_dx = compiled_gru.backward(dY, x.detach(), W, R, *saved, False)
    assert torch.allclose(h_compiled, h, atol=1e-12, rtol=0)
    for ours, reference in zip(grads, expected):
        assert torch.allclose(ours, reference, atol=1e-12, rtol=0)
    assert no_dx[0] is None and torch.equal(no_dx[1], grads[1])
