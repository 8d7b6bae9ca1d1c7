"""The native training step: the LSTM family without autograd.

At Greff et al.'s sizes (one sequence a step, N <= 200) the arithmetic of a step is a few
hundred microseconds, and autograd's graph, the optimizer's per-tensor loop and the
loss's small operations cost as much again. Here a step is a handful of calls into
harness/kernels/lstm.cpp:

    forward    y = LSTM(x) for each direction (the compiled loop, states kept)   (T, B, N)
    read-out   scores = Y Wout^T + bout; loss and d loss / d scores in closed form
               (next_step: sigma(s) - y; framewise: softmax - one-hot; regression:
               2 (s - y)), or, for CTC, torch's ctc_loss on the scores alone
    backward   dY = dS Wout, then backward through time into the gradient buffers
    update     Nesterov momentum over every tensor in one compiled loop:
               v <- mu v + g,  theta <- theta - lr (1 - mu) (g + mu v)

The layer keeps its parameters (and so the weight contract and evaluation through
`network(x)`); the step reads them, and writes its gradients into buffers of the same
shapes. A variant that stores fewer blocks than z, i, f, o (NIG, NFG, NOG, CIFG) or
peepholes than three is mapped to the full layout with the layer's own fixed maps
(`block_map`, `peephole_map`) before the loop, and the gradients back through the
transposed maps; FGR's recurrent matrix gets the gate-recurrence columns appended.
"""

from __future__ import annotations

import torch

from harness import kernels, tasks
from harness.cells import LSTMLayer
from harness.networks import SequenceNetwork, reverse_within_lengths

CLOSED_FORM_TASKS = {"next_step": 0, "framewise": 1, "regression": 2}
TASKS = (*CLOSED_FORM_TASKS, "ctc")


def native_supports(network: SequenceNetwork, task: str) -> str | None:
    """None if the native step can train this network on this task, else what it lacks."""
    if kernels.lstm() is None:
        return "this machine (the compiled loops could not be built)"
    for layer in (network.forward_layer, network.backward_layer):
        if layer is not None and not isinstance(layer, LSTMLayer):
            return f"the {network.variant} cells"
    if task not in TASKS:
        return f"the task {task}"
    return None


class _LayerPlan:
    """How one LSTMLayer's stored parameters map to the compiled loop's full layout."""

    def __init__(self, layer: LSTMLayer, grads: dict[torch.Tensor, torch.Tensor]):
        self.layer = layer
        N, M, K = layer.hidden_size, layer.input_size, len(layer.blocks)
        self.N, self.M, self.K = N, M, K
        self.P = len(layer.peephole_gates)
        eye4 = torch.eye(4, dtype=layer.block_map.dtype)
        self.full_blocks = K == 4 and bool(torch.equal(layer.block_map, eye4))
        self.full_peepholes = self.P == 3 and bool(torch.equal(layer.peephole_map, eye4[1:, 1:]))
        self.gate_recurrence = layer.switches.full_gate_recurrence
        self.g_tanh = layer.switches.input_activation
        self.h_tanh = layer.switches.output_activation
        dtype = layer.weight_input.dtype
        self.scale, self.shift = layer.gate_scale.to(dtype), layer.gate_shift.to(dtype)
        self.grad_W, self.grad_R = grads[layer.weight_input], grads[layer.weight_recurrent]
        self.grad_b, self.grad_p = grads[layer.bias], grads[layer.peephole]
        # Full-layout weights and gradients where they differ from the stored ones.
        full = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
        n_rec = 4 * N if self.gate_recurrence else N
        self.R_full = full(4 * N, n_rec) if self.gate_recurrence or not self.full_blocks else None
        self.gR_full = full(4 * N, n_rec) if self.R_full is not None else self.grad_R
        self.gW_full = self.grad_W if self.full_blocks else full(4 * N, M)
        self.gb_full = self.grad_b if self.full_blocks else full(4 * N)
        self.gp_full = self.grad_p if self.full_peepholes else full(3 * N)
        self.p_zero = full(3 * N) if self.P == 0 else None
        if self.gate_recurrence:
            self.grad_G = grads[layer.gate_recurrence]

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """W (4N, M), R (4N, n_rec), b (4N), p (3N) of the full layout, from the parameters."""
        layer, N, M, K = self.layer, self.N, self.M, self.K
        if self.full_blocks:
            W, b, R = layer.weight_input, layer.bias, layer.weight_recurrent
        else:
            W = (layer.block_map @ layer.weight_input.view(K, N * M)).view(4 * N, M)
            b = (layer.block_map @ layer.bias.view(K, N)).view(4 * N)
            R = (layer.block_map @ layer.weight_recurrent.view(K, N * N)).view(4 * N, N)
        if self.R_full is not None:
            self.R_full[:, :N].copy_(R)
            if self.gate_recurrence:
                self.R_full[N:, N:].copy_(layer.gate_recurrence)
            R = self.R_full
        if self.full_peepholes:
            p = layer.peephole
        elif self.P == 0:
            p = self.p_zero
        else:
            p = (layer.peephole_map @ layer.peephole.view(self.P, N)).view(3 * N)
        return W, R, b, p

    def gradients_to_parameters(self) -> None:
        """Map the full-layout gradients back onto the stored parameters' gradient buffers."""
        layer, N, M, K = self.layer, self.N, self.M, self.K
        gR = self.gR_full[:, :N] if self.R_full is not None else self.gR_full
        if self.full_blocks:
            if self.R_full is not None:
                self.grad_R.copy_(gR)
        else:
            back = layer.block_map.t()  # (K, 4)
            torch.mm(back, self.gW_full.view(4, N * M), out=self.grad_W.view(K, N * M))
            torch.mm(back, self.gb_full.view(4, N), out=self.grad_b.view(K, N))
            torch.mm(back, gR.reshape(4, N * N), out=self.grad_R.view(K, N * N))
        if self.gate_recurrence:
            self.grad_G.copy_(self.gR_full[N:, N:])
        if not self.full_peepholes and self.P > 0:
            torch.mm(layer.peephole_map.t(), self.gp_full.view(3, N), out=self.grad_p.view(self.P, N))


