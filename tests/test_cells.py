"""The cells against independent computations: torch.nn.LSTM, the equations of docs/cells.md
written out step by step, saturated gates, gradcheck, and parameter-count formulas."""

import math

import pytest
import torch

from harness.models import LSTM_VARIANTS, MODELS
from harness.models.cells import make_layer

# The layers with the weight contract: Greff's nine and the GRU (the others are stacks).
# (the cells given as classes, minGRU, minLSTM and the RG-LRU, are tested in test_minimal.py)
CELL_VARIANTS = tuple(name for name, model in MODELS.items() if not model.gated_feedback and model.cell != "class")

M, N, T, B = 5, 4, 7, 3


pytestmark = pytest.mark.usefixtures("float64")  # every test here runs in float64 (conftest.py)


def sigma(a):
    return 1.0 / (1.0 + torch.exp(-a))


def reference_lstm(variant: str, w: dict, x: torch.Tensor) -> torch.Tensor:
    """The cell equations (harness.models.cells docstring), one step at a time, from the weight dict alone."""
    n = w["R_z"].shape[0]
    y, c = x.new_zeros(x.shape[1], n), x.new_zeros(x.shape[1], n)
    gates_prev = {g: x.new_zeros(x.shape[1], n) for g in "ifo"}
    g_act = (lambda v: v) if variant == "niaf" else torch.tanh
    h_act = (lambda v: v) if variant == "noaf" else torch.tanh

    def pre(gate, x_t, cell):
        value = x_t @ w[f"W_{gate}"].T + y @ w[f"R_{gate}"].T + w[f"b_{gate}"]
        if f"p_{gate}" in w:
            value = value + w[f"p_{gate}"] * cell
        if variant == "fgr":
            value = value + sum(gates_prev[b] @ w[f"R_{gate}_{b}"].T for b in "ifo")
        return value

    outputs = []
    for x_t in x:
        z = g_act(x_t @ w["W_z"].T + y @ w["R_z"].T + w["b_z"])
        i = torch.ones_like(z) if variant == "nig" else sigma(pre("i", x_t, c))
        if variant == "nfg":
            f = torch.ones_like(z)
        elif variant == "cifg":
            f = 1 - i
        else:
            f = sigma(pre("f", x_t, c))
        c = z * i + c * f
        o = torch.ones_like(z) if variant == "nog" else sigma(pre("o", x_t, c))
        y = h_act(c) * o
        gates_prev = {"i": i, "f": f, "o": o}
        outputs.append(y)
    return torch.stack(outputs)


def reference_gru(w: dict, x: torch.Tensor) -> torch.Tensor:
    """Cho et al. (2014) as in docs/cells.md: reset before the recurrent product."""
    h = x.new_zeros(x.shape[1], w["R_z"].shape[0])
    outputs = []
    for x_t in x:
        z = sigma(x_t @ w["W_z"].T + h @ w["R_z"].T + w["b_z"])
        r = sigma(x_t @ w["W_r"].T + h @ w["R_r"].T + w["b_r"])
        candidate = torch.tanh(x_t @ w["W_h"].T + (r * h) @ w["R_h"].T + w["b_h"])
        h = (1 - z) * h + z * candidate
        outputs.append(h)
    return torch.stack(outputs)


def random_weights(layer, scale=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * scale for k, v in layer.export_weights().items()}


@pytest.mark.parametrize("variant", CELL_VARIANTS)  # the layers with the weight contract
def test_matches_the_spec_equations(variant):
    layer = make_layer(variant, M, N)
    weights = random_weights(layer)
    layer.import_weights(weights)
    x = torch.randn(T, B, M, generator=torch.Generator().manual_seed(1))
    expected = reference_gru(weights, x) if variant == "gru" else reference_lstm(variant, weights, x)
    assert torch.allclose(layer(x), expected, atol=1e-8, rtol=0)


def test_np_equals_torch_lstm_with_copied_weights():
    layer = make_layer("np", M, N)
    torch_lstm = torch.nn.LSTM(M, N)
    w = layer.export_weights()
    with torch.no_grad():  # torch's gate order is i, f, g (= z), o; two biases that add up
        torch_lstm.weight_ih_l0.copy_(torch.cat([w["W_i"], w["W_f"], w["W_z"], w["W_o"]]))
        torch_lstm.weight_hh_l0.copy_(torch.cat([w["R_i"], w["R_f"], w["R_z"], w["R_o"]]))
        torch_lstm.bias_ih_l0.copy_(torch.cat([w["b_i"], w["b_f"], w["b_z"], w["b_o"]]))
        torch_lstm.bias_hh_l0.zero_()
    x = torch.randn(T, B, M, requires_grad=True)
    ours = layer(x)
    theirs = torch_lstm(x)[0]
    assert torch.allclose(ours, theirs, atol=1e-12)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-12)
    # and the recurrent-weight gradient, block by block
    ours_r = torch.autograd.grad(layer(x).sum(), layer.weight_recurrent)[0]
    theirs_r = torch.autograd.grad(torch_lstm(x)[0].sum(), torch_lstm.weight_hh_l0)[0]
    order = [layer.blocks.index(k) for k in "ifzo"]
    ours_r = torch.cat([ours_r[k * N:(k + 1) * N] for k in order])
    assert torch.allclose(ours_r, theirs_r, atol=1e-12)


