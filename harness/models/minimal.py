"""The minimal GRU and LSTM of Feng et al. (2024), cells given as classes (docs/cells.md).

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?", arXiv 2410.01201,
section 3, in the symbols of docs/cells.md (x^t has M values, N blocks)::

    minGRU   z^t  = sigma(W_z x^t + b_z)                     update gate
             h~^t = W_h x^t + b_h                            candidate (no activation)
             h^t  = (1 - z^t) * h^{t-1} + z^t * h~^t

    minLSTM  f^t  = sigma(W_f x^t + b_f)                     forget gate
             i^t  = sigma(W_i x^t + b_i)                     input gate
             f'^t = f^t / (f^t + i^t),  i'^t = i^t / (f^t + i^t)   normalised gates
             h^t  = f'^t * h^{t-1} + i'^t * (W_h x^t + b_h)

where W_* are N x M and b_* have N entries; no gate reads the state, and h^0 = 0.

They are odyssey's first cells built through the interface of a cell of one's own
(conf/variant/mingru.yaml: `cell: {_target_: harness.models.minimal.MinGRU}`), which adds the
read-out, the backward direction, initialisation and everything after
(harness.models.cell_class); nothing else in odyssey knows them.

Both cells are h^t = a^t * h^{t-1} + b^t with a^t and b^t computed from x^t alone
(minGRU: a = 1 - z, b = z h~; minLSTM: a = f', b = i' h~), so a whole sequence needs no
time loop. `form` chooses how that recurrence is computed:

- `loop`: one step at a time, T small operations (the reference);
- `scan`: `chunk` frames at a time by cumulative sums. With the decays in log space,
  L^t = sum_{s<=t} log a^s over the chunk (the paper's section 3; log a^t is
  log sigma(-.) or log f - log(f + i), computed without forming a^t),

      h^t = exp(L^t) * (h^{start-1} + sum_{k<=t} exp(-L^k) b^k)

  one cumulative sum a chunk, and one small loop carries the state from chunk to chunk.
  The candidate may have either sign (the paper's log-space scan, log h^t =
  logcumsumexp(...), needs a positive one and changes the candidate to make it so; this
  form does not). A chunk whose decay spans more than `SPAN` nats is split in halves
  (down to single frames), so exp(-L^k) never overflows; the terms it would lose to
  rounding are those that have decayed below float precision in h^t anyway;
- `auto` (the default): `scan` for a batch of at most `SCAN_WIDTH` values a frame
  (batch x N), `loop` above, where each was faster on this project's CPU: the scan
  1.5-1.8x faster at one sequence a step (Greff's recipe), the loop at minibatches
  (docs/cells.md has the figures; `odyssey bench bench.sections=[scan]` measures them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.weights import WeightContract

FORMS = ("auto", "scan", "loop")
# `auto` scans a batch of at most this many values a frame (batch x N) and loops over
# larger ones: where each was faster on this project's CPU (docs/cells.md, bench `scan`).
SCAN_WIDTH = 512


def recurrence_loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h^t = a^t * h^{t-1} + b^t from h^0 = 0, one step at a time; a, b (T, B, N) -> h (T, B, N)."""
    h, states = torch.zeros_like(b[0]), []
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        h = torch.addcmul(b_t, a_t, h)
        states.append(h)
    return torch.stack(states)


# The largest decay, in nats, a chunk may span: exp(60) times a candidate stays far inside
# float32 (3e38), so the sums below never overflow; a chunk that decays more is split.
SPAN = 60.0


