"""K trials' networks as one batched computation: the weights of every slot stacked.

Every weight of a slot's SequenceNetwork is a leaf of shape (K, ...) here, in the layer's
own stored layout (so CIFG's tied gates and NIG's missing block stay tied and missing),
with each hidden dimension padded with zeros to the largest hidden size among the slots,
Nmax. Padding is exact: a padded block has zero weights in and out, so its block input,
cell and output stay exactly 0 (c = f * 0 + i * g(0) = 0, y = o * h(0) = 0), it adds
exact zeros to every real unit's sums, and every gradient that reaches a padded weight is
an exact zero, so Nesterov's update keeps it at zero. A slot's numbers are those of its
trial trained alone, up to the order in which floats are summed.

The forward pass is the vanilla peephole LSTM on full z, i, f, o tensors, as in
harness.models.cells (whose docstring has the equations), built from the stored blocks by the
layer's own fixed maps before each pass; it is plain torch with autograd, so the same
code runs on a CPU or a GPU, batched over slots by `torch.bmm`.

Shapes: x (K, T, B, M) (K slots, each its own B sequences; B = 1 while training with
Greff's recipe), lengths (K, B) -> scores (K, T, B, n_outputs).
"""

from __future__ import annotations

import torch

from harness.models.cells import LSTMLayer
from harness.models.networks import SequenceNetwork, reverse_within_lengths

N_DIM = "N"  # a hidden dimension in a leaf's template


def leaf_templates(layer: LSTMLayer) -> dict[str, tuple]:
    """The stored layout of every weight of one direction's layer, with N where padded."""
    nb, P, M = len(layer.blocks), len(layer.peephole_gates), layer.input_size
    templates = {"weight_input": (nb, N_DIM, M), "weight_recurrent": (nb, N_DIM, N_DIM),
                 "bias": (nb, N_DIM), "peephole": (P, N_DIM)}
    if layer.switches.full_gate_recurrence:
        templates["gate_recurrence"] = (3, N_DIM, 3, N_DIM)
    return templates


def padded(tensor: torch.Tensor, template: tuple, hidden: int) -> torch.Tensor:
    """`tensor` (a slot's own, or a stacked (K, ...) one) zero-padded or cropped to
    `hidden` along every N of `template` (leading slot dimensions are left as they are)."""
    lead = tensor.dim() - len(template)
    shape = list(tensor.shape[:lead]) + [hidden if d == N_DIM else d for d in template]
    out = tensor.new_zeros(shape)
    index = [slice(None)] * lead + [slice(0, min(hidden, tensor.shape[lead + k])) if d == N_DIM else slice(None)
                                    for k, d in enumerate(template)]
    out[tuple(index)] = tensor[tuple(index)]
    return out


class SlotModel:
    """What every slot of a stack shares: the model (its switches and fixed maps), the
    task's network shape, and the names and layouts of the weights."""

    def __init__(self, network: SequenceNetwork):
        self.layer = layer = network.forward_layer
        if not isinstance(layer, LSTMLayer):
            raise ValueError(f"lockstep covers the LSTM family, not {network.variant}")
        self.directions = 2 if network.bidirectional else 1
        self.n_outputs = network.readout.weight.shape[0]
        self.templates = {f"{name}{d}": template for d in range(self.directions)
                          for name, template in leaf_templates(layer).items()}
        self.templates["readout_weight"] = (self.n_outputs, self.directions, N_DIM)
        self.templates["readout_bias"] = (self.n_outputs,)

    def weights_of(self, network: SequenceNetwork) -> dict[str, torch.Tensor]:
        """A network's weights in the stored layout, named as the stack's leaves (copies)."""
        layers = [network.forward_layer] + ([network.backward_layer] if network.backward_layer is not None else [])
        N = network.forward_layer.hidden_size
        weights = {}
        for name, template in self.templates.items():
            shape = [N if t == N_DIM else t for t in template]
            if name.startswith("readout_"):
                tensor = getattr(network.readout, name.removeprefix("readout_"))
            else:
                tensor = getattr(layers[int(name[-1])], name[:-1])
            weights[name] = tensor.detach().reshape(shape).clone()
        return weights