@pytest.mark.parametrize("variant,gate", [("nig", "i"), ("nfg", "f"), ("nog", "o")])
def test_removed_gate_equals_a_saturated_gate(variant, gate):
    """No gate = a vanilla gate held at exactly 1 (sigma(1000) = 1 in float64)."""
    removed, vanilla = make_layer(variant, M, N), make_layer("vanilla", M, N)
    weights = random_weights(vanilla)
    for kind in "WRp":
        weights[f"{kind}_{gate}"] = torch.zeros_like(weights[f"{kind}_{gate}"])
    weights[f"b_{gate}"] = torch.full((N,), 1000.0)
    vanilla.import_weights(weights)
    removed.import_weights({k: v for k, v in weights.items() if not k.endswith(f"_{gate}")})
    x = torch.randn(T, B, M)
    assert torch.allclose(removed(x), vanilla(x), atol=1e-12)


def test_cifg_forget_gate_is_one_minus_input_gate():
    """CIFG equals a vanilla LSTM whose forget gate computes 1 - i with its own weights:
    sigma(-a) = 1 - sigma(a), so f's weights are the negated input-gate weights."""
    cifg, vanilla = make_layer("cifg", M, N), make_layer("vanilla", M, N)
    weights = random_weights(vanilla)
    for kind in "WRpb":
        weights[f"{kind}_f"] = -weights[f"{kind}_i"]
    vanilla.import_weights(weights)
    cifg.import_weights({k: v for k, v in weights.items() if not k.endswith("_f")})
    x = torch.randn(T, B, M)
    assert torch.allclose(cifg(x), vanilla(x), atol=1e-12)
    assert not any(key.endswith("_f") for key in cifg.export_weights())


def test_np_is_vanilla_with_zero_peepholes():
    np_layer, vanilla = make_layer("np", M, N), make_layer("vanilla", M, N)
    weights = random_weights(vanilla)
    for gate in "ifo":
        weights[f"p_{gate}"] = torch.zeros(N)
    vanilla.import_weights(weights)
    np_layer.import_weights({k: v for k, v in weights.items() if not k.startswith("p_")})
    x = torch.randn(T, B, M)
    assert torch.allclose(np_layer(x), vanilla(x), atol=1e-12)


def test_niaf_and_noaf_drop_their_tanh():
    """With one block and one step, the output is h(z i) o: compare to the formula."""
    x = torch.randn(1, 1, 1)
    for variant in ("vanilla", "niaf", "noaf"):
        layer = make_layer(variant, 1, 1)
        w = {k: torch.full(v.shape, 0.7) for k, v in layer.export_weights().items()}
        layer.import_weights(w)
        a = 0.7 * x.item() + 0.7  # W x + b (y and c start at zero)
        z = a if variant == "niaf" else math.tanh(a)
        c = z * sigma(torch.tensor(a)).item()
        o = sigma(torch.tensor(a + 0.7 * c)).item()  # peephole on the new cell
        y = (c if variant == "noaf" else math.tanh(c)) * o
        assert layer(x).item() == pytest.approx(y, abs=1e-12)


def test_fgr_has_nine_extra_matrices_and_reduces_to_vanilla_without_them():
    fgr, vanilla = make_layer("fgr", M, N), make_layer("vanilla", M, N)
    extra = set(fgr.export_weights()) - set(vanilla.export_weights())
    assert extra == {f"R_{a}_{b}" for a in "ifo" for b in "ifo"}
    assert all(fgr.export_weights()[k].shape == (N, N) for k in extra)
    weights = random_weights(vanilla)
    vanilla.import_weights(weights)
    fgr.import_weights({**weights, **{k: torch.zeros(N, N) for k in extra}})
    x = torch.randn(T, B, M)
    assert torch.allclose(fgr(x), vanilla(x), atol=1e-12)
    fgr.import_weights({**weights, **{k: torch.full((N, N), 0.3) for k in extra}})
    assert not torch.allclose(fgr(x), vanilla(x), atol=1e-3)


