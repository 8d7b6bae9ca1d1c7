"""The native training step: compiled loops called directly, no autograd graph.

At Greff et al.'s sizes (one sequence a step, N <= 200) the arithmetic of a step is a few
hundred microseconds, and autograd's graph, the optimizer's per-tensor loop and the
loss's small operations cost as much again. Here a step is a handful of calls into
harness/kernels/lstm.cpp (and ctc.cpp):

    forward    y = LSTM(x) for each direction (the compiled loop, states kept)   (T, B, N)
    read-out   scores = Y Wout^T + bout; loss and d loss / d scores in closed form
               (next_step: sigma(s) - y; framewise: softmax - one-hot; regression:
               2 (s - y)), or, for CTC, the forward-backward algorithm of
               harness/kernels/ctc.cpp (torch's ctc_loss where it could not be built)
    backward   dY = dS Wout, then backward through time into the gradient buffers
    update     Greff's recipe: Nesterov momentum over every tensor in one compiled loop,
               v <- mu v + g,  theta <- theta - lr (1 - mu) (g + mu v);
               any other recipe (harness.training.recipes): its torch.optim optimizer, which
               reads the gradient buffers as the parameters' .grad

The layer keeps its parameters (and so the weight contract and evaluation through
`network(x)`); the step reads them, and writes its gradients into buffers of the same
shapes. A variant that stores fewer blocks than z, i, f, o (NIG, NFG, NOG, CIFG) or
fewer peepholes than three is mapped to the full layout with the layer's own fixed maps
(`block_map`, `peephole_map`) before the loop, and the gradients back through the
transposed maps; FGR's recurrent matrix gets the gate-recurrence columns appended.
The GRU and the GF-RNN stacks run their own compiled loops through their autograd
functions (GRURecurrence, GatedFeedbackRecurrence: a one-node graph a layer), with the
read-out, loss and update as above.
"""

from __future__ import annotations

import math

import torch

from harness import kernels
from harness.models.cell_class import CellClass
from harness.models.cells import LSTMLayer
from harness.models.networks import SequenceNetwork, reverse_within_lengths
from harness.training import tasks
from harness.training.recipes import Recipe

CLOSED_FORM_TASKS = {"next_step": 0, "framewise": 1, "regression": 2}
TASKS = (*CLOSED_FORM_TASKS, "ctc")


def native_supports(network: SequenceNetwork, task: str) -> str | None:
    """None if the native step can train this network on this task, else what it lacks."""
    if isinstance(network.forward_layer, CellClass):  # asked first: a class needs no compiled loops built
        return f"the model {network.variant}, a cell given as a class (cell: _target_)"
    if kernels.lstm() is None:
        return "this machine (the compiled loops could not be built)"
    if task not in TASKS:
        return f"the task {task}"
    return None


class _AutogradLayerPlan:
    """A layer that is not an LSTMLayer: its own autograd function (compiled loops inside)."""

    def __init__(self, layer, grads: dict[torch.Tensor, torch.Tensor]):
        self.layer = layer
        self.params = [p for p in layer.parameters() if p.requires_grad]
        self.grads = [grads[p] for p in self.params]

    def forward(self, x: torch.Tensor):
        with torch.enable_grad():
            y = self.layer(x)
        return y.detach(), y

    def backward(self, dY: torch.Tensor, y) -> None:
        with torch.enable_grad():
            grads = torch.autograd.grad(y, self.params, dY, allow_unused=True)
        for buffer, grad in zip(self.grads, grads):
            if grad is None:
                buffer.zero_()
            else:
                buffer.copy_(grad)


class _LSTMLayerPlan:
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
        def full(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype)

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
            if self.gate_recurrence:  # [R | 0 over G]: acts on [y, i, f, o]
                self.R_full[:, :N].copy_(R)
                self.R_full[N:, N:].copy_(layer.gate_recurrence)
                R = self.R_full
        else:  # the mapped blocks straight into the full-layout buffer (no gate recurrence here)
            W = (layer.block_map @ layer.weight_input.view(K, N * M)).view(4 * N, M)
            b = (layer.block_map @ layer.bias.view(K, N)).view(4 * N)
            torch.mm(layer.block_map, layer.weight_recurrent.view(K, N * N), out=self.R_full.view(4, N * N))
            R = self.R_full
        if self.full_peepholes:
            p = layer.peephole
        elif self.P == 0:
            p = self.p_zero
        else:
            p = (layer.peephole_map @ layer.peephole.view(self.P, N)).view(3 * N)
        return W, R, b, p

    def forward(self, x: torch.Tensor):
        W, R, b, p = self.weights()
        y, *saved = kernels.lstm().forward(x, W, R, b, p, self.scale, self.shift, self.g_tanh, self.h_tanh)
        return y, (x, W, R, p, saved)

    def fused_tensors(self) -> list[torch.Tensor]:
        """This direction's 10 tensors for the kernels' FusedStep: W R b p (refreshed each step
        by `weights()` where the gradients are mapped), gate scale and shift, and the
        full-layout gradient buffers."""
        return [*(w.contiguous() for w in self.weights()), self.scale, self.shift, self.gW_full, self.gR_full,
                self.gb_full, self.gp_full]

    @property
    def maps_gradients(self) -> bool:
        """Whether the full-layout gradients differ from the parameters' buffers (gradients_to_parameters)."""
        return not (self.full_blocks and self.R_full is None and self.full_peepholes)

    def backward(self, dY: torch.Tensor, context) -> None:
        x, W, R, p, saved = context
        kernels.lstm().backward_into(dY, x, W, R, p, self.scale, *saved, self.g_tanh, self.h_tanh,
                                     self.gW_full, self.gR_full, self.gb_full, self.gp_full, None)
        self.gradients_to_parameters()

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


