"""The gated-feedback RNN of Chung, Gülçehre, Cho & Bengio (ICML 2015): GF-LSTM and GF-GRU.

A stack of L layers (L >= 2, default 3). Layer j at step t gets h_t^{j-1} from below
(h_t^0 = x^t) and, from every layer i, its previous state h_{t-1}^i through a scalar
global reset gate::

    g^{i->j} = sigma(w_g^{i->j} . h_t^{j-1} + u_g^{i->j} . h*_{t-1})

where h*_{t-1} is all L layers' states at t-1 concatenated (L N values) and w_g, u_g are
vectors (no bias, as in the paper). The global gates act only on the candidate:

GF-LSTM (variant `gflstm`; `gfrnn`, its former name, is an alias)::

    i_t^j = sigma(W_i h_t^{j-1} + R_i h_{t-1}^j + b_i)     (f, o alike; no peepholes)
    c~_t^j = tanh(W_c h_t^{j-1} + sum_i g^{i->j} U_c^{i->j} h_{t-1}^i + b_c)
    c_t^j = f_t^j * c_{t-1}^j + i_t^j * c~_t^j
    h_t^j = o_t^j * tanh(c_t^j)

GF-GRU (variant `gfgru`)::

    z_t^j = sigma(W_z h_t^{j-1} + R_z h_{t-1}^j + b_z)     (r alike)
    h~_t^j = tanh(W_h h_t^{j-1} + r_t^j * sum_i g^{i->j} U^{i->j} h_{t-1}^i + b_h)
    h_t^j = (1 - z_t^j) * h_{t-1}^j + z_t^j * h~_t^j

where every layer has N units (`hidden_size` is per layer), W_* of layer 1 are N x M and
of the others N x N, R_* and U^{i->j} are N x N. All state starts at zero. The output is
the top layer's state, (T, B, N), or with `concat_layers` all layers' states, (T, B, L N)
in the order 1..L; `output_size` says which.

How it is computed: `GatedFeedbackRecurrence`, an autograd function with a hand-written
backward pass through time, in the manner of harness.models.cells (at one sequence an update,
the number of operations a step is what costs). The input projection of layer 1 (its
gates, the L gate terms w_g . x and the candidate) is one product over all frames. At each
step one product of h*_{t-1} gives, for every layer at once, what its unit-wise gates get
from its own state and what its global gates get from h*_{t-1}; then the layers run
bottom up: one product for what comes from below, one sigmoid for all of the layer's
gates, unit-wise and global, and one product of the gate-scaled h*_{t-1} with
[U^{1->j} ... U^{L->j}] for the feedback into the candidate. The weight gradients are
one product each after the backward loop. `GatedFeedbackRNN._forward_autograd` does the
same through autograd; the tests hold the two together.

The same equations run compiled (harness/kernels/gated_feedback.cpp) whenever that could
be built: there the step's product of h*_{t-1} is batched over the L source layers,
P[s] = h_{t-1}^s [R_s^T | u_g blocks | U^{s->1}^T ... U^{s->L}^T], so that it has no
zero blocks, and the feedback sum_i g^{i->j} U^{i->j} h_{t-1}^i is formed from the
products U^{i->j} h_{t-1}^i after the gates. The Python loops stay the reference and the
fallback (ODYSSEY_PYTHON_LOOPS=1), and the tests compare the two.

`fixed_global_gates`, an L x L tensor (row i, column j = g^{i->j}) or None, replaces the
learned gates when set: a hook for tests and ablations (the identity matrix turns the
network into a plain stack of LSTM or GRU layers whose candidate sees the own state).
"""

from __future__ import annotations

import torch
from torch import nn

from harness import kernels
from harness.errors import UserError
from harness.models.weights import WeightContract

# The unit-wise gates of each cell (from below and the layer's own state), then the candidate.
CELLS = {
    "gflstm": {"gates": ("i", "f", "o"), "candidate": "c"},
    "gfgru": {"gates": ("z", "r"), "candidate": "h"},
}