def parameter_formula(variant: str, m: int, n: int) -> int:
    """Greff et al.'s parameter counts: each block (z and every gate kept) has W, R and b;
    each kept gate a peephole (unless NP); FGR adds nine N x N matrices."""
    gates = {"nig": 2, "nfg": 2, "nog": 2, "cifg": 2}.get(variant, 3)
    blocks = gates + 1
    count = blocks * (n * m + n * n + n) + (0 if variant == "np" else gates * n)
    if variant == "fgr":
        count += 9 * n * n
    if variant == "gru":
        count = 3 * (n * m + n * n + n)
    return count


@pytest.mark.parametrize("variant", CELL_VARIANTS)  # the layers with the weight contract
def test_parameter_count(variant):
    layer = make_layer(variant, 88, 100)
    assert sum(p.numel() for p in layer.parameters()) == parameter_formula(variant, 88, 100)
    assert sum(v.numel() for v in layer.export_weights().values()) == parameter_formula(variant, 88, 100)


@pytest.mark.parametrize("variant", CELL_VARIANTS)  # the layers with the weight contract
def test_gradcheck(variant):
    layer = make_layer(variant, 3, 2)
    layer.import_weights(random_weights(layer, scale=0.8, seed=3))
    names, params = zip(*layer.named_parameters())
    x = torch.randn(4, 2, 3, requires_grad=True)

    def function(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(function, (x, *params), eps=1e-6, atol=1e-7)


def test_import_weights_refuses_missing_and_extra_keys():
    layer = make_layer("cifg", M, N)
    weights = layer.export_weights()
    weights["W_f"] = torch.zeros(N, M)
    del weights["p_i"]
    with pytest.raises(KeyError) as error:
        layer.import_weights(weights)
    assert "p_i" in str(error.value) and "W_f" in str(error.value)
    with pytest.raises(ValueError, match="W_z"):
        layer.import_weights({**layer.export_weights(), "W_z": torch.zeros(N, M + 1)})


def test_weights_start_normal_with_deviation_init_std():
    layer = make_layer("vanilla", 88, 200, init_std=0.1)
    values = torch.cat([p.detach().flatten() for p in layer.parameters()])
    assert abs(values.std().item() - 0.1) < 0.002 and abs(values.mean().item()) < 0.002


def test_forget_bias_shifts_b_f_only():
    torch.manual_seed(0)
    plain = make_layer("vanilla", M, N).export_weights()
    torch.manual_seed(0)
    shifted = make_layer("vanilla", M, N, forget_bias=1.0).export_weights()
    assert torch.allclose(shifted["b_f"], plain["b_f"] + 1.0)
    assert torch.equal(shifted["b_i"], plain["b_i"])


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="vanilla"):
        make_layer("lstm2", M, N)


def test_variant_table_has_the_nine_lstm_variants():
    assert set(LSTM_VARIANTS) == {"vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"}


# -- the GRU ----------------------------------------------------------------------------


def test_gru_single_block_worked_by_hand():
    """N = 1, M = 1, two steps, with weights chosen so that every value is a fraction.

    sigma(ln 3) = 3/4, sigma(-ln 3) = 1/4, tanh(ln(3) / 2) = 1/2.  Weights: W_z = ln 3,
    R_z = (8/3) ln 3, b_z = 0; W_r = 0, R_r = (8/3) ln 3, b_r = -2 ln 3; W_h = ln 3,
    R_h = (32/3) ln 3, b_h = -ln(3) / 2.  Inputs x^1 = 1, x^2 = 0.

    step 1 (h^0 = 0): z = sigma(ln 3) = 3/4; h~ = tanh(ln 3 - ln(3)/2) = 1/2;
                      h^1 = (1 - 3/4) 0 + 3/4 * 1/2 = 3/8
    step 2: z = sigma((8/3) ln 3 * 3/8) = sigma(ln 3) = 3/4
            r = sigma(-2 ln 3 + (8/3) ln 3 * 3/8) = sigma(-ln 3) = 1/4
            h~ = tanh(-ln(3)/2 + (32/3) ln 3 * (1/4 * 3/8)) = tanh(ln(3)/2) = 1/2
            h^2 = (1 - 3/4) 3/8 + 3/4 * 1/2 = 3/32 + 12/32 = 15/32
    (torch.nn.GRU's h = (1 - z) h~ + z h would give h^1 = 1/8 instead.)
    """
    ln3 = math.log(3.0)
    layer = make_layer("gru", 1, 1)
    weights = {"W_z": ln3, "R_z": 8 / 3 * ln3, "b_z": 0.0, "W_r": 0.0, "R_r": 8 / 3 * ln3, "b_r": -2 * ln3,
               "W_h": ln3, "R_h": 32 / 3 * ln3, "b_h": -ln3 / 2}
    layer.import_weights({k: torch.full(layer.export_weights()[k].shape, v) for k, v in weights.items()})
    y = layer(torch.tensor([1.0, 0.0]).view(2, 1, 1)).flatten()
    assert y.tolist() == pytest.approx([3 / 8, 15 / 32], abs=1e-12)