def _plan_for(layer, grads: dict[torch.Tensor, torch.Tensor]):
    return (_LSTMLayerPlan if isinstance(layer, LSTMLayer) else _AutogradLayerPlan)(layer, grads)


class NativeStep:
    """One update of a recipe through the compiled loops (see the module docstring).

    `step(batch, x)` trains on `batch` with inputs `x` (noise added by the caller) and
    returns the loss (summed over frames) as a float; a non-finite loss is returned
    without updating the weights, as on the reference path.

    One sequence of an LSTM network on a closed-form task (Greff's recipe on JSB and
    TIMIT) takes the fused path: forward, loss and backward of every direction in one
    call (the kernels' `FusedStep`), Greff's update included where nothing comes between. Other batches take the phases
    below one by one (`forward`, `loss`, `backward`, `update`), as harness.bench.split
    times them; both compute the same gradients (tests/test_engine.py runs both).
    """

    def __init__(self, network: SequenceNetwork, task: str, recipe: Recipe):
        reason = native_supports(network, task)
        if reason is not None:
            raise ValueError(f"the native engine does not cover {reason}")
        self.network, self.task = network, task
        self.kernels = kernels.lstm()
        self.ctc = kernels.ctc() if task == "ctc" else None
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.grads = [torch.zeros_like(p) for p in self.params]
        for p, grad in zip(self.params, self.grads):  # the optimizers read the buffers
            p.grad = grad
        self.update = recipe.update(self.params, compiled=self.kernels)
        by_param = dict(zip(self.params, self.grads))
        self.plans = [_plan_for(layer, by_param) for layer in (network.forward_layer, network.backward_layer)
                      if layer is not None]
        self.grad_readout_W = by_param[network.readout.weight]
        self.grad_readout_b = by_param[network.readout.bias]
        self.fused = None
        if task in CLOSED_FORM_TASKS and all(isinstance(plan, _LSTMLayerPlan) for plan in self.plans):
            self.mapped = [plan for plan in self.plans if plan.maps_gradients]
            # Greff's update inside the fused call, unless gradients are mapped or clipped first
            self.update_in_step = (self.update.compiled is not None and self.update.recipe.max_grad_norm is None
                                   and not self.mapped)
            lists = (self.params, self.grads, self.update.buffers) if self.update_in_step else ([], [], [])
            readout = network.readout
            with torch.no_grad():
                directions = [t for plan in self.plans for t in plan.fused_tensors()]
            self.fused = self.kernels.FusedStep(
                directions,
                [flag for plan in self.plans for flag in (plan.g_tanh, plan.h_tanh)], readout.weight, readout.bias,
                self.grad_readout_W, self.grad_readout_b, CLOSED_FORM_TASKS[task], *lists)

    @torch.no_grad()
    def __call__(self, batch: tasks.Batch, x: torch.Tensor) -> float:
        if self.fused is not None and x.shape[1] == 1:
            if self.update_in_step:
                return self.fused.step(x, batch.y, [], self.update.step_size, self.update.recipe.momentum)
            weights = [w for plan in self.plans for w in plan.weights()] if self.mapped else []
            loss = self.fused.step(x, batch.y, weights, -1.0, 0.0)
            if math.isfinite(loss):
                for plan in self.mapped:
                    plan.gradients_to_parameters()
                self.update()
            return loss
        Y, runs = self.forward(batch, x)
        loss, dS = self.loss(Y, batch)
        if not torch.isfinite(loss):
            return float(loss)
        self.backward(Y, dS, runs, batch)
        self.update()
        return float(loss)

    # The phases of a step, in order (harness.bench.split times them one by one).

    def forward(self, batch: tasks.Batch, x: torch.Tensor):
        """Y (T, B, H) of both directions, and each direction's (y, context) for the backward pass."""
        inputs = [x] if len(self.plans) == 1 else [x, reverse_within_lengths(x, batch.lengths)]
        runs = [plan.forward(x_in) for plan, x_in in zip(self.plans, inputs)]  # (y, context)
        if len(runs) == 1:
            return runs[0][0], runs
        return torch.cat((runs[0][0], reverse_within_lengths(runs[1][0], batch.lengths)), dim=2), runs  # (T, B, 2H)

    def loss(self, Y: torch.Tensor, batch: tasks.Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The read-out's scores, the loss summed over the batch and d loss / d scores (T, B, K)."""
        network = self.network
        Wout, bout = network.readout.weight, network.readout.bias
        if self.task in CLOSED_FORM_TASKS:
            mask = torch.empty(0) if Y.shape[1] == 1 else batch.mask  # one sequence: no padding
            return self.kernels.readout_loss(Y, Wout, bout, batch.y, mask, CLOSED_FORM_TASKS[self.task])
        scores = torch.addmm(bout, Y.view(-1, Y.shape[2]), Wout.t()).view(Y.shape[0], Y.shape[1], -1)
        if self.ctc is not None:  # ctc: the compiled forward-backward (harness/kernels/ctc.cpp)
            losses, dS = self.ctc.ctc_loss(scores, batch.y, batch.lengths, batch.target_lengths)
            return losses.sum(), dS
        with torch.enable_grad():  # ctc without its compiled kernel: torch's loss on the scores alone
            scores.requires_grad_(True)
            loss = tasks.loss(self.task, scores, batch)
            (dS,) = torch.autograd.grad(loss, scores)
        return loss.detach(), dS

    def backward(self, Y: torch.Tensor, dS: torch.Tensor, runs, batch: tasks.Batch) -> None:
        """Gradients of every weight into the buffers, from d loss / d scores."""
        dY = self.kernels.readout_backward(Y, self.network.readout.weight, dS, self.grad_readout_W,
                                           self.grad_readout_b)
        width = runs[0][0].shape[2]
        for k, (plan, (_, context)) in enumerate(zip(self.plans, runs)):
            dY_layer = dY if len(runs) == 1 else dY[..., k * width : (k + 1) * width]
            if k == 1:
                dY_layer = reverse_within_lengths(dY_layer, batch.lengths)
            plan.backward(dY_layer.contiguous(), context)


class NativeForward:
    """The network's scores (T, B, K) of a batch through the compiled loops called
    directly, without autograd: the forward of evaluation (validation and test).

    Up to N = `SLICED_UP_TO` blocks the batch is scored in slices of at most `SLICE`
    sequences, each cut to its own longest sequence: up to that batch size the compiled
    loops use their own small products (harness/kernels/loops.h) instead of a call into
    ATen a time step, and evaluation's batches are sorted by length, so a slice carries
    little padding. Larger layers take the whole batch at once, where ATen's product reads
    the recurrent matrix (4N x N) once a step for all sequences. Measured in CPU time on
    the validation splits of JSB, timit_like and handwriting_like (2026-12-03), slices
    against the whole batch: 1.2-1.5x faster at N=20, 1.1-1.15x at N=100, 0.85-0.9x at
    N=200. Scores past a sequence's end are zero (the metrics never read them).
    """

    SLICE = 4  # kSmallBatch of harness/kernels/loops.h
    SLICED_UP_TO = 128

    def __init__(self, network: SequenceNetwork):
        self.network = network
        hidden_size = getattr(network.forward_layer, "hidden_size", 0)
        self.slice = self.SLICE if hidden_size <= self.SLICED_UP_TO else None
        layers = [layer for layer in (network.forward_layer, network.backward_layer) if layer is not None]
        # an LSTMLayer's plan maps its weights to the full layout (its gradient buffers stay unused)
        self.runs = [_LSTMLayerPlan(layer, {p: torch.zeros_like(p) for p in layer.parameters()}).forward
                     if isinstance(layer, LSTMLayer) else (lambda x, layer=layer: (layer(x), None))
                     for layer in layers]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        readout = self.network.readout
        T, B = x.shape[:2]
        scores = x.new_zeros(T, B, readout.out_features)
        size = self.slice or B
        for start in range(0, B, size):
            end = min(B, start + size)
            within = lengths[start:end]
            steps = int(within.max())
            x_slice = x[:steps, start:end].contiguous()
            Y = self.runs[0](x_slice)[0]  # (steps, b, N)
            if len(self.runs) == 2:
                backward = self.runs[1](reverse_within_lengths(x_slice, within))[0]
                Y = torch.cat((Y, reverse_within_lengths(backward, within)), dim=2)  # (steps, b, 2N)
            flat = torch.addmm(readout.bias, Y.reshape(-1, Y.shape[2]), readout.weight.t())
            scores[:steps, start:end] = flat.view(steps, end - start, -1)
        return scores
