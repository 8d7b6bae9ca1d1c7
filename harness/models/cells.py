"""The recurrent cells: the vanilla LSTM of Greff et al. (2017), its eight variants, the GRU.

Vanilla LSTM (V), with peepholes, in the notation of Greff et al.::

    z^t = g(W_z x^t + R_z y^{t-1} + b_z)                          block input
    i^t = sigma(W_i x^t + R_i y^{t-1} + p_i * c^{t-1} + b_i)       input gate
    f^t = sigma(W_f x^t + R_f y^{t-1} + p_f * c^{t-1} + b_f)       forget gate
    c^t = z^t * i^t + c^{t-1} * f^t                                cell
    o^t = sigma(W_o x^t + R_o y^{t-1} + p_o * c^t + b_o)           output gate (peephole on the new cell)
    y^t = h(c^t) * o^t                                             block output

where x^t is the input (M values), y^t the block output and c^t the cell state (N blocks),
sigma the logistic sigmoid, g = h = tanh, W_* are N x M, R_* are N x N, p_* and b_* have N
entries and * is the elementwise product. All state starts at zero.

A variant is a setting of seven switches (harness.models.SWITCHES), not a class; Greff's
are the presets of harness.models.PRESETS (read into the cell flags of `LSTMSwitches`),
and a variant config may carry its own `switches:` (make_layer also takes the mapping).
Which names exist, and what each is, is the registry harness.models. Greff's eight:

    NIG   i^t = 1                   NFG   f^t = 1                NOG   o^t = 1
    NIAF  g(x) = x                  NOAF  h(x) = x               NP    no p_* terms (= torch.nn.LSTM)
    CIFG  f^t = 1 - i^t             (the forget gate has no weights of its own)
    FGR   each gate a in {i, f, o} also receives R_a_i i^{t-1} + R_a_f f^{t-1} + R_a_o o^{t-1}

How it is computed. Every variant runs the vanilla computation on full fused tensors
(rows in the order z, i, f, o), which the layer builds from its own parameters before
each sequence by a fixed linear map:

- a removed gate has zero weights and a gate *scale* of 0 and *shift* of 1, so that
  gate = scale * sigma(a) + shift is exactly 1 (and its slope exactly 0);
- CIFG's forget gate gets the negated input-gate weights, because 1 - sigma(a) = sigma(-a);
- FGR's recurrent input is [y^{t-1}, i^{t-1}, f^{t-1}, o^{t-1}] instead of y^{t-1}.

So the time loop has no branch on the variant. It lives in `LSTMRecurrence`, an autograd
function with a hand-written backward pass through time: one matrix product for the input
projection of all frames, one fused recurrent product a step, and the weight gradients
in one product each after the loop. `torch.autograd.gradcheck` checks it in the tests.

Public API (the weight contract, which the tests rely on):

    layer = make_layer("cifg", input_size=M, hidden_size=N)
    y = layer(x)                       # x (T, B, M) -> y (T, B, N), zero initial state
    layer.export_weights()             # {"W_z": (N, M), ..., "b_o": (N,)} in Greff's notation
    layer.import_weights(weights)      # refuses a dict with missing or extra keys
"""

from __future__ import annotations

import torch
from torch import nn

from harness import kernels
from harness.models import LSTMSwitches, resolve
from harness.models.cell_class import CellClass
from harness.models.gated_feedback import GatedFeedbackRNN
from harness.models.weights import WeightContract

# Rows of the fused pre-activation, and the gates (the last three of them).
BLOCKS = ("z", "i", "f", "o")
GATES = ("i", "f", "o")