class NativeStep:
    """One update of Greff et al.'s recipe through the compiled LSTM loops (no autograd).

    `step(batch, x)` trains on `batch` with inputs `x` (noise added by the caller) and
    returns the loss (summed over frames) as a 0-dim tensor; a non-finite loss is
    returned without updating the weights, as on the reference path.
    """

    def __init__(self, network: SequenceNetwork, task: str, learning_rate: float, momentum: float):
        reason = native_supports(network, task)
        if reason is not None:
            raise ValueError(f"the native engine does not cover {reason}")
        self.network, self.task = network, task
        self.step_size, self.momentum = learning_rate * (1.0 - momentum), momentum
        self.kernels = kernels.lstm()
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.buffers = [torch.zeros_like(p) for p in self.params]
        by_param = dict(zip(self.params, self.grads))
        self.plans = [_LayerPlan(network.forward_layer, by_param)]
        if network.backward_layer is not None:
            self.plans.append(_LayerPlan(network.backward_layer, by_param))
        self.grad_readout_W = by_param[network.readout.weight]
        self.grad_readout_b = by_param[network.readout.bias]

    @torch.no_grad()
    def __call__(self, batch: tasks.Batch, x: torch.Tensor) -> torch.Tensor:
        compiled, network = self.kernels, self.network
        single = x.shape[1] == 1  # one sequence: no padding, no mask
        inputs = [x] if len(self.plans) == 1 else [x, reverse_within_lengths(x, batch.lengths)]
        runs = []
        for plan, x_in in zip(self.plans, inputs):
            W, R, b, p = plan.weights()
            y, *saved = compiled.forward(x_in, W, R, b, p, plan.scale, plan.shift, plan.g_tanh, plan.h_tanh)
            runs.append((plan, x_in, W, R, p, saved, y))
        if len(runs) == 1:
            Y = runs[0][-1]
        else:
            Y = torch.cat((runs[0][-1], reverse_within_lengths(runs[1][-1], batch.lengths)), dim=2)  # (T, B, 2N)
        Wout, bout = network.readout.weight, network.readout.bias
        if self.task in CLOSED_FORM_TASKS:
            mask = torch.empty(0) if single else batch.mask
            loss, dS = compiled.readout_loss(Y, Wout, bout, batch.y, mask, CLOSED_FORM_TASKS[self.task])
        else:  # ctc: torch's loss on the scores alone
            scores = torch.addmm(bout, Y.view(-1, Y.shape[2]), Wout.t()).view(Y.shape[0], Y.shape[1], -1)
            with torch.enable_grad():
                scores.requires_grad_(True)
                loss = tasks.loss(self.task, scores, batch)
                (dS,) = torch.autograd.grad(loss, scores)
            loss = loss.detach()
        if not torch.isfinite(loss):
            return loss
        dY = compiled.readout_backward(Y, Wout, dS, self.grad_readout_W, self.grad_readout_b)
        N = self.plans[0].N
        for k, (plan, x_in, W, R, p, saved, _) in enumerate(runs):
            dY_layer = dY if len(runs) == 1 else dY[..., k * N : (k + 1) * N]
            if k == 1:
                dY_layer = reverse_within_lengths(dY_layer, batch.lengths)
            compiled.backward_into(dY_layer, x_in, W, R, p, plan.scale, *saved, plan.g_tanh, plan.h_tanh,
                                   plan.gW_full, plan.gR_full, plan.gb_full, plan.gp_full, None)
            plan.gradients_to_parameters()
        compiled.nesterov_(self.params, self.grads, self.buffers, self.step_size, self.momentum)
        return loss