def _steps(tensor: torch.Tensor, lo: int | None = None, hi: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """views[j][t] of a (T, B, L, ...) tensor, its last dimension cut to lo:hi: every
    per-step view made at once, before the loop (Python's per-call cost dominates)."""
    part = tensor if lo is None else tensor[..., lo:hi]
    return [part[:, :, j].unbind(0) for j in range(part.shape[2])]


class GatedFeedbackRecurrence(torch.autograd.Function):
    """The gated-feedback stack over a whole sequence, with a hand-written backward pass
    through time (the equations in the module docstring; `GatedFeedbackRNN._forward_autograd`
    is the same computation through autograd, the reference of the tests).

    Inputs: x (T, B, M); feedback (L, L, N, N), [i, j] = U^{i->j}; global_gate_recurrent
    (L, L, L N), [i, j] = u_g^{i->j}; fixed (L, B, L) fixed global gates [j, b, i] or None;
    lstm: GF-LSTM (True) or GF-GRU; concat: output all layers; then the parameters of each
    layer as `GatedFeedbackRNN` stores them: weight_below[1..L], bias[1..L],
    weight_recurrent[1..L]. Returns (T, B, L N) or (T, B, N).

    It runs compiled from harness/kernels/gated_feedback.cpp when that could be built, else
    the Python loops below (`python_forward`, `python_backward`: the reference and the
    fallback; the tests compare the two), which take the layers fused (`fused_weights`).
    """

    @staticmethod
    def forward(ctx, x, feedback, global_gate_recurrent, fixed, lstm, concat, *layers):
        L = feedback.shape[0]
        weight_below, bias, weight_recurrent = layers[:L], layers[L : 2 * L], layers[2 * L :]
        ctx.lstm, ctx.concat, ctx.layers = lstm, concat, L
        ctx.compiled = compiled = kernels.gated_feedback()
        if compiled is not None:  # the same loops in C++ (harness/kernels/gated_feedback.cpp)
            y, *saved = compiled.forward(x, weight_below, bias, weight_recurrent, feedback, global_gate_recurrent,
                                         fixed, lstm, concat)
            ctx.save_for_backward(x, fixed, *weight_below, *saved)
            return y
        W_first, b_first, W_upper, b_upper, R, fused_feedback = fused_weights(weight_below, bias, weight_recurrent,
                                                                              feedback)
        return GatedFeedbackRecurrence.python_forward(ctx, x, W_first, b_first, W_upper, b_upper, R,
                                                      global_gate_recurrent, fused_feedback, fixed, lstm, concat)

    @staticmethod
    def backward(ctx, dY):
        L = ctx.layers
        if ctx.compiled is not None:
            x, fixed, *rest = ctx.saved_tensors
            dx, d_feedback, d_global, *d_layers = ctx.compiled.backward(
                dY, x, rest[:L], fixed, *rest[L:], ctx.lstm, ctx.concat, ctx.needs_input_grad[0])
        else:
            dx, dW_first, db_first, dW_upper, db_upper, dR, d_global, d_fused = GatedFeedbackRecurrence.python_backward(
                ctx, dY)
            G_N = dR.shape[1]
            d_bias = [torch.cat((d[:G_N], d[G_N + L :])) for d in (db_first, *db_upper)]
            d_layers = [dW_first, *dW_upper, *d_bias, *dR]
            N = dR.shape[2]
            d_feedback = d_fused.view(L, L, N, N).permute(1, 0, 3, 2)  # back to [i, j] = U^{i->j}
        return (dx if ctx.needs_input_grad[0] else None, d_feedback, d_global, None, None, None, *d_layers)

    @staticmethod
    def python_forward(ctx, x, W_first, b_first, W_upper, b_upper, R, u_g, feedback, fixed, lstm, concat):
        """The Python loops, on the fused weights: K = G N + L + N the rows a layer gets
        from below (the G unit-wise gates, the L global gates, the candidate); W_first (K, M)
        and b_first (K) of layer 1; W_upper (L-1, K, N) and b_upper (L-1, K) of layers 2..L;
        R (L, G N, N) the gates' weights on the layer's own state; u_g (L, L, L N), [i, j] =
        u_g^{i->j}; feedback (L, L N, N): [U^{1->j} ... U^{L->j}] transposed.

        As in harness.models.cells: per-step views made once (`_steps`, `unbind`), results written
        in place (`out=`), and the weight gradients one product each after the backward loop.
        """
        T, B, M = x.shape
        L, LN, N = feedback.shape
        K = W_first.shape[0]
        n_gates = K - N  # G N + L: the sigmoid part of a layer's pre-activation
        G_N = n_gates - L
        # h*_{t-1} times `recurrent` is every layer's gate terms from the previous step: the
        # own state's R (block diagonal) and the u_g terms (zero for the candidate).
        recurrent = x.new_zeros(LN, L, K)
        for j in range(L):
            recurrent[j * N : (j + 1) * N, j, :G_N] = R[j].t()
        recurrent[:, :, G_N:n_gates] = u_g.permute(2, 1, 0)  # [(k, n), j, i] = u_g^{i->j}[(k, n)]
        recurrent = recurrent.view(LN, L * K)
        # pre[t, :, j] = layer j's pre-activation at step t, overwritten by its activations:
        # [gates (sigma), global gates (sigma), candidate (tanh)].
        pre = x.new_empty(T, B, L, K)
        pre[:, :, 0] = torch.addmm(b_first, x.reshape(T * B, M), W_first.t()).view(T, B, K)
        states = x.new_zeros(T + 1, B, L, N)  # h*_t, states[0] = 0
        scaled = x.new_empty(T, B, L, LN)  # [t, :, j] = g^{i->j} h_{t-1}^i, i = 1..L
        from_previous = x.new_empty(B, L, K)  # h*_{t-1} times `recurrent`
        if lstm:
            cells = x.new_zeros(T + 1, B, L, N)  # c*_t
            cell_out = x.new_empty(T, B, L, N)  # tanh(c_t)
            fed_back = step = None
        else:
            fed_back = x.new_empty(T, B, L, N)  # sum_i g^{i->j} U^{i->j} h_{t-1}^i (before r)
            step = x.new_empty(T, B, L, N)  # h~ - h_{t-1}
            cells = cell_out = None

        A, gates, candidate = _steps(pre), _steps(pre, 0, n_gates), _steps(pre, n_gates)
        g_learned = _steps(pre, G_N, n_gates)
        first, second, third = (_steps(pre, k * N, (k + 1) * N) for k in range(3))  # i f o / z r
        h, scaled_t = _steps(states), _steps(scaled)
        h_all, h_layers = states.view(T + 1, B, LN).unbind(0), states.unbind(0)
        scaled_layers = [[s.view(B, L, N) for s in per_t] for per_t in scaled_t]
        from_previous_j = from_previous[..., :n_gates].unbind(1)
        if lstm:
            c, c_out = _steps(cells), _steps(cell_out)
        else:
            fb, h_step = _steps(fed_back), _steps(step)
        for t in range(T):
            torch.mm(h_all[t], recurrent, out=from_previous.view(B, L * K))
            for j in range(L):
                if j > 0:
                    torch.addmm(b_upper[j - 1], h[j - 1][t + 1], W_upper[j - 1].t(), out=A[j][t])
                gate = gates[j][t]
                torch.sigmoid(gate.add_(from_previous_j[j]), out=gate)
                g = g_learned[j][t] if fixed is None else fixed[j]  # (B, L): g^{i->j}
                torch.mul(h_layers[t], g.unsqueeze(2), out=scaled_layers[j][t])
                cand = candidate[j][t]
                if lstm:
                    torch.tanh(cand.addmm_(scaled_t[j][t], feedback[j]), out=cand)
                    torch.mul(second[j][t], c[j][t], out=c[j][t + 1]).addcmul_(first[j][t], cand)
                    torch.mul(third[j][t], torch.tanh(c[j][t + 1], out=c_out[j][t]), out=h[j][t + 1])
                else:
                    torch.mm(scaled_t[j][t], feedback[j], out=fb[j][t])
                    torch.tanh(cand.addcmul_(second[j][t], fb[j][t]), out=cand)
                    torch.sub(cand, h[j][t], out=h_step[j][t])
                    torch.addcmul(h[j][t], first[j][t], h_step[j][t], out=h[j][t + 1])
        ctx.save_for_backward(x, W_first, W_upper, recurrent, feedback, fixed, pre, states, cells, cell_out,
                              scaled, fed_back, step)
        outputs = states[1:].view(T, B, LN)
        return outputs.clone() if concat else outputs[..., (L - 1) * N :].clone()

    @staticmethod
    def python_backward(ctx, dY):
        """The Python loops backward: the gradients of python_forward's x and weights."""
        (x, W_first, W_upper, recurrent, feedback, fixed, pre, states, cells, cell_out,
         scaled, fed_back, step) = ctx.saved_tensors
        lstm = ctx.lstm
        T, B, M = x.shape
        L, LN, N = feedback.shape
        K = W_first.shape[0]
        n_gates = K - N
        G_N = n_gates - L

        # d activation / d pre-activation, for all steps at once
        slope = torch.cat((pre[..., :n_gates] * (1 - pre[..., :n_gates]),
                           1 - pre[..., n_gates:] * pre[..., n_gates:]), dim=3)  # (T, B, L, K)
        if fixed is not None:
            slope[..., G_N:n_gates] = 0  # fixed gates take no gradient
        d_pre = x.new_empty(T, B, L, K)  # d loss / d pre-activation
        d_fed_back = x.new_empty(T, B, L, N)  # d loss / d (the feedback product)
        dh = x.new_empty(B, L, N)  # d loss / d h*_t
        dh_next = x.new_zeros(B, L, N)  # d loss / d h*_t through step t + 1
        d_scaled = x.new_empty(B, L, N)
        dh_j, dh_next_j = dh.unbind(1), dh_next.unbind(1)
        dh_flat, dh_next_flat, d_scaled_flat = dh.view(B, LN), dh_next.view(B, LN), d_scaled.view(B, LN)
        top = slice(0, LN) if ctx.concat else slice((L - 1) * N, LN)

        d, d_gates, d_candidate = _steps(d_pre), _steps(d_pre, 0, n_gates), _steps(d_pre, n_gates)
        d_first, d_second, d_third = (_steps(d_pre, k * N, (k + 1) * N) for k in range(3))
        dg = _steps(d_pre, G_N, n_gates)
        g_learned, candidate = _steps(pre, G_N, n_gates), _steps(pre, n_gates)
        first, second, third = (_steps(pre, k * N, (k + 1) * N) for k in range(3))
        slope_gates, slope_candidate = _steps(slope, 0, n_gates), _steps(slope, n_gates)
        dfb = _steps(d_fed_back)
        h_layers, d_pre_flat = states.unbind(0), d_pre.view(T, B, L * K).unbind(0)
        dY_t = dY.unbind(0)
        if lstm:
            dc_next = x.new_zeros(B, L, N)  # d loss / d c_t through step t + 1
            dc_j = dc_next.unbind(1)
            c, c_out = _steps(cells), _steps(cell_out)
        else:
            fb, h_step = _steps(fed_back), _steps(step)
        for t in range(T - 1, -1, -1):
            dh.copy_(dh_next)
            dh_flat[:, top] += dY_t[t]
            dh_next.zero_()  # from here on: d loss / d h*_{t-1}
            for j in range(L - 1, -1, -1):
                if lstm:
                    tc = c_out[j][t]
                    torch.mul(dh_j[j], tc, out=d_third[j][t])  # d o
                    dc = dc_j[j].addcmul_(dh_j[j] * third[j][t], 1 - tc * tc)
                    torch.mul(dc, candidate[j][t], out=d_first[j][t])  # d i
                    torch.mul(dc, c[j][t], out=d_second[j][t])  # d f
                    torch.mul(dc, first[j][t], out=d_candidate[j][t]).mul_(slope_candidate[j][t])
                    dc.mul_(second[j][t])  # d loss / d c_{t-1}
                    dfb[j][t].copy_(d_candidate[j][t])
                else:
                    torch.mul(dh_j[j], h_step[j][t], out=d_first[j][t])  # d z
                    torch.mul(dh_j[j], first[j][t], out=d_candidate[j][t]).mul_(slope_candidate[j][t])
                    torch.mul(d_candidate[j][t], fb[j][t], out=d_second[j][t])  # d r
                    torch.mul(d_candidate[j][t], second[j][t], out=dfb[j][t])
                    dh_next_j[j].addcmul_(dh_j[j], 1 - first[j][t])  # h = (1 - z) h_{t-1} + ...
                torch.mm(dfb[j][t], feedback[j].t(), out=d_scaled_flat)
                torch.sum(d_scaled * h_layers[t], dim=2, out=dg[j][t])
                g = g_learned[j][t] if fixed is None else fixed[j]
                dh_next.addcmul_(d_scaled, g.unsqueeze(2))
                d_gates[j][t].mul_(slope_gates[j][t])
                if j > 0:
                    dh_j[j - 1].addmm_(d[j][t], W_upper[j - 1])
            dh_next_flat.addmm_(d_pre_flat[t], recurrent.t())

        d_first_layer = d_pre[:, :, 0].reshape(T * B, K)
        dx = torch.mm(d_first_layer, W_first).view(T, B, M) if ctx.needs_input_grad[0] else None
        dW_first = torch.mm(d_first_layer.t(), x.reshape(T * B, M))
        db_first = d_first_layer.sum(0)
        d_upper = d_pre[:, :, 1:].permute(2, 0, 1, 3).reshape(L - 1, T * B, K)
        below = states[1:, :, :-1].permute(2, 0, 1, 3).reshape(L - 1, T * B, N)  # h_t^{j-1}
        dW_upper = torch.bmm(d_upper.transpose(1, 2), below)
        db_upper = d_upper.sum(1)
        # only the blocks of `recurrent` that are weights: R (own state) and u_g
        h_previous = states[:-1]  # (T, B, L, N)
        dR = torch.bmm(d_pre[..., :G_N].permute(2, 3, 0, 1).reshape(L, G_N, T * B),
                       h_previous.permute(2, 0, 1, 3).reshape(L, T * B, N))
        d_u_g = torch.mm(d_pre[..., G_N:n_gates].reshape(T * B, L * L).t(), h_previous.reshape(T * B, LN))
        d_u_g = d_u_g.view(L, L, LN).transpose(0, 1)  # [j, i] -> [i, j]
        d_feedback = torch.bmm(scaled.permute(2, 3, 0, 1).reshape(L, LN, T * B),
                               d_fed_back.permute(2, 0, 1, 3).reshape(L, T * B, N))
        return dx, dW_first, db_first, dW_upper, db_upper, dR, d_u_g, d_feedback


def fused_weights(weight_below, bias, weight_recurrent, feedback):
    """The layers' parameters as `GatedFeedbackRecurrence.python_forward` takes them:
    W_first, b_first, W_upper, b_upper (the biases with 0 for the global gates, which have
    none), R and the feedback (L, L N, N), [j] = [U^{1->j} ... U^{L->j}]^T."""
    L, _, N, _ = feedback.shape
    G_N = weight_recurrent[0].shape[0]
    zeros = bias[0].new_zeros(L)
    full_bias = [torch.cat((b[:G_N], zeros, b[G_N:])) for b in bias]
    return (weight_below[0], full_bias[0], torch.stack(tuple(weight_below[1:])), torch.stack(full_bias[1:]),
            torch.stack(tuple(weight_recurrent)), feedback.permute(1, 0, 3, 2).reshape(L, L * N, N))


class GatedFeedbackRNN(WeightContract, nn.Module):
    """A GF-LSTM (`cell="gflstm"`) or GF-GRU (`cell="gfgru"`) stack; x (T, B, M) -> (T, B, output_size).

    Parameters, layer j = 1..L (index j - 1 in the lists), G unit-wise gates a layer:
    - `weight_below[j]` (G N + L + N, M_j), M_1 = M, M_j = N otherwise: rows W of the G
      gates, then w_g^{i->j} for i = 1..L, then W of the candidate;
    - `bias[j]` ((G + 1) N): b of the gates, then of the candidate (the global gates have none);
    - `weight_recurrent[j]` (G N, N): R of the gates on the layer's own h_{t-1}^j;
    - `feedback` (L, L, N, N): feedback[i, j] = U^{i->j} (0-based);
    - `global_gate_recurrent` (L, L, L N): [i, j] = u_g^{i->j}.
    Initialisation: every weight ~ N(0, init_std^2); `forget_bias` is added to b_f (GF-LSTM).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, layers: int = 3,
                 concat_layers: bool = False, init_std: float = 0.1, forget_bias: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown gated-feedback cell '{cell}'; choose one of {', '.join(CELLS)}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 2:
            raise UserError(f"variant.layers={layers} is not allowed: a gated-feedback RNN needs an integer >= 2 "
                            f"(e.g. `odyssey train variant={cell} variant.layers=3`).")
        self.cell, self.gates, self.candidate = cell, CELLS[cell]["gates"], CELLS[cell]["candidate"]
        self.input_size, self.hidden_size, self.layers = input_size, hidden_size, layers
        self.concat_layers = bool(concat_layers)
        self.output_size = hidden_size * (layers if self.concat_layers else 1)
        N, L, G = hidden_size, layers, len(self.gates)

        def normal(*shape):
            return nn.Parameter(torch.randn(shape) * init_std)

        self.weight_below = nn.ParameterList(
            [normal(G * N + L + N, input_size if j == 0 else N) for j in range(L)])
        self.bias = nn.ParameterList([normal((G + 1) * N) for _ in range(L)])
        self.weight_recurrent = nn.ParameterList([normal(G * N, N) for _ in range(L)])
        self.feedback = normal(L, L, N, N)
        self.global_gate_recurrent = normal(L, L, L * N)
        if "f" in self.gates:
            with torch.no_grad():
                for bias in self.bias:
                    bias[N : 2 * N].add_(forget_bias)
        self.fixed_global_gates: torch.Tensor | None = None

    def _step_weights(self):
        """feedback (L, L N, N) and the biases in the row order of `weight_below` (0 for w_g),
        as `_forward_autograd` takes them."""
        G_N, L = len(self.gates) * self.hidden_size, self.layers
        feedback = self.feedback.permute(1, 0, 3, 2).reshape(L, L * self.hidden_size, self.hidden_size)
        zeros = self.bias[0].new_zeros(L)
        bias = [torch.cat((b[:G_N], zeros, b[G_N:])) for b in self.bias]
        return feedback, bias

    def _fixed_gates(self, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The hook `fixed_global_gates` ([i, j] = g^{i->j}) as [j, b, i], or None."""
        if self.fixed_global_gates is None:
            return None
        L = self.layers
        return self.fixed_global_gates.to(dtype).t().unsqueeze(1).expand(L, batch, L).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GatedFeedbackRecurrence.apply(
            x, self.feedback, self.global_gate_recurrent, self._fixed_gates(x.shape[1], x.dtype),
            self.cell == "gflstm", self.concat_layers, *self.weight_below, *self.bias, *self.weight_recurrent)

    def _forward_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation as `forward` through autograd: the reference of the tests."""
        T, B, M = x.shape
        N, L, G = self.hidden_size, self.layers, len(self.gates)
        lstm = self.cell == "gflstm"
        feedback, bias = self._step_weights()
        own = torch.block_diag(*[w.t() for w in self.weight_recurrent]).view(L * N, L, G * N)
        gate = self.global_gate_recurrent.permute(2, 1, 0)  # [(k, n), j, i] = u_g^{i->j}[(k, n)]
        recurrent = torch.cat((own, gate, own.new_zeros(L * N, L, N)), dim=2).reshape(L * N, L * (G * N + L + N))
        n_gates = G * N + L  # the unit-wise and the global gates, one sigmoid
        below_x = torch.addmm(bias[0], x.reshape(T * B, M), self.weight_below[0].t()).view(T, B, n_gates + N)
        fixed = self._fixed_gates(B, x.dtype)
        h = x.new_zeros(B, L * N)  # h*_{t-1}
        c = [x.new_zeros(B, N) for _ in range(L)] if lstm else None
        outputs = []
        for x_t in below_x.unbind(0):
            from_previous = torch.mm(h, recurrent).view(B, L, n_gates + N).unbind(1)  # per layer (B, K)
            h_layers = h.view(B, L, N)
            below, new_h = None, []
            for j in range(L):
                a = x_t if j == 0 else torch.addmm(bias[j], below, self.weight_below[j].t())  # (B, K)
                gates = torch.sigmoid(a[:, :n_gates] + from_previous[j][:, :n_gates])
                g = gates[:, G * N :] if fixed is None else fixed[j]  # (B, L): g^{i->j}
                scaled = (h_layers * g.unsqueeze(2)).view(B, L * N)  # g^{i->j} h_{t-1}^i, i = 1..L
                if lstm:
                    i, f, o = gates[:, :N], gates[:, N : 2 * N], gates[:, 2 * N : 3 * N]
                    candidate = torch.tanh(torch.addmm(a[:, n_gates:], scaled, feedback[j]))
                    c[j] = torch.addcmul(f * c[j], i, candidate)
                    state = o * torch.tanh(c[j])
                else:
                    z, r = gates[:, :N], gates[:, N : 2 * N]
                    candidate = torch.tanh(torch.addcmul(a[:, n_gates:], r, scaled @ feedback[j]))
                    state = torch.addcmul(h_layers[:, j], z, candidate - h_layers[:, j])  # (1 - z) h + z h~
                new_h.append(state)
                below = state
            h = torch.cat(new_h, dim=1)  # (B, L N)
            outputs.append(h if self.concat_layers else below)
        return torch.stack(outputs)  # (T, B, output_size)

    # -- readable weights ----------------------------------------------------------------

    def weight_views(self) -> dict[str, torch.Tensor]:
        """Views into the parameters; layers numbered 1..L as in the paper: `W_i^1`, `R_i^1`,
        `b_i^1`, ..., `U_c^1->2` (U_h for GF-GRU), `w_g^1->2`, `u_g^1->2` (L N values)."""
        N, L = self.hidden_size, self.layers
        G = len(self.gates)
        views = {}
        for j in range(L):
            rows = {name: k * N for k, name in enumerate(self.gates)}
            rows[self.candidate] = G * N + L
            for name, row in rows.items():
                views[f"W_{name}^{j + 1}"] = self.weight_below[j][row : row + N]
                views[f"b_{name}^{j + 1}"] = self.bias[j][row - L if name == self.candidate else row :][:N]
                if name in self.gates:
                    views[f"R_{name}^{j + 1}"] = self.weight_recurrent[j][row : row + N]
            for i in range(L):
                pair = f"{i + 1}->{j + 1}"
                views[f"U_{self.candidate}^{pair}"] = self.feedback[i, j]
                views[f"w_g^{pair}"] = self.weight_below[j][G * N + i]
                views[f"u_g^{pair}"] = self.global_gate_recurrent[i, j]
        return views