class SlotStack:
    """The stacked, padded weights and Nesterov buffers of the slots of one SlotModel.

    `SlotStack(model, slots, device)` with one (weights, momenta or None, hidden size) a
    slot; `forward` runs them all at once; `export(k)` gives slot k's weights and momenta
    back in its own shapes (on the CPU), to build the next stack when slots change.
    """

    def __init__(self, model: SlotModel, slots: list[tuple[dict, dict | None, int]], device: torch.device):
        self.model, self.layer, self.device = model, model.layer, device
        self.directions, self.n_outputs = model.directions, model.n_outputs
        self.hidden_sizes = [N for _, _, N in slots]
        self.hidden = max(self.hidden_sizes)

        def stacked(name: str, pick) -> torch.Tensor:
            template = model.templates[name]
            return torch.stack([padded(pick(weights, momenta)[name], template, self.hidden)
                                for weights, momenta, _ in slots]).to(device)

        self.leaves = {name: stacked(name, lambda w, m: w) for name in model.templates}
        self.momenta = {name: stacked(name, lambda w, m: m if m is not None else
                                      {key: torch.zeros_like(value) for key, value in w.items()})
                        for name in model.templates}
        for leaf in self.leaves.values():
            leaf.requires_grad_(True)
        layer = self.layer
        dtype = self.leaves["readout_bias"].dtype
        self.block_map = layer.block_map.to(device, dtype)
        self.peephole_map = layer.peephole_map.to(device, dtype)
        kept = layer.gate_scale.view(3, -1)[:, 0]  # (3,): 1 for a gate the model has
        self.gate_scale = kept.to(device, dtype).view(3, 1)
        self.gate_shift = (1 - kept).to(device, dtype).view(3, 1)
        self.scaled_gates = not bool(kept.all())
        # FGR feeds the gates of t-1 back, and a padded block's gates are sigma(0) = 1/2, not
        # 0: they enter the recurrent input through this mask, so no gradient reaches the
        # padded columns of the gate recurrence.
        self.units = (torch.arange(self.hidden).unsqueeze(0)
                      < torch.tensor(self.hidden_sizes).unsqueeze(1)).to(device, dtype)  # (K, Nh)

    def export(self, k: int) -> tuple[dict, dict]:
        """Slot k's weights and momenta cropped to its own hidden size (CPU tensors)."""
        N, templates = self.hidden_sizes[k], self.model.templates
        weights = {name: padded(leaf[k].detach(), templates[name], N).cpu() for name, leaf in self.leaves.items()}
        momenta = {name: padded(m[k], templates[name], N).cpu() for name, m in self.momenta.items()}
        return weights, momenta

    # -- the forward pass -----------------------------------------------------------------

    def full_weights(self, d: int, slots: torch.Tensor | None):
        """W (K, 4Nh, M), R (K, 4Nh, n_rec), b (K, 4Nh), p (K, 3, Nh) of direction d."""
        leaf = (lambda name: self.leaves[f"{name}{d}"]) if slots is None else \
            (lambda name: self.leaves[f"{name}{d}"].index_select(0, slots))
        W, R, b, p = leaf("weight_input"), leaf("weight_recurrent"), leaf("bias"), leaf("peephole")
        K, Nh = W.shape[0], self.hidden
        W = torch.einsum("ab,kbnm->kanm", self.block_map, W).reshape(K, 4 * Nh, -1)
        R = torch.einsum("ab,kbnm->kanm", self.block_map, R)  # (K, 4, Nh, Nh)
        b = torch.einsum("ab,kbn->kan", self.block_map, b).reshape(K, 4 * Nh)
        p = torch.einsum("ab,kbn->kan", self.peephole_map, p)  # (K, 3, Nh)
        if f"gate_recurrence{d}" in self.leaves:  # FGR: R acts on [y, i, f, o]
            G = leaf("gate_recurrence")  # (K, 3, Nh, 3, Nh)
            top = torch.cat((R[:, :1], R.new_zeros(K, 1, Nh, 3 * Nh)), dim=3)
            below = torch.cat((R[:, 1:], G.reshape(K, 3, Nh, 3 * Nh)), dim=3)
            R = torch.cat((top, below), dim=1).reshape(K, 4 * Nh, 4 * Nh)
        else:
            R = R.reshape(K, 4 * Nh, Nh)
        return W, R, b, p

    def recurrence(self, x: torch.Tensor, d: int, slots: torch.Tensor | None) -> torch.Tensor:
        """One direction's layer over x (K, T, B, M) -> y (K, T, B, Nh), zero initial state."""
        W, R, b, p = self.full_weights(d, slots)
        K, T, B, M = x.shape
        Nh = self.hidden
        switches = self.layer.switches
        g = torch.tanh if switches.input_activation else (lambda a: a)
        h = torch.tanh if switches.output_activation else (lambda a: a)
        scale, shift = self.gate_scale, self.gate_shift

        def gate(a, rows):  # sigma(a), or scale * sigma(a) + shift where a gate is removed
            value = torch.sigmoid(a)
            return value * scale[rows] + shift[rows] if self.scaled_gates else value

        # the input projection of every frame at once: (K, T*B, 4Nh)
        a_in = torch.baddbmm(b.unsqueeze(1), x.reshape(K, T * B, M), W.transpose(1, 2)).view(K, T, B, 4, Nh)
        R_t = R.transpose(1, 2)
        p_if, p_o = p[:, :2].unsqueeze(1), p[:, 2:].unsqueeze(1)  # (K, 1, 2, Nh), (K, 1, 1, Nh)
        units = (self.units if slots is None else self.units.index_select(0, slots)).view(K, 1, 1, Nh)
        c = x.new_zeros(K, B, Nh)
        recurrent = x.new_zeros(K, B, R.shape[2])
        outputs = []
        for t in range(T):
            a = a_in[:, t] + torch.bmm(recurrent, R_t).view(K, B, 4, Nh)
            i_f = gate(a[:, :, 1:3] + p_if * c.unsqueeze(2), slice(0, 2))  # peepholes on c^{t-1}
            z = g(a[:, :, 0])
            c = c * i_f[:, :, 1] + z * i_f[:, :, 0]
            o = gate(a[:, :, 3:4] + p_o * c.unsqueeze(2), slice(2, 3))  # peephole on the new c^t
            y = h(c) * o[:, :, 0]
            outputs.append(y)
            recurrent = y if R.shape[2] == Nh else torch.cat((y.unsqueeze(2), i_f * units, o * units), dim=2).view(K, B, 4 * Nh)
        return torch.stack(outputs, dim=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (K, T, B, n_outputs) of every slot (or of the slots of index tensor `slots`)."""
        y = self.recurrence(x, 0, slots)
        if self.directions == 2:  # the backward layer reads each sequence reversed within its length
            back = self.recurrence(reverse_time(x, lengths), 1, slots)
            y = torch.cat((y, reverse_time(back, lengths)), dim=3)  # (K, T, B, 2Nh)
        weight = self.leaves["readout_weight"] if slots is None else self.leaves["readout_weight"].index_select(0, slots)
        bias = self.leaves["readout_bias"] if slots is None else self.leaves["readout_bias"].index_select(0, slots)
        K, T, B, width = y.shape
        scores = torch.baddbmm(bias.unsqueeze(1), y.reshape(K, T * B, width),
                               weight.reshape(K, self.n_outputs, width).transpose(1, 2))
        return scores.view(K, T, B, self.n_outputs)

    # -- Greff's update ---------------------------------------------------------------------

    @torch.no_grad()
    def nesterov_(self, step_sizes: torch.Tensor, momenta: torch.Tensor, active: torch.Tensor) -> None:
        """v <- mu v + g, theta <- theta - lr (1 - mu) (g + mu v), for the slots where
        `active` (K,) is True; `step_sizes` is lr (1 - mu) and `momenta` mu, (K,) each."""
        for name, leaf in self.leaves.items():
            grad = leaf.grad
            if grad is None:
                continue
            shape = (-1,) + (1,) * (leaf.dim() - 1)
            mu, lr = momenta.view(shape), step_sizes.view(shape)
            keep = active.view(shape)
            v = self.momenta[name]
            new_v = torch.where(keep, mu * v + grad, v)
            leaf.sub_(torch.where(keep, lr * (grad + mu * new_v), torch.zeros_like(leaf)))
            v.copy_(new_v)
            leaf.grad = None


def reverse_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of x (K, T, B, D) within its own length (lengths (K, B)):
    networks.reverse_within_lengths over the K * B sequences."""
    K, T, B, D = x.shape
    flat = x.transpose(0, 1).reshape(T, K * B, D)
    return reverse_within_lengths(flat, lengths.reshape(K * B)).view(T, K, B, D).transpose(0, 1)
