"""The gated-feedback RNN of Chung, Gülçehre, Cho & Bengio (ICML 2015): GF-LSTM and GF-GRU.

A stack of L layers (L >= 2, default 3). Layer j at step t gets h_t^{j-1} from below
(h_t^0 = x^t) and, from every layer i, its previous state h_{t-1}^i through a scalar
global reset gate::

    g^{i->j} = sigma(w_g^{i->j} . h_t^{j-1} + u_g^{i->j} . h*_{t-1})

where h*_{t-1} is all L layers' states at t-1 concatenated (L N values) and w_g, u_g are
vectors (no bias, as in the paper). The global gates act only on the candidate:

GF-LSTM (variant `gfrnn`)::

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

How it is computed: plain autograd, with products fused where the recursion allows.
The input projection of layer 1 (its gates, candidate and the L gate terms w_g . x) is one
product over all frames. At each step one batched product over the source layers i
computes everything that depends on h*_{t-1} alone: U^{i->j} h_{t-1}^i for every pair,
each layer's own-state gate terms R h_{t-1}^j, and the u_g terms. Then the layers run
bottom up, one product each for what comes from below.

`fixed_global_gates`, an L x L tensor (row i, column j = g^{i->j}) or None, replaces the
learned gates when set: a hook for tests and ablations (the identity matrix turns the
network into a plain stack of LSTM or GRU layers whose candidate sees the own state).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.cells import _import_into

# The unit-wise gates of each cell (from below and the layer's own state), then the candidate.
CELLS = {
    "gfrnn": {"gates": ("i", "f", "o"), "candidate": "c"},
    "gfgru": {"gates": ("z", "r"), "candidate": "h"},
}


class GatedFeedbackRNN(nn.Module):
    """A GF-LSTM (`cell="gfrnn"`) or GF-GRU (`cell="gfgru"`) stack; x (T, B, M) -> (T, B, output_size).

    Parameters, layer j = 1..L (index j - 1 in the lists):
    - `weight_below[j]` ((G+1) N + L, M_j), M_1 = M, M_j = N otherwise: rows W of the G
      unit-wise gates, W of the candidate, then w_g^{i->j} for i = 1..L;
    - `bias[j]` ((G+1) N): b of the gates and the candidate;
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
            raise ValueError(f"layers={layers} is not allowed: a gated-feedback RNN needs an integer >= 2")
        self.cell, self.gates, self.candidate = cell, CELLS[cell]["gates"], CELLS[cell]["candidate"]
        self.input_size, self.hidden_size, self.layers = input_size, hidden_size, layers
        self.concat_layers = bool(concat_layers)
        self.output_size = hidden_size * (layers if self.concat_layers else 1)
        N, L, G = hidden_size, layers, len(self.gates)

        def normal(*shape):
            return nn.Parameter(torch.randn(shape) * init_std)

        self.weight_below = nn.ParameterList(
            [normal((G + 1) * N + L, input_size if j == 0 else N) for j in range(L)])
        self.bias = nn.ParameterList([normal((G + 1) * N) for _ in range(L)])
        self.weight_recurrent = nn.ParameterList([normal(G * N, N) for _ in range(L)])
        self.feedback = normal(L, L, N, N)
        self.global_gate_recurrent = normal(L, L, L * N)
        if "f" in self.gates:
            with torch.no_grad():
                for bias in self.bias:
                    bias[N : 2 * N].add_(forget_bias)
        self.fixed_global_gates: torch.Tensor | None = None

    def _recurrent_weights(self) -> torch.Tensor:
        """(L, N, L N + G N + L L): for source layer k, what h_{t-1}^k is multiplied by:
        [U^{k->j} for j = 1..L | R of layer k's own gates | u_g^{i->j} restricted to block k]."""
        N, L = self.hidden_size, self.layers
        feedback = self.feedback.permute(0, 3, 1, 2).reshape(L, N, L * N)  # [k, n, (j, n')] = U^{k->j}[n', n]
        own = torch.stack([w.t() for w in self.weight_recurrent])  # (L, N, G N)
        gate = self.global_gate_recurrent.view(L * L, L, N).permute(1, 2, 0)  # [k, n, (i, j)]
        return torch.cat((feedback, own, gate), dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, M = x.shape
        N, L, G = self.hidden_size, self.layers, len(self.gates)
        lstm = self.cell == "gfrnn"
        recurrent = self._recurrent_weights()
        n_feedback, n_own = L * N, G * N
        biases = [torch.cat((b, b.new_zeros(L))) for b in self.bias]  # the gates g have no bias
        below_x = torch.addmm(biases[0], x.reshape(T * B, M), self.weight_below[0].t())
        below_x = below_x.view(T, B, (G + 1) * N + L).unbind(0)
        fixed = self.fixed_global_gates
        if fixed is not None:
            fixed = fixed.to(x.dtype).t().unsqueeze(0).expand(B, L, L)  # [b, j, i]

        h = x.new_zeros(L, B, N)  # h*_{t-1}, one row a layer
        c = [x.new_zeros(B, N) for _ in range(L)] if lstm else None
        outputs = []
        for t in range(T):
            from_previous = torch.bmm(h, recurrent)  # (L, B, L N + G N + L L)
            feedback = from_previous[..., :n_feedback].view(L, B, L, N)  # [i, b, j] = U^{i->j} h^i
            gate_recurrent = from_previous[..., n_feedback + n_own :].sum(0).view(B, L, L)  # [b, i, j]
            below, new_h = None, []
            for j in range(L):
                a = below_x[t] if j == 0 else torch.addmm(biases[j], below, self.weight_below[j].t())
                if fixed is None:
                    g = torch.sigmoid(a[:, (G + 1) * N :] + gate_recurrent[:, :, j])  # (B, L): g^{i->j}
                else:
                    g = fixed[:, j]
                # sum_i g^{i->j} U^{i->j} h_{t-1}^i  (B, N)
                fed_back = torch.bmm(g.unsqueeze(1), feedback[:, :, j].transpose(0, 1)).squeeze(1)
                gates = torch.sigmoid(a[:, :n_own] + from_previous[j, :, n_feedback : n_feedback + n_own])
                if lstm:
                    i, f, o = gates.chunk(3, dim=1)
                    candidate = torch.tanh(a[:, n_own : n_own + N] + fed_back)
                    c[j] = torch.addcmul(f * c[j], i, candidate)
                    state = o * torch.tanh(c[j])
                else:
                    z, r = gates.chunk(2, dim=1)
                    candidate = torch.tanh(torch.addcmul(a[:, n_own : n_own + N], r, fed_back))
                    state = torch.addcmul(h[j], z, candidate - h[j])  # (1 - z) h + z h~
                new_h.append(state)
                below = state
            h = torch.stack(new_h)  # (L, B, N)
            outputs.append(h.permute(1, 0, 2).reshape(B, L * N) if self.concat_layers else h[-1])
        return torch.stack(outputs)  # (T, B, output_size)

    # -- readable weights ----------------------------------------------------------------

    def _views(self) -> dict[str, torch.Tensor]:
        """Views into the parameters; layers numbered 1..L as in the paper: `W_i^1`, `R_i^1`,
        `b_i^1`, ..., `U_c^1->2` (U_h for GF-GRU), `w_g^1->2`, `u_g^1->2` (L N values)."""
        N, L = self.hidden_size, self.layers
        names = self.gates + (self.candidate,)
        views = {}
        for j in range(L):
            for k, name in enumerate(names):
                views[f"W_{name}^{j + 1}"] = self.weight_below[j][k * N : (k + 1) * N]
                views[f"b_{name}^{j + 1}"] = self.bias[j][k * N : (k + 1) * N]
                if name in self.gates:
                    views[f"R_{name}^{j + 1}"] = self.weight_recurrent[j][k * N : (k + 1) * N]
            for i in range(L):
                pair = f"{i + 1}->{j + 1}"
                views[f"U_{self.candidate}^{pair}"] = self.feedback[i, j]
                views[f"w_g^{pair}"] = self.weight_below[j][len(names) * N + i]
                views[f"u_g^{pair}"] = self.global_gate_recurrent[i, j]
        return views

    def export_weights(self) -> dict[str, torch.Tensor]:
        return {key: view.detach().clone() for key, view in self._views().items()}

    def import_weights(self, weights: dict[str, torch.Tensor]) -> None:
        _import_into(self._views(), weights, type(self).__name__)