def recurrence_scan(log_a: torch.Tensor, b: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """h^t = a^t * h^{t-1} + b^t from h^0 = 0, given log a (<= 0), a chunk of frames at a
    time by cumulative sums (module docstring); log_a, b (T, B, N) -> h (T, B, N)."""
    h_last = torch.zeros_like(b[0])  # (B, N)
    parts = []
    for start in range(0, b.shape[0], chunk):
        h = _scan_chunk(log_a[start : start + chunk], b[start : start + chunk], h_last)
        parts.append(h)
        h_last = h[-1]
    return torch.cat(parts)


def _scan_chunk(log_a: torch.Tensor, b: torch.Tensor, h_last: torch.Tensor) -> torch.Tensor:
    """The frames of one chunk, (C, B, N), from the state before it, (B, N)."""
    if b.shape[0] == 1:
        return torch.addcmul(b, log_a.exp(), h_last)
    L = log_a.cumsum(0)  # (C, B, N), falling: L^t = log of a^start ... a^t
    if L[-1].min() < -SPAN:  # too steep a decay for one sum: two halves
        half = b.shape[0] // 2
        first = _scan_chunk(log_a[:half], b[:half], h_last)
        return torch.cat((first, _scan_chunk(log_a[half:], b[half:], first[-1])))
    # h^t = exp(L^t) (h_last + sum_{k<=t} exp(-L^k) b^k)
    return L.exp() * ((-L).exp().mul(b).cumsum(0) + h_last)


class InputGatedCell(WeightContract, nn.Module):
    """What minGRU, minLSTM and the RG-LRU (harness.models.griffin) share: one input projection
    of every frame (fused rows, in the order of `BLOCKS`), the recurrence by `form`, and
    the weight contract."""

    BLOCKS: tuple[str, ...] = ()

    def __init__(self, input_size: int, hidden_size: int, form: str = "auto", chunk: int = 16):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form={form!r}: choose one of {', '.join(FORMS)}")
        if int(chunk) < 1:
            raise ValueError(f"chunk={chunk!r}: give at least 1 frame")
        self.input_size, self.hidden_size, self.form, self.chunk = input_size, hidden_size, form, int(chunk)
        K = len(self.BLOCKS)
        # odyssey initialises every parameter ~ N(0, init_std^2) after building the cell
        self.weight_input = nn.Parameter(torch.empty(K * hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(K * hidden_size))
        nn.init.normal_(self.weight_input, 0.0, 0.1)
        nn.init.normal_(self.bias, 0.0, 0.1)

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (T, B, M) -> one (T, B, N) pre-activation a block, in the order of BLOCKS."""
        T, B, M = x.shape
        a = torch.addmm(self.bias, x.reshape(T * B, M), self.weight_input.t()).view(T, B, -1)  # (T, B, KN)
        return a.chunk(len(self.BLOCKS), dim=2)

    def recurrence(self, log_a: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        form = self.form
        if form == "auto":
            form = "scan" if b.shape[1] * b.shape[2] <= SCAN_WIDTH else "loop"
        if form == "loop":
            return recurrence_loop(a, b)
        return recurrence_scan(log_a, b, self.chunk)

    def weight_views(self) -> dict[str, torch.Tensor]:
        N = self.hidden_size
        views = {}
        for k, block in enumerate(self.BLOCKS):
            views[f"W_{block}"] = self.weight_input[k * N : (k + 1) * N]
            views[f"b_{block}"] = self.bias[k * N : (k + 1) * N]
        return views

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, form={self.form}, chunk={self.chunk}"


class MinGRU(InputGatedCell):
    """The minimal GRU (Feng et al. 2024)::

        z^t  = sigma(W_z x^t + b_z)
        h~^t = W_h x^t + b_h
        h^t  = (1 - z^t) * h^{t-1} + z^t * h~^t

    where x^t has M values, h^t N; W_* are N x M, b_* N; h^0 = 0. Stored fused:
    `weight_input` (2N, M) and `bias` (2N) with rows z, h. Input x (T, B, M), output
    h (T, B, N). Weights (export_weights): W_z W_h b_z b_h.
    """

    BLOCKS = ("z", "h")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_z, candidate = self.projections(x)  # (T, B, N) each
        z = torch.sigmoid(a_z)
        log_keep = F.logsigmoid(-a_z)  # log(1 - z)
        return self.recurrence(log_keep, 1 - z, z * candidate)


class MinLSTM(InputGatedCell):
    """The minimal LSTM (Feng et al. 2024)::

        f^t  = sigma(W_f x^t + b_f)
        i^t  = sigma(W_i x^t + b_i)
        f'^t = f^t / (f^t + i^t),   i'^t = i^t / (f^t + i^t)
        h^t  = f'^t * h^{t-1} + i'^t * (W_h x^t + b_h)

    where x^t has M values, h^t N; W_* are N x M, b_* N; h^0 = 0. Stored fused:
    `weight_input` (3N, M) and `bias` (3N) with rows f, i, h. Input x (T, B, M), output
    h (T, B, N). Weights (export_weights): W_f W_i W_h b_f b_i b_h.
    """

    BLOCKS = ("f", "i", "h")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_f, a_i, candidate = self.projections(x)  # (T, B, N) each
        log_f, log_i = F.logsigmoid(a_f), F.logsigmoid(a_i)
        log_sum = torch.logaddexp(log_f, log_i)  # log(f + i)
        log_forget = log_f - log_sum  # log f'
        forget, into = log_forget.exp(), (log_i - log_sum).exp()  # f', i'
        return self.recurrence(log_forget, forget, into * candidate)