def _tanh(a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.tanh(a, out=out)


def _identity(a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(a)


def _tanh_slope(value: torch.Tensor) -> torch.Tensor:
    """d tanh(a) / da, from the value tanh(a)."""
    return 1 - value * value


def _identity_slope(value: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(value)


ACTIVATIONS = {True: (_tanh, _tanh_slope), False: (_identity, _identity_slope)}


def _sigmoid_gate(a: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """gate = sigma(a), for a variant that keeps every gate."""
    return torch.sigmoid(a, out=out)


def _scaled_sigmoid_gate(a: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """gate = scale * sigma(a) + shift: exactly 1 where a gate is removed (scale 0, shift 1)."""
    return torch.addcmul(shift, torch.sigmoid(a), scale, out=out)


class LSTMRecurrence(torch.autograd.Function):
    """The vanilla peephole LSTM over a whole sequence, on full fused tensors.

    Inputs: x (T, B, M); W (4N, M) and b (4N) with rows z, i, f, o; R (4N, n_rec) acting on
    the recurrent input u^{t-1} = [y^{t-1}] (n_rec = N) or [y, i, f, o]^{t-1} (n_rec = 4N,
    full gate recurrence); p (3N) peepholes of i, f, o; gate_scale and gate_shift (3N):
    gate = gate_scale * sigma(a) + gate_shift. `g` and `h` are (function, slope) pairs,
    `gate` one of the two gate functions above. Returns y (T, B, N).

    Python's per-call cost dominates at these sizes, so every per-step view is made once
    before the loop (`unbind`) and every result is written in place (`out=`); and the
    same equations run compiled from harness/kernels/lstm.cpp when it could be built: one
    matrix product and one plain loop over the blocks a step (the Python loops remain the
    reference and the fallback, and the tests compare the two).
    """

    @staticmethod
    def forward(ctx, x, W, R, b, p, gate_scale, gate_shift, g, h, gate):
        ctx.slopes = (g[1], h[1])
        compiled = kernels.lstm()
        if compiled is not None:  # the same loop in C++ (harness/kernels/lstm.cpp)
            y, *saved = compiled.forward(x, W, R, b, p, gate_scale, gate_shift, g[0] is _tanh, h[0] is _tanh)
            ctx.save_for_backward(x, W, R, p, gate_scale, *saved)
            ctx.compiled = compiled, g[0] is _tanh, h[0] is _tanh
            return y
        ctx.compiled = None
        T, B, M = x.shape
        N = W.shape[0] // 4
        n_rec = R.shape[1]
        g_apply, h_apply = g[0], h[0]
        R_t = R.t()
        p_if, p_o = p[: 2 * N].view(2, N), p[2 * N :]
        scale_if, scale_o = gate_scale[: 2 * N], gate_scale[2 * N :]
        shift_if, shift_o = gate_shift[: 2 * N], gate_shift[2 * N :]
        # a[t] = pre-activations (z, i, f, o) of step t, starting from the input projection.
        a = torch.addmm(b, x.reshape(T * B, M), W.t()).view(T, B, 4 * N)  # (T, B, 4N)
        # states[t] = [y, i, f, o] after step t (row 0 is the zero initial state); it is
        # both the record for the backward pass and the recurrent input of step t + 1.
        states = x.new_zeros(T + 1, B, 4 * N)
        cells = x.new_zeros(T + 1, B, N)  # c^t, cells[0] = 0
        block_input = x.new_empty(T, B, N)  # z^t
        cell_output = x.new_empty(T, B, N)  # h(c^t)

        a_t = a.unbind(0)
        a_z, a_o = a[..., :N].unbind(0), a[..., 3 * N :].unbind(0)
        a_if = a[..., N : 3 * N].view(T, B, 2, N).unbind(0)
        recurrent_in = states[:, :, :n_rec].unbind(0)
        y_t, o_t = states[:, :, :N].unbind(0), states[:, :, 3 * N :].unbind(0)
        gates_if = states[:, :, N : 3 * N].unbind(0)
        i_t, f_t = states[:, :, N : 2 * N].unbind(0), states[:, :, 2 * N : 3 * N].unbind(0)
        c_t, c_peep = cells.unbind(0), cells.unsqueeze(2).unbind(0)
        z_t, hc_t = block_input.unbind(0), cell_output.unbind(0)
        for t in range(T):
            torch.addmm(a_t[t], recurrent_in[t], R_t, out=a_t[t])
            a_if[t].addcmul_(c_peep[t], p_if)  # peepholes on c^{t-1}
            gate(a[t, :, N : 3 * N], scale_if, shift_if, out=gates_if[t + 1])
            g_apply(a_z[t], out=z_t[t])
            torch.mul(c_t[t], f_t[t + 1], out=c_t[t + 1]).addcmul_(z_t[t], i_t[t + 1])
            a_o[t].addcmul_(c_t[t + 1], p_o)  # peephole on the new cell c^t
            gate(a_o[t], scale_o, shift_o, out=o_t[t + 1])
            torch.mul(h_apply(c_t[t + 1], out=hc_t[t]), o_t[t + 1], out=y_t[t + 1])
        ctx.save_for_backward(x, W, R, p, gate_scale, states, cells, block_input, cell_output)
        return states[1:, :, :N].clone()

    @staticmethod
    def backward(ctx, dY):
        x, W, R, p, gate_scale, states, cells, block_input, cell_output = ctx.saved_tensors
        if ctx.compiled is not None:
            compiled, g_tanh, h_tanh = ctx.compiled
            dx, dW, dR, db, dp = compiled.backward(dY, x, W, R, p, gate_scale, states, cells, block_input,
                                                   cell_output, g_tanh, h_tanh, ctx.needs_input_grad[0])
            return dx if ctx.needs_input_grad[0] else None, dW, dR, db, dp, None, None, None, None, None
        g_slope, h_slope = ctx.slopes
        T, B, M = x.shape
        N = W.shape[0] // 4
        n_rec = R.shape[1]
        gates = states[1:, :, N:]  # (T, B, 3N): i, f, o
        # Everything that does not depend on the backward recursion, for all steps at once.
        gate_slope = gate_scale * gates * (1 - gates)  # d gate / d a (0 for a removed gate)
        slope_if = gate_slope[..., : 2 * N].reshape(T, B, 2, N).unbind(0)
        slope_o = gate_slope[..., 2 * N :].unbind(0)
        dz_dc = (gates[..., :N] * g_slope(block_input)).unbind(0)  # d c / d a_z = i g'(a_z)
        dy_dc = (gates[..., 2 * N :] * h_slope(cell_output)).unbind(0)  # d y / d c (through h)
        f_t = gates[..., N : 2 * N].unbind(0)
        # d c / d i and d c / d f: z^t and c^{t-1}
        z_and_cprev = torch.stack((block_input, cells[:-1]), dim=2).unbind(0)  # (B, 2, N) each
        hc_t, dY_t = cell_output.unbind(0), dY.unbind(0)
        p_if, p_o = p[: 2 * N].view(2, N), p[2 * N :]

        dA = x.new_empty(T, B, 4 * N)  # d loss / d pre-activation (z, i, f, o)
        da_t, da_z = dA.unbind(0), dA[..., :N].unbind(0)
        da_if, da_o = dA[..., N : 3 * N].view(T, B, 2, N).unbind(0), dA[..., 3 * N :].unbind(0)
        # d loss / d u^t through step t + 1: the y part, and (FGR only) the gate part.
        d_recurrent = x.new_zeros(B, n_rec)
        dy_next = d_recurrent[:, :N]
        dgates_next = d_recurrent[:, N:] if n_rec == 4 * N else x.new_zeros(B, 3 * N)
        di_f_next, do_next = dgates_next[:, : 2 * N].view(B, 2, N), dgates_next[:, 2 * N :]
        dc_next = x.new_zeros(B, N)
        for t in range(T - 1, -1, -1):
            dy = dY_t[t] + dy_next
            do = torch.addcmul(do_next, dy, hc_t[t])
            torch.mul(do, slope_o[t], out=da_o[t])
            dc = torch.addcmul(dc_next, dy, dy_dc[t]).addcmul_(da_o[t], p_o)
            d_if = torch.addcmul(di_f_next, dc.unsqueeze(1), z_and_cprev[t])
            torch.mul(d_if, slope_if[t], out=da_if[t])
            torch.mul(dc, dz_dc[t], out=da_z[t])
            dc_next = torch.mul(dc, f_t[t]).add_((da_if[t] * p_if).sum(1))
            torch.mm(da_t[t], R, out=d_recurrent)

        dA_flat = dA.view(T * B, 4 * N)
        dx = torch.mm(dA_flat, W).view(T, B, M) if ctx.needs_input_grad[0] else None
        dW = torch.mm(dA_flat.t(), x.reshape(T * B, M))
        dR = torch.mm(dA_flat.t(), states[:-1, :, :n_rec].reshape(T * B, n_rec))
        db = dA_flat.sum(0)
        dp_if = (dA[..., N : 3 * N].reshape(T, B, 2, N) * cells[:-1].unsqueeze(2)).sum((0, 1))
        dp_o = (dA[..., 3 * N :] * cells[1:]).sum((0, 1))
        dp = torch.cat((dp_if.reshape(2 * N), dp_o))
        return dx, dW, dR, db, dp, None, None, None, None, None


def _normal(shape: tuple[int, ...], std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape) * std)


class LSTMLayer(WeightContract, nn.Module):
    """One unidirectional layer of the vanilla LSTM or a variant of it (see the module docstring).

    Parameters are stored fused, only for what the variant has: `weight_input` (K*N, M),
    `weight_recurrent` (K*N, N) and `bias` (K*N) with the K blocks of `self.blocks` (a
    subset of z, i, f, o in that order), `peephole` (P*N) for the gates of
    `self.peephole_gates`, and, for FGR, `gate_recurrence` (3N, 3N), whose block (a, b)
    is R_a_b. Initialisation: every weight ~ N(0, init_std^2) (Greff et al.: 0.1), plus
    `forget_bias` on b_f where the variant has a forget gate of its own.

    Input x (T, B, M); output y (T, B, N), from a zero initial state.
    """

    def __init__(self, switches: LSTMSwitches, input_size: int, hidden_size: int,
                 init_std: float = 0.1, forget_bias: float = 0.0):
        super().__init__()
        self.switches = switches
        self.input_size, self.hidden_size = input_size, hidden_size
        present = {
            "i": switches.input_gate,
            "f": switches.forget_gate and not switches.coupled_input_forget_gate,
            "o": switches.output_gate,
        }
        self.blocks = ("z",) + tuple(gate for gate in GATES if present[gate])
        self.peephole_gates = tuple(gate for gate in GATES if present[gate]) if switches.peepholes else ()
        N, M, K = hidden_size, input_size, len(self.blocks)
        self.weight_input = _normal((K * N, M), init_std)
        self.weight_recurrent = _normal((K * N, N), init_std)
        self.bias = _normal((K * N,), init_std)
        self.peephole = _normal((len(self.peephole_gates) * N,), init_std)
        if switches.full_gate_recurrence:
            self.gate_recurrence = _normal((3 * N, 3 * N), init_std)
        if "f" in self.blocks:
            with torch.no_grad():
                self._block(self.bias, self.blocks, "f").add_(forget_bias)

        # The fixed linear maps from the stored blocks to the full z, i, f, o layout.
        block_map = torch.zeros(4, K)
        for row, name in enumerate(BLOCKS):
            if name in self.blocks:
                block_map[row, self.blocks.index(name)] = 1.0
        if switches.coupled_input_forget_gate:  # f = 1 - sigma(a_i) = sigma(-a_i)
            block_map[BLOCKS.index("f")] = -block_map[BLOCKS.index("i")]
        peephole_map = block_map[1:, 1:][:, [self.blocks.index(gate) - 1 for gate in self.peephole_gates]]
        gate_kept = torch.tensor([present["i"], present["f"] or switches.coupled_input_forget_gate,
                                  present["o"]], dtype=torch.float32).repeat_interleave(N)
        self.register_buffer("block_map", block_map, persistent=False)
        self.register_buffer("peephole_map", peephole_map.contiguous(), persistent=False)
        self.register_buffer("gate_scale", gate_kept, persistent=False)
        self.register_buffer("gate_shift", 1 - gate_kept, persistent=False)
        self.g = ACTIVATIONS[switches.input_activation]
        self.h = ACTIVATIONS[switches.output_activation]
        self.gate = _sigmoid_gate if bool(gate_kept.all()) else _scaled_sigmoid_gate

    def _block(self, tensor: torch.Tensor, order: tuple[str, ...], name: str) -> torch.Tensor:
        N = self.hidden_size
        k = order.index(name)
        return tensor[k * N : (k + 1) * N]

    def full_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """W (4N, M), R (4N, n_rec), b (4N), p (3N) of the vanilla layout for this variant."""
        N, M, K = self.hidden_size, self.input_size, len(self.blocks)
        W = (self.block_map @ self.weight_input.view(K, N * M)).view(4 * N, M)
        R = (self.block_map @ self.weight_recurrent.view(K, N * N)).view(4 * N, N)
        b = (self.block_map @ self.bias.view(K, N)).view(4 * N)
        p = (self.peephole_map @ self.peephole.view(-1, N)).view(3 * N)
        if self.switches.full_gate_recurrence:
            from_gates = torch.cat((self.gate_recurrence.new_zeros(N, 3 * N), self.gate_recurrence))
            R = torch.cat((R, from_gates), dim=1)  # (4N, 4N): acts on [y, i, f, o]
        return W, R, b, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W, R, b, p = self.full_weights()
        scale, shift = self.gate_scale.to(x.dtype), self.gate_shift.to(x.dtype)
        return LSTMRecurrence.apply(x, W, R, b, p, scale, shift, self.g, self.h, self.gate)

    # -- the weight contract -------------------------------------------------------------

    def weight_keys(self) -> list[str]:
        keys = [f"W_{k}" for k in self.blocks] + [f"R_{k}" for k in self.blocks]
        keys += [f"p_{k}" for k in self.peephole_gates] + [f"b_{k}" for k in self.blocks]
        if self.switches.full_gate_recurrence:
            keys += [f"R_{a}_{b}" for a in GATES for b in GATES]
        return keys

    def weight_views(self) -> dict[str, torch.Tensor]:
        """Views into the stored parameters, one a key of the weight contract."""
        N = self.hidden_size
        views = {}
        for name in self.blocks:
            views[f"W_{name}"] = self._block(self.weight_input, self.blocks, name)
            views[f"R_{name}"] = self._block(self.weight_recurrent, self.blocks, name)
            views[f"b_{name}"] = self._block(self.bias, self.blocks, name)
        for name in self.peephole_gates:
            views[f"p_{name}"] = self._block(self.peephole, self.peephole_gates, name)
        if self.switches.full_gate_recurrence:
            for r, a in enumerate(GATES):
                for c, b in enumerate(GATES):
                    views[f"R_{a}_{b}"] = self.gate_recurrence[r * N : (r + 1) * N, c * N : (c + 1) * N]
        return views


class GRURecurrence(torch.autograd.Function):
    """The GRU of Cho et al. (2014) over a whole sequence (equations in `GRULayer`).

    Inputs: x (T, B, M); W (3N, M), R (3N, N) and b (3N), rows z, r, h. Returns h (T, B, N).
    Like `LSTMRecurrence`: the input projection of all frames is one product, each step
    works on views made once before the loop (`unbind`) and writes in place (`out=`),
    and the weight gradients are one product each after the backward loop; and the same
    loops run compiled from harness/kernels/gru.cpp when it could be built (these Python
    loops remain the reference and the fallback, and the tests compare the two).
    """

    @staticmethod
    def forward(ctx, x, W, R, b):
        compiled = kernels.gru()
        ctx.compiled = compiled
        if compiled is not None:  # the same loops in C++ (harness/kernels/gru.cpp)
            h, *saved = compiled.forward(x, W, R, b)
            ctx.save_for_backward(x, W, R, *saved, None)
            return h
        T, B, M = x.shape
        N = W.shape[0] // 3
        R_zr_t, R_h_t = R[: 2 * N].t(), R[2 * N :].t()
        # a[t] = pre-activations (z, r, h) of step t, starting from the input projection.
        a = torch.addmm(b, x.reshape(T * B, M), W.t()).view(T, B, 3 * N)  # (T, B, 3N)
        states = x.new_zeros(T + 1, B, N)  # h^t, states[0] = 0
        gates = x.new_empty(T, B, 2 * N)  # z^t, r^t
        candidate = x.new_empty(T, B, N)  # h~^t
        reset_state = x.new_empty(T, B, N)  # r^t * h^{t-1}, what R_h multiplies
        step = x.new_empty(T, B, N)  # h~^t - h^{t-1}

        a_zr, a_h = a[..., : 2 * N].unbind(0), a[..., 2 * N :].unbind(0)
        h_t, zr_t = states.unbind(0), gates.unbind(0)
        z_t, r_t = gates[..., :N].unbind(0), gates[..., N:].unbind(0)
        cand_t, rh_t, step_t = candidate.unbind(0), reset_state.unbind(0), step.unbind(0)
        for t in range(T):
            torch.sigmoid(a_zr[t].addmm_(h_t[t], R_zr_t), out=zr_t[t])
            torch.mul(r_t[t], h_t[t], out=rh_t[t])  # the reset acts before the product
            torch.tanh(a_h[t].addmm_(rh_t[t], R_h_t), out=cand_t[t])
            torch.sub(cand_t[t], h_t[t], out=step_t[t])
            torch.addcmul(h_t[t], z_t[t], step_t[t], out=h_t[t + 1])  # (1 - z) h + z h~
        ctx.save_for_backward(x, W, R, states, gates, candidate, reset_state, step)
        return states[1:].clone()

    @staticmethod
    def backward(ctx, dY):
        x, W, R, states, gates, candidate, reset_state, step = ctx.saved_tensors
        if ctx.compiled is not None:
            dx, dW, dR, db = ctx.compiled.backward(dY, x, W, R, states, gates, candidate, reset_state,
                                                   ctx.needs_input_grad[0])
            return dx if ctx.needs_input_grad[0] else None, dW, dR, db
        T, B, M = x.shape
        N = W.shape[0] // 3
        R_zr, R_h = R[: 2 * N], R[2 * N :]
        z, r = gates[..., :N], gates[..., N:]
        # The local derivatives, for all steps at once.
        da_z_dh = (step * z * (1 - z)).unbind(0)  # d h / d a_z = (h~ - h) z (1 - z)
        da_h_dh = (z * (1 - candidate * candidate)).unbind(0)  # d h / d a_h = z (1 - h~^2)
        da_r_drh = (states[:-1] * r * (1 - r)).unbind(0)  # d (r h) / d a_r = h r (1 - r)
        keep = (1 - z).unbind(0)  # d h^t / d h^{t-1}, the direct path
        r_t, dY_t = r.unbind(0), dY.unbind(0)

        dA = x.new_empty(T, B, 3 * N)  # d loss / d pre-activation (z, r, h)
        da_z, da_r, da_h = (dA[..., k * N : (k + 1) * N].unbind(0) for k in range(3))
        da_zr = dA[..., : 2 * N].unbind(0)
        dh = x.new_empty(B, N)
        dh_next = x.new_zeros(B, N)  # d loss / d h^t through step t + 1
        d_reset_state = x.new_empty(B, N)
        for t in range(T - 1, -1, -1):
            torch.add(dY_t[t], dh_next, out=dh)
            torch.mul(dh, da_z_dh[t], out=da_z[t])
            torch.mul(dh, da_h_dh[t], out=da_h[t])
            torch.mm(da_h[t], R_h, out=d_reset_state)
            torch.mul(d_reset_state, da_r_drh[t], out=da_r[t])
            torch.mul(dh, keep[t], out=dh_next).addcmul_(d_reset_state, r_t[t]).addmm_(da_zr[t], R_zr)

        dA_flat = dA.view(T * B, 3 * N)
        dx = torch.mm(dA_flat, W).view(T, B, M) if ctx.needs_input_grad[0] else None
        dW = torch.mm(dA_flat.t(), x.reshape(T * B, M))
        dR = torch.cat((torch.mm(dA_flat[:, : 2 * N].t(), states[:-1].reshape(T * B, N)),
                        torch.mm(dA_flat[:, 2 * N :].t(), reset_state.view(T * B, N))))
        db = dA_flat.sum(0)
        return dx, dW, dR, db


class GRULayer(WeightContract, nn.Module):
    """One unidirectional GRU layer in the form of Cho et al. (2014)::

        z^t = sigma(W_z x^t + R_z h^{t-1} + b_z)                 update gate
        r^t = sigma(W_r x^t + R_r h^{t-1} + b_r)                 reset gate
        h~^t = tanh(W_h x^t + R_h (r^t * h^{t-1}) + b_h)         candidate (reset before the product)
        h^t = (1 - z^t) * h^{t-1} + z^t * h~^t

    where x^t has M values, h^t N, W_* are N x M, R_* N x N, b_* N. This is not
    torch.nn.GRU's form, which applies the reset after the product, r * (R_h h + b_hh),
    and weights the old state with z instead of 1 - z.

    Stored fused: `weight_input` (3N, M) and `bias` (3N) with rows z, r, h;
    `weight_recurrent` (3N, N) with rows R_z, R_r, R_h. Input x (T, B, M), output (T, B, N).
    The time loop and its hand-written backward pass are `GRURecurrence`.
    """

    def __init__(self, input_size: int, hidden_size: int, init_std: float = 0.1):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        N, M = hidden_size, input_size
        self.weight_input = _normal((3 * N, M), init_std)
        self.weight_recurrent = _normal((3 * N, N), init_std)
        self.bias = _normal((3 * N,), init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GRURecurrence.apply(x, self.weight_input, self.weight_recurrent, self.bias)

    def weight_keys(self) -> list[str]:
        return [f"{kind}_{gate}" for kind in "WRb" for gate in "zrh"]

    def weight_views(self) -> dict[str, torch.Tensor]:
        N = self.hidden_size
        views = {}
        for k, gate in enumerate("zrh"):
            rows = slice(k * N, (k + 1) * N)
            views[f"W_{gate}"] = self.weight_input[rows]
            views[f"R_{gate}"] = self.weight_recurrent[rows]
            views[f"b_{gate}"] = self.bias[rows]
        return views


def make_layer(variant, input_size: int, hidden_size: int, switches=None, cell=None, **options) -> nn.Module:
    """One unidirectional layer of `variant`; x (T, B, M) -> y (T, B, N).

    `variant` is a model's name (harness.models.MODELS: vanilla ... fgr and gru have the
    weight contract) or a mapping of harness.models.SWITCHES (an LSTM composed of them);
    `switches` is the `switches:` of a variant config, which gives a model of a new name
    its cell, and `cell` its `cell:` (a class, harness.models.cell_class; mingru, minlstm and
    rglru are such models, harness.models.minimal and harness.models.griffin).
    Options: `init_std` (default 0.1, Greff et al.), `forget_bias` (the LSTM cells, default
    0; dropped where there is no forget gate); for the gated-feedback stacks (gflstm,
    alias gfrnn, and gfgru) also `layers` (default 3) and `concat_layers` (default false):
    they return a whole stack, x (T, B, M) -> (T, B, `output_size`).
    """
    if hasattr(variant, "items"):
        return LSTMLayer(LSTMSwitches.from_switches(variant, where="make_layer's switches"), input_size,
                         hidden_size, **options)
    model = resolve(variant, switches, cell)
    if model.cell == "class":
        return CellClass(model, cell, input_size, hidden_size, init_std=options.get("init_std", 0.1))
    if model.cell == "gru":
        options.pop("forget_bias", None)
    if model.gated_feedback:
        return GatedFeedbackRNN(model.name, input_size, hidden_size, **options)
    if model.cell == "gru":
        return GRULayer(input_size, hidden_size, **options)
    return LSTMLayer(model.switches, input_size, hidden_size, **options)
