"""The Python loops of the gated-feedback RNN (harness.models.gated_feedback): its forward
and backward passes through time on the fused weights (`fused_weights`), the reference of
the compiled loops (harness/kernels/gated_feedback.cpp) and their fallback
(ODYSSEY_PYTHON_LOOPS=1). The equations and the shape of the computation are in the
docstring of harness.models.gated_feedback."""

from __future__ import annotations

import torch


def steps(tensor: torch.Tensor, lo: int | None = None, hi: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """views[j][t] of a (T, B, L, ...) tensor, its last dimension cut to lo:hi: every
    per-step view made at once, before the loop (Python's per-call cost dominates)."""
    part = tensor if lo is None else tensor[..., lo:hi]
    return [part[:, :, j].unbind(0) for j in range(part.shape[2])]


def fused_weights(weight_below, bias, weight_recurrent, feedback):
    """The layers' parameters as `forward` takes them:
    W_first, b_first, W_upper, b_upper (the biases with 0 for the global gates, which have
    none), R and the feedback (L, L N, N), [j] = [U^{1->j} ... U^{L->j}]^T."""
    L, _, N, _ = feedback.shape
    G_N = weight_recurrent[0].shape[0]
    zeros = bias[0].new_zeros(L)
    full_bias = [torch.cat((b[:G_N], zeros, b[G_N:])) for b in bias]
    return (weight_below[0], full_bias[0], torch.stack(tuple(weight_below[1:])), torch.stack(full_bias[1:]),
            torch.stack(tuple(weight_recurrent)), feedback.permute(1, 0, 3, 2).reshape(L, L * N, N))


def recurrent_matrix(R, u_g, K: int) -> torch.Tensor:
    """(L N, L K): h*_{t-1} times it is every layer's gate terms from the previous step, the
    own state's R (block diagonal) and the u_g terms (zero for the candidate)."""
    L, G_N, N = R.shape
    recurrent = R.new_zeros(L * N, L, K)
    for j in range(L):
        recurrent[j * N : (j + 1) * N, j, :G_N] = R[j].t()
    recurrent[:, :, G_N : G_N + L] = u_g.permute(2, 1, 0)  # [(k, n), j, i] = u_g^{i->j}[(k, n)]
    return recurrent.view(L * N, L * K)


def forward(x, W_first, b_first, W_upper, b_upper, R, u_g, feedback, fixed, lstm, concat):
    """The Python loops, on the fused weights: K = G N + L + N the rows a layer gets
    from below (the G unit-wise gates, the L global gates, the candidate); W_first (K, M)
    and b_first (K) of layer 1; W_upper (L-1, K, N) and b_upper (L-1, K) of layers 2..L;
    R (L, G N, N) the gates' weights on the layer's own state; u_g (L, L, L N), [i, j] =
    u_g^{i->j}; feedback (L, L N, N): [U^{1->j} ... U^{L->j}] transposed.

    As in harness.models.cells: per-step views made once (`steps`, `unbind`), results written
    in place (`out=`), and the weight gradients one product each after the backward loop.
    Returns the output and what `backward` needs (for ctx.save_for_backward).
    """
    T, B, M = x.shape
    L, LN, N = feedback.shape
    K = W_first.shape[0]
    n_gates = K - N  # G N + L: the sigmoid part of a layer's pre-activation
    G_N = n_gates - L
    recurrent = recurrent_matrix(R, u_g, K)
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

    A, gates, candidate = steps(pre), steps(pre, 0, n_gates), steps(pre, n_gates)
    g_learned = steps(pre, G_N, n_gates)
    first, second, third = (steps(pre, k * N, (k + 1) * N) for k in range(3))  # i f o / z r
    h, scaled_t = steps(states), steps(scaled)
    h_all, h_layers = states.view(T + 1, B, LN).unbind(0), states.unbind(0)
    scaled_layers = [[s.view(B, L, N) for s in per_t] for per_t in scaled_t]
    from_previous_j = from_previous[..., :n_gates].unbind(1)
    if lstm:
        c, c_out = steps(cells), steps(cell_out)
    else:
        fb, h_step = steps(fed_back), steps(step)
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
    outputs = states[1:].view(T, B, LN)
    saved = (x, W_first, W_upper, recurrent, feedback, fixed, pre, states, cells, cell_out, scaled, fed_back, step)
    return (outputs.clone() if concat else outputs[..., (L - 1) * N :].clone()), saved



def backward(saved, dY, lstm: bool, concat: bool, needs_dx: bool):
    """The Python loops backward: the gradients of `forward`'s x and weights, from what it
    saved (`saved`, as ctx.saved_tensors gives it back)."""
    (x, W_first, W_upper, recurrent, feedback, fixed, pre, states, cells, cell_out,
     scaled, fed_back, step) = saved
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
    top = slice(0, LN) if concat else slice((L - 1) * N, LN)

    d, d_gates, d_candidate = steps(d_pre), steps(d_pre, 0, n_gates), steps(d_pre, n_gates)
    d_first, d_second, d_third = (steps(d_pre, k * N, (k + 1) * N) for k in range(3))
    dg = steps(d_pre, G_N, n_gates)
    g_learned, candidate = steps(pre, G_N, n_gates), steps(pre, n_gates)
    first, second, third = (steps(pre, k * N, (k + 1) * N) for k in range(3))
    slope_gates, slope_candidate = steps(slope, 0, n_gates), steps(slope, n_gates)
    dfb = steps(d_fed_back)
    h_layers, d_pre_flat = states.unbind(0), d_pre.view(T, B, L * K).unbind(0)
    dY_t = dY.unbind(0)
    if lstm:
        dc_next = x.new_zeros(B, L, N)  # d loss / d c_t through step t + 1
        dc_j = dc_next.unbind(1)
        c, c_out = steps(cells), steps(cell_out)
    else:
        fb, h_step = steps(fed_back), steps(step)
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

    return (dx_of(d_pre, W_first, needs_dx),
            *weight_gradients(x, d_pre, d_fed_back, states, scaled, n_gates - L, L))


def dx_of(d_pre, W_first, needs_dx: bool):
    """d loss / d x from the first layer's pre-activation gradients, or None."""
    T, B, _, K = d_pre.shape
    return torch.mm(d_pre[:, :, 0].reshape(T * B, K), W_first).view(T, B, -1) if needs_dx else None


def weight_gradients(x, d_pre, d_fed_back, states, scaled, G_N: int, L: int):
    """The weight gradients, one product each over the whole sequence once the backward loop
    has its d_pre: dW_first, db_first, dW_upper, db_upper, dR, d u_g ([i, j]) and the fused
    feedback's."""
    T, B, M = x.shape
    K, N = d_pre.shape[3], states.shape[3]
    LN = L * N
    d_first_layer = d_pre[:, :, 0].reshape(T * B, K)
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
    d_u_g = torch.mm(d_pre[..., G_N : G_N + L].reshape(T * B, L * L).t(), h_previous.reshape(T * B, LN))
    d_u_g = d_u_g.view(L, L, LN).transpose(0, 1)  # [j, i] -> [i, j]
    d_feedback = torch.bmm(scaled.permute(2, 3, 0, 1).reshape(L, LN, T * B),
                           d_fed_back.permute(2, 0, 1, 3).reshape(L, T * B, N))
    return dW_first, db_first, dW_upper, db_upper, dR, d_u_g, d_feedback
