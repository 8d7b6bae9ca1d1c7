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
from harness.models import gated_feedback_loops as loops
from harness.models.weights import WeightContract

# The unit-wise gates of each cell (from below and the layer's own state), then the candidate.
CELLS = {
    "gflstm": {"gates": ("i", "f", "o"), "candidate": "c"},
    "gfgru": {"gates": ("z", "r"), "candidate": "h"},
}


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
    the Python loops (harness.models.gated_feedback_loops: the reference and the fallback;
    the tests compare the two), which take the layers fused (`fused_weights`).
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
        W_first, b_first, W_upper, b_upper, R, fused_feedback = loops.fused_weights(weight_below, bias,
                                                                                    weight_recurrent, feedback)
        y, saved = loops.forward(x, W_first, b_first, W_upper, b_upper, R, global_gate_recurrent, fused_feedback,
                                 fixed, lstm, concat)
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx, dY):
        L = ctx.layers
        if ctx.compiled is not None:
            x, fixed, *rest = ctx.saved_tensors
            dx, d_feedback, d_global, *d_layers = ctx.compiled.backward(
                dY, x, rest[:L], fixed, *rest[L:], ctx.lstm, ctx.concat, ctx.needs_input_grad[0])
        else:
            dx, dW_first, db_first, dW_upper, db_upper, dR, d_global, d_fused = loops.backward(
                ctx.saved_tensors, dY, ctx.lstm, ctx.concat, ctx.needs_input_grad[0])
            G_N = dR.shape[1]
            d_bias = [torch.cat((d[:G_N], d[G_N + L :])) for d in (db_first, *db_upper)]
            d_layers = [dW_first, *dW_upper, *d_bias, *dR]
            N = dR.shape[2]
            d_feedback = d_fused.view(L, L, N, N).permute(1, 0, 3, 2)  # back to [i, j] = U^{i->j}
        return (dx if ctx.needs_input_grad[0] else None, d_feedback, d_global, None, None, None, *d_layers)


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