def copy_to_torch_gru(weights: dict, torch_gru: torch.nn.GRU) -> None:
    """torch.nn.GRU (gates r, z, n) gets our weights with its update gate z' = 1 - z:
    1 - sigma(a) = sigma(-a), so z' has the negated W_z, R_z, b_z. Its b_hn is zero."""
    with torch.no_grad():
        torch_gru.weight_ih_l0.copy_(torch.cat([weights["W_r"], -weights["W_z"], weights["W_h"]]))
        torch_gru.weight_hh_l0.copy_(torch.cat([weights["R_r"], -weights["R_z"], weights["R_h"]]))
        torch_gru.bias_ih_l0.copy_(torch.cat([weights["b_r"], -weights["b_z"], weights["b_h"]]))
        torch_gru.bias_hh_l0.zero_()


def test_gru_differs_from_torch_gru_only_in_where_the_reset_acts():
    """Ours: h~ = tanh(W_h x + R_h (r * h) + b_h), h = (1 - z) h + z h~.
    torch.nn.GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h = (1 - z') n + z' h.

    With z' = 1 - z (negated z weights) and b_hn = 0 the two differ only in
    R_h (r * h) against r * (R_h h). These agree exactly when R_h = 0, and when r = 1
    (b_r = 1000 saturates sigma to exactly 1 in float64); otherwise they differ."""
    layer, torch_gru = make_layer("gru", M, N), torch.nn.GRU(M, N)
    x = torch.randn(T, B, M, generator=torch.Generator().manual_seed(2))
    weights = random_weights(layer, scale=0.8)
    layer.import_weights(weights)
    copy_to_torch_gru(weights, torch_gru)
    assert (layer(x) - torch_gru(x)[0]).abs().max() > 1e-3

    no_candidate_recurrence = {**weights, "R_h": torch.zeros(N, N)}
    layer.import_weights(no_candidate_recurrence)
    copy_to_torch_gru(no_candidate_recurrence, torch_gru)
    assert torch.allclose(layer(x), torch_gru(x)[0], atol=1e-12, rtol=0)

    open_reset = {**weights, "W_r": torch.zeros(N, M), "R_r": torch.zeros(N, N), "b_r": torch.full((N,), 1000.0)}
    layer.import_weights(open_reset)
    copy_to_torch_gru(open_reset, torch_gru)
    assert torch.allclose(layer(x), torch_gru(x)[0], atol=1e-12, rtol=0)


def test_gru_gradients_match_autograd_through_the_equations():
    """The hand-written backward pass against autograd through `reference_gru`."""
    layer = make_layer("gru", M, N)
    weights = random_weights(layer, scale=0.8, seed=4)
    layer.import_weights(weights)
    x = torch.randn(T, B, M, requires_grad=True)
    target = torch.randn(T, B, N)
    ours = torch.autograd.grad((layer(x) * target).sum(), [x, layer.weight_input, layer.weight_recurrent, layer.bias])
    leaves = {k: v.clone().requires_grad_() for k, v in weights.items()}
    theirs = torch.autograd.grad((reference_gru(leaves, x) * target).sum(), [x, *leaves.values()])
    grads = dict(zip(leaves, theirs[1:]))
    assert torch.allclose(ours[0], theirs[0], atol=1e-10)
    for fused, kind in zip(ours[1:], ("W", "R", "b")):
        assert torch.allclose(fused, torch.cat([grads[f"{kind}_{g}"] for g in "zrh"]), atol=1e-10)


@pytest.mark.parametrize("variant", ["vanilla", "nig", "cifg", "noaf", "niaf", "fgr"])
def test_compiled_loops_equal_the_python_loops(variant, monkeypatch):
    """harness/kernels/lstm.cpp against the Python loops of cells.py (the reference), in
    float32 as trained: outputs and every gradient, batch of 3 with different values."""
    from harness import kernels

    if kernels.lstm() is None:
        pytest.skip("the compiled loops could not be built here")
    torch.set_default_dtype(torch.float32)
    layer = make_layer(variant, M, N)
    layer.import_weights(random_weights(layer, seed=7))
    x = torch.randn(T, B, M, generator=torch.Generator().manual_seed(8), requires_grad=True)
    results = []
    for python_loops in ("0", "1"):
        monkeypatch.setenv("ODYSSEY_PYTHON_LOOPS", python_loops)
        y = layer(x)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, N)).sum(), [x, *layer.parameters()])
        results.append((y, grads))
    (y_c, g_c), (y_p, g_p) = results
    assert torch.allclose(y_c, y_p, atol=1e-6)
    for a, b in zip(g_c, g_p):
        assert torch.allclose(a, b, atol=1e-5)
