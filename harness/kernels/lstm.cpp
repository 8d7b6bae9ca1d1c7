// The time loops of harness.models.cells.LSTMRecurrence in C++: the same equations as the Python
// loops beside them (cells.py), which stay the reference and the fallback. At Greff et
// al.'s sizes (batch 1, N <= 200) nearly all of the Python loops' time is the cost of
// calling small tensor operations, so here each step is one matrix product (a loop of our
// own for a batch of up to 4 sequences, ATen's above) and one plain loop over the B x N
// blocks for everything elementwise (which the compiler vectorises: see fast_exp). The
// rest of the file serves the native engine (harness.training.engine.native): the backward pass
// into given gradient buffers, the read-out's loss and gradient, the Nesterov update.
//
// Inputs are the full fused tensors of cells.py: x (T, B, M); W (4N, M), b (4N), rows
// z, i, f, o; R (4N, n_rec) acting on u^{t-1} = [y] or [y, i, f, o] (full gate recurrence);
// p (3N) peepholes of i, f, o; gate = scale * sigma(a) + shift (exactly 1 where removed).
// The activations g and h (tanh or identity) are template arguments, chosen once.
#include <torch/extension.h>

#include "loops.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

using at::Tensor;

namespace {

// fast_exp, sigmoid and tanh_ in plain arithmetic (loops.h, shared with the GRU and GF-RNN
// loops), so that the compiler can vectorise the loops over the blocks.
using odyssey::fast_exp;
using odyssey::sigmoid;
template <typename T, bool is_tanh> inline T activate(T a) {
  if constexpr (is_tanh) return odyssey::tanh_(a);
  else return a;
}
// d act(a) / da, from the value v = act(a)
template <typename T, bool is_tanh> inline T activation_slope(T v) { return is_tanh ? T(1) - v * v : T(1); }

// One row (one sequence of the batch) of a forward step. Every block has a pointer of its
// own, marked __restrict, so that the compiler may vectorise the loop over the blocks.
template <typename T, bool g_tanh, bool h_tanh>
void forward_row(int64_t N, const T* __restrict a_z, const T* __restrict a_i, const T* __restrict a_f,
                 const T* __restrict a_o, const T* __restrict c_prev, const T* __restrict p_i,
                 const T* __restrict p_f, const T* __restrict p_o, const T* __restrict scale_i,
                 const T* __restrict scale_f, const T* __restrict scale_o, const T* __restrict shift_i,
                 const T* __restrict shift_f, const T* __restrict shift_o, T* __restrict z, T* __restrict c,
                 T* __restrict hc, T* __restrict y, T* __restrict i_out, T* __restrict f_out,
                 T* __restrict o_out) {
  for (int64_t n = 0; n < N; ++n) {
    const T i = scale_i[n] * sigmoid(a_i[n] + p_i[n] * c_prev[n]) + shift_i[n];
    const T f = scale_f[n] * sigmoid(a_f[n] + p_f[n] * c_prev[n]) + shift_f[n];
    const T zn = activate<T, g_tanh>(a_z[n]);
    const T cn = c_prev[n] * f + zn * i;
    const T o = scale_o[n] * sigmoid(a_o[n] + p_o[n] * cn) + shift_o[n];
    const T hn = activate<T, h_tanh>(cn);
    z[n] = zn;
    c[n] = cn;
    hc[n] = hn;
    y[n] = hn * o;
    i_out[n] = i;
    f_out[n] = f;
    o_out[n] = o;
  }
}

// One row of a backward step: d loss / d pre-activations from the gradient of y^t and c^t.
template <typename T, bool g_tanh, bool h_tanh>
void backward_row(int64_t N, const T* __restrict i_in, const T* __restrict f_in, const T* __restrict o_in,
                  const T* __restrict c_prev, const T* __restrict z, const T* __restrict hc,
                  const T* __restrict dy_out, const T* __restrict dy_rec, const T* __restrict dg_i,
                  const T* __restrict dg_f, const T* __restrict dg_o, const T* __restrict p_i,
                  const T* __restrict p_f, const T* __restrict p_o, const T* __restrict scale_i,
                  const T* __restrict scale_f, const T* __restrict scale_o, T* __restrict dc_next,
                  T* __restrict da_z, T* __restrict da_i, T* __restrict da_f, T* __restrict da_o) {
  for (int64_t n = 0; n < N; ++n) {
    const T i = i_in[n], f = f_in[n], o = o_in[n];
    const T dy = dy_out[n] + dy_rec[n];
    const T d_o = (dg_o[n] + dy * hc[n]) * scale_o[n] * o * (T(1) - o);
    const T dc = dc_next[n] + dy * o * activation_slope<T, h_tanh>(hc[n]) + d_o * p_o[n];
    const T d_i = (dg_i[n] + dc * z[n]) * scale_i[n] * i * (T(1) - i);
    const T d_f = (dg_f[n] + dc * c_prev[n]) * scale_f[n] * f * (T(1) - f);
    da_z[n] = dc * i * activation_slope<T, g_tanh>(z[n]);
    da_i[n] = d_i;
    da_f[n] = d_f;
    da_o[n] = d_o;
    dc_next[n] = dc * f + d_i * p_i[n] + d_f * p_f[n];
  }
}

// The recurrent products of one step for a small batch (Greff's recipe trains on one
// sequence at a time), without a call into ATen: at these sizes (4N x N, N <= 200) the
// call costs more than the arithmetic. Both are the axpy loops of loops.h over contiguous
// rows, four rows at a time; the matrix (at most 640 KB) stays in L2.
//   a (cols) += sum_j u[j] * M[j, :]     with M (rows, cols) row-major
template <typename T>
void add_vector_matrix(int64_t rows, int64_t cols, const T* __restrict M, const T* __restrict u,
                       T* __restrict a) {
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) {
    const T* m = M + j * cols;
    odyssey::add_four_rows<T>(cols, u[j], u[j + 1], u[j + 2], u[j + 3], m, m + cols, m + 2 * cols, m + 3 * cols, a);
  }
  for (; j < rows; ++j) odyssey::add_row<T>(cols, u[j], M + j * cols, a);
}
template <typename T>
void vector_matrix(int64_t rows, int64_t cols, const T* __restrict M, const T* __restrict u, T* __restrict out) {
  for (int64_t k = 0; k < cols; ++k) out[k] = T(0);
  add_vector_matrix(rows, cols, M, u, out);
}
using odyssey::kSmallBatch;  // up to this batch, the loops above; above it, ATen's GEMM

//   out (rows) = M u    with M (rows, cols) row-major: dot products with M's rows, four at a
// time in SIMD registers (loops.h's product_transposed on pointers). The backward step's
// d u = R^T da reads R's transposed copy (the forward's) this way: measured faster at
// N = 100 than summing R's rows scaled by da (harness.bench.floor's two forms).
template <typename T>
void matrix_vector(int64_t rows, int64_t cols, const T* __restrict M, const T* __restrict u, T* __restrict out) {
  using V = typename odyssey::Simd<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const int64_t whole = cols - cols % W;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* m0 = M + r * cols;
    const T *m1 = m0 + cols, *m2 = m1 + cols, *m3 = m2 + cols;
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < whole; i += W) {
      const V v = odyssey::load(u + i);
      a0 += odyssey::load(m0 + i) * v;
      a1 += odyssey::load(m1 + i) * v;
      a2 += odyssey::load(m2 + i) * v;
      a3 += odyssey::load(m3 + i) * v;
    }
    T s0 = odyssey::lane_sum<T>(a0), s1 = odyssey::lane_sum<T>(a1), s2 = odyssey::lane_sum<T>(a2),
      s3 = odyssey::lane_sum<T>(a3);
    for (int64_t i = whole; i < cols; ++i) {
      s0 += m0[i] * u[i];
      s1 += m1[i] * u[i];
      s2 += m2[i] * u[i];
      s3 += m3[i] * u[i];
    }
    out[r] = s0, out[r + 1] = s1, out[r + 2] = s2, out[r + 3] = s3;
  }
  for (; r < rows; ++r) {
    const T* m = M + r * cols;
    V a = {};
    for (int64_t i = 0; i < whole; i += W) a += odyssey::load(m + i) * odyssey::load(u + i);
    T sum = odyssey::lane_sum<T>(a);
    for (int64_t i = whole; i < cols; ++i) sum += m[i] * u[i];
    out[r] = sum;
  }
}

// R's transposed copy (n_rec, 4N) for the small-batch loops, or a view for ATen's product.
inline Tensor transposed(const Tensor& R, int64_t B) { return B <= kSmallBatch ? R.t().contiguous() : R.t(); }

template <typename T, bool g_tanh, bool h_tanh>
void forward_loop(Tensor& a, Tensor& states, Tensor& cells, Tensor& block_input, Tensor& cell_output,
                  const Tensor& R_t, const Tensor& p, const Tensor& scale, const Tensor& shift) {
  const int64_t steps = a.size(0), B = a.size(1), N = a.size(2) / 4, n_rec = R_t.size(0);
  const bool small = B <= kSmallBatch;
  const T* __restrict Rt = R_t.data_ptr<T>();
  // per-step views for ATen's product (large batches only: making them costs ~1 us a step)
  const auto a_t = small ? std::vector<Tensor>() : a.unbind(0);
  const auto recurrent_in = small ? std::vector<Tensor>() : states.narrow(2, 0, n_rec).unbind(0);
  const T* __restrict pp = p.data_ptr<T>();
  const T* __restrict sc = scale.data_ptr<T>();
  const T* __restrict sh = shift.data_ptr<T>();
  T* S = states.data_ptr<T>();
  T* C = cells.data_ptr<T>();
  T* Z = block_input.data_ptr<T>();
  T* H = cell_output.data_ptr<T>();
  T* A_all = a.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    T* A = A_all + t * B * 4 * N;
    if (small) {  // a += R u^{t-1}, row by row
      for (int64_t b = 0; b < B; ++b) add_vector_matrix<T>(n_rec, 4 * N, Rt, S + (t * B + b) * 4 * N, A + b * 4 * N);
    } else {
      a_t[t].addmm_(recurrent_in[t], R_t);
    }
    for (int64_t b = 0; b < B; ++b) {
      const T* __restrict ab = A + b * 4 * N;
      T* __restrict s = S + ((t + 1) * B + b) * 4 * N;  // [y, i, f, o] of step t
      const T* __restrict c_prev = C + (t * B + b) * N;
      T* __restrict c = C + ((t + 1) * B + b) * N;
      T* __restrict z = Z + (t * B + b) * N;
      T* __restrict hc = H + (t * B + b) * N;
      forward_row<T, g_tanh, h_tanh>(N, ab, ab + N, ab + 2 * N, ab + 3 * N, c_prev, pp, pp + N, pp + 2 * N, sc,
                                     sc + N, sc + 2 * N, sh, sh + N, sh + 2 * N, z, c, hc, s, s + N, s + 2 * N,
                                     s + 3 * N);
    }
  }
}

template <typename T, bool g_tanh, bool h_tanh>
void backward_loop(const Tensor& dY, Tensor& dA, const Tensor& states, const Tensor& cells,
                   const Tensor& block_input, const Tensor& cell_output, const Tensor& R, const Tensor& R_t,
                   const Tensor& p, const Tensor& scale) {
  const int64_t steps = dY.size(0), B = dY.size(1), N = dY.size(2), n_rec = R.size(1);
  const bool gate_recurrence = n_rec == 4 * N;
  Tensor d_recurrent = at::zeros({B, n_rec}, dY.options());  // d loss / d u^t through step t + 1
  Tensor no_gate_gradient = at::zeros({B, 3 * N}, dY.options());
  Tensor dc_next = at::zeros({B, N}, dY.options());
  const bool small = B <= kSmallBatch;
  const auto da_t = small ? std::vector<Tensor>() : dA.unbind(0);
  T* DA = dA.data_ptr<T>();
  const T* pp = p.data_ptr<T>();
  const T* sc = scale.data_ptr<T>();
  const T* S = states.data_ptr<T>();
  const T* C = cells.data_ptr<T>();
  const T* Z = block_input.data_ptr<T>();
  const T* H = cell_output.data_ptr<T>();
  const T* G = dY.data_ptr<T>();
  const T* Rp = R.data_ptr<T>();  // (4N, n_rec), contiguous
  const T* Rtp = small && R_t.defined() ? R_t.data_ptr<T>() : nullptr;  // (n_rec, 4N): the dot form
  T* DR = d_recurrent.data_ptr<T>();
  T* DC = dc_next.data_ptr<T>();
  // the gate part of d u^t: from R's gate columns (FGR), else zero
  const T* DG = gate_recurrence ? DR + N : no_gate_gradient.data_ptr<T>();
  const int64_t dg_stride = gate_recurrence ? n_rec : 3 * N;
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* D = DA + t * B * 4 * N;
    for (int64_t b = 0; b < B; ++b) {
      const T* s = S + ((t + 1) * B + b) * 4 * N;
      const T* c_prev = C + (t * B + b) * N;
      const T* z = Z + (t * B + b) * N;
      const T* hc = H + (t * B + b) * N;
      const T* dy_out = G + (t * B + b) * N;
      const T* dy_rec = DR + b * n_rec;
      const T* dg = DG + b * dg_stride;
      T* dc_n = DC + b * N;
      T* d = D + b * 4 * N;
      backward_row<T, g_tanh, h_tanh>(N, s + N, s + 2 * N, s + 3 * N, c_prev, z, hc, dy_out, dy_rec, dg, dg + N,
                                      dg + 2 * N, pp, pp + N, pp + 2 * N, sc, sc + N, sc + 2 * N, dc_n, d, d + N,
                                      d + 2 * N, d + 3 * N);
    }
    if (small) {
      for (int64_t b = 0; b < B; ++b) {
        if (Rtp) matrix_vector<T>(n_rec, 4 * N, Rtp, D + b * 4 * N, DR + b * n_rec);
        else vector_matrix<T>(4 * N, n_rec, Rp, D + b * 4 * N, DR + b * n_rec);
      }
    } else {
      at::mm_out(d_recurrent, da_t[t], R);
    }
  }
}

template <typename T, typename Fn> void by_activations(bool g_tanh, bool h_tanh, Fn&& run) {
  if (g_tanh && h_tanh) run(std::integral_constant<bool, true>(), std::integral_constant<bool, true>());
  else if (g_tanh) run(std::integral_constant<bool, true>(), std::integral_constant<bool, false>());
  else if (h_tanh) run(std::integral_constant<bool, false>(), std::integral_constant<bool, true>());
  else run(std::integral_constant<bool, false>(), std::integral_constant<bool, false>());
}

}  // namespace

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& W, const Tensor& R, const Tensor& b,
                                 const Tensor& p, const Tensor& scale, const Tensor& shift, bool g_tanh,
                                 bool h_tanh) {
  const int64_t T = x.size(0), B = x.size(1), M = x.size(2), N = W.size(0) / 4;
  Tensor a = at::addmm(b, x.reshape({T * B, M}), W.t()).view({T, B, 4 * N});  // input projection
  Tensor states = at::zeros({T + 1, B, 4 * N}, x.options());
  Tensor cells = at::zeros({T + 1, B, N}, x.options());
  Tensor block_input = at::empty({T, B, N}, x.options());
  Tensor cell_output = at::empty({T, B, N}, x.options());
  const Tensor R_t = transposed(R.contiguous(), B), pc = p.contiguous(), sc = scale.contiguous(),
               sh = shift.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    by_activations<scalar_t>(g_tanh, h_tanh, [&](auto g, auto h) {
      forward_loop<scalar_t, decltype(g)::value, decltype(h)::value>(a, states, cells, block_input,
                                                                      cell_output, R_t, pc, sc, sh);
    });
  });
  return {states.narrow(0, 1, T).narrow(2, 0, N).clone(), states, cells, block_input, cell_output};
}

// The weight gradients after the backward loop, written into the given tensors (the
// native engine passes its gradient buffers; `lstm_backward` fresh ones).
void lstm_backward_into(const Tensor& dY_in, const Tensor& x, const Tensor& W, const Tensor& R,
                        const Tensor& p, const Tensor& scale, const Tensor& states, const Tensor& cells,
                        const Tensor& block_input, const Tensor& cell_output, bool g_tanh, bool h_tanh,
                        Tensor dW, Tensor dR, Tensor db, Tensor dp, std::optional<Tensor> dx) {
  const int64_t T = x.size(0), B = x.size(1), M = x.size(2), N = W.size(0) / 4, n_rec = R.size(1);
  const Tensor dY = dY_in.contiguous();
  Tensor dA = at::empty({T, B, 4 * N}, x.options());  // d loss / d pre-activations z, i, f, o
  const Tensor Rc = R.contiguous(), pc = p.contiguous(), sc = scale.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_backward", [&] {
    by_activations<scalar_t>(g_tanh, h_tanh, [&](auto g, auto h) {
      backward_loop<scalar_t, decltype(g)::value, decltype(h)::value>(dY, dA, states, cells, block_input,
                                                                       cell_output, Rc, Tensor(), pc, sc);
    });
  });
  const Tensor dA_flat = dA.view({T * B, 4 * N});
  if (dx.has_value() && dx->defined()) at::mm_out(*dx, dA_flat, W);
  at::mm_out(dW, dA_flat.t(), x.reshape({T * B, M}));
  at::mm_out(dR, dA_flat.t(), states.narrow(0, 0, T).narrow(2, 0, n_rec).reshape({T * B, n_rec}));
  at::sum_out(db, dA_flat, {0});
  if (dp.numel() > 0) {
    Tensor dp_if = dp.narrow(0, 0, 2 * N).view({2, N}), dp_o = dp.narrow(0, 2 * N, N);
    at::sum_out(dp_if, dA.narrow(2, N, 2 * N).reshape({T, B, 2, N}) * cells.narrow(0, 0, T).unsqueeze(2), {0, 1});
    at::sum_out(dp_o, dA.narrow(2, 3 * N, N) * cells.narrow(0, 1, T), {0, 1});
  }
}

std::vector<Tensor> lstm_backward(const Tensor& dY, const Tensor& x, const Tensor& W, const Tensor& R,
                                  const Tensor& p, const Tensor& scale, const Tensor& states,
                                  const Tensor& cells, const Tensor& block_input, const Tensor& cell_output,
                                  bool g_tanh, bool h_tanh, bool need_dx) {
  const int64_t T = x.size(0), B = x.size(1), M = x.size(2);
  Tensor dx = need_dx ? at::empty({T * B, M}, x.options()) : Tensor();
  Tensor dW = at::empty_like(W), dR = at::empty_like(R), db = at::empty({W.size(0)}, x.options());
  Tensor dp = at::empty_like(p);
  lstm_backward_into(dY, x, W, R, p, scale, states, cells, block_input, cell_output, g_tanh, h_tanh, dW, dR,
                     db, dp, dx);
  return {need_dx ? dx.view({T, B, M}) : dx, dW, dR, db, dp};
}

// -- the rest of a training step (harness.training.engine.native) -------------------------------

// The read-out's backward: dY = dS Wout; gradients of Wout and bout into gW, gb.
// Y (T, B, H), dS (T, B, K), Wout (K, H).
Tensor readout_backward(const Tensor& Y, const Tensor& Wout, const Tensor& dS, Tensor gW, Tensor gb) {
  const int64_t T = Y.size(0), B = Y.size(1), H = Y.size(2), K = Wout.size(0);
  const Tensor Y2 = Y.reshape({T * B, H}), dS2 = dS.reshape({T * B, K});
  at::mm_out(gW, dS2.t(), Y2);
  at::sum_out(gb, dS2, {0});
  return at::mm(dS2, Wout).view({T, B, H});
}

// Scores, loss (summed over real frames) and d loss / d scores of the closed-form tasks,
// the same quantities as harness.training.tasks.loss: task 0 next_step (Bernoulli NLL of the
// targets, from logits), 1 framewise (cross-entropy; target -100 is padding), 2
// regression (squared error). `mask` (T, B) is 1 on real frames (an empty tensor: all).
// Returns {loss (a 0-dim double tensor), dS}.
std::vector<Tensor> readout_loss(const Tensor& Y, const Tensor& Wout, const Tensor& bout, const Tensor& target,
                                 const Tensor& mask, int64_t task) {
  const int64_t T = Y.size(0), B = Y.size(1), H = Y.size(2), K = Wout.size(0);
  const Tensor S = at::addmm(bout, Y.reshape({T * B, H}), Wout.t());  // (T B, K)
  Tensor loss, dS;
  const bool masked = mask.defined() && mask.numel() > 0;
  const Tensor row_mask = masked ? mask.reshape({T * B, 1}).to(S.scalar_type()) : Tensor();
  if (task == 0) {
    const Tensor y = target.reshape({T * B, K});
    // softplus(s) - y s = -[y log sigma(s) + (1 - y) log(1 - sigma(s))]
    Tensor per_value = at::softplus(S) - y * S;
    dS = at::sigmoid(S) - y;
    if (masked) {
      per_value = per_value * row_mask;
      dS = dS * row_mask;
    }
    loss = per_value.sum().to(at::kDouble);
  } else if (task == 1) {
    const Tensor labels = target.reshape({T * B});
    const Tensor log_p = at::log_softmax(S, 1);
    loss = at::nll_loss(log_p, labels, {}, at::Reduction::Sum, -100).to(at::kDouble);
    dS = log_p.exp();
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "readout_loss", [&] {
      scalar_t* d = dS.data_ptr<scalar_t>();
      const int64_t* l = labels.data_ptr<int64_t>();
      for (int64_t r = 0; r < T * B; ++r) {
        if (l[r] < 0) {
          for (int64_t k = 0; k < K; ++k) d[r * K + k] = scalar_t(0);
        } else {
          d[r * K + l[r]] -= scalar_t(1);
        }
      }
    });
  } else if (task == 2) {
    Tensor difference = S - target.reshape({T * B, K});
    if (masked) difference = difference * row_mask;
    loss = (difference * difference).sum().to(at::kDouble);
    dS = difference * 2;
  } else {
    TORCH_CHECK(false, "readout_loss: unknown task ", task);
  }
  return {loss, dS.view({T, B, K})};
}

// -- a whole step of one sequence (harness.training.engine.native's fused path) ------------------
//
// Forward of every direction, read-out, loss and its gradient, read-out backward and
// backward through time of every direction, in one call: at one sequence an update the
// ~30 small tensor operations of the phases above (each a dispatch, an allocation and a
// pass over a few KB) cost as much as the recurrent products. What remains is the five
// matrix products over the whole sequence (input projection, read-out, its two
// gradients, the weight gradients: ATen's GEMM) and loops of our own. The transposed copy
// of R made for the forward loop serves the backward loop too (dot products with its
// rows, matrix_vector). B = 1: a second direction reads the sequence reversed.

// Loss (summed, in double) and, in place of the scores S (T, K), d loss / d scores, for
// the closed-form tasks of readout_loss (0 next_step, 1 framewise, 2 regression); the
// same quantities, computed in loops over the rows: next_step's softplus(s) - y s as
// max(s, 0) - y s + log(1 + e^{-|s|}), the logarithms of a row summed as the logarithm
// of their product (in double: a factor lies in (1, 2]), so that the exponentials
// vectorise and a row takes one log.
template <typename T>
double loss_in_place(T* __restrict S, const T* __restrict target, const int64_t* __restrict labels, int64_t steps,
                     int64_t K, int64_t task) {
  double loss = 0.0;
  std::vector<T> work(K);
  T* __restrict e = work.data();
  for (int64_t t = 0; t < steps; ++t) {
    T* __restrict s = S + t * K;
    if (task == 0) {
      const T* __restrict y = target + t * K;
      T linear = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T sk = s[k];
        e[k] = fast_exp(-std::abs(sk));
        linear += (sk > 0 ? sk : T(0)) - y[k] * sk;
      }
      double product[4] = {1.0, 1.0, 1.0, 1.0};
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {
        for (int j = 0; j < 4; ++j) product[j] *= 1.0 + double(e[k + j]);
      }
      for (; k < K; ++k) product[0] *= 1.0 + double(e[k]);
      loss += double(linear) + std::log(product[0] * product[1] * product[2] * product[3]);
      for (int64_t k = 0; k < K; ++k) {  // sigma(s) - y, from e^{-|s|}
        const T sigma = (s[k] >= 0 ? T(1) : e[k]) / (T(1) + e[k]);
        s[k] = sigma - target[t * K + k];
      }
    } else if (task == 1) {
      const int64_t label = labels[t];
      if (label < 0) {  // padding (-100): no loss, no gradient
        for (int64_t k = 0; k < K; ++k) s[k] = T(0);
        continue;
      }
      T top = s[0];
      for (int64_t k = 1; k < K; ++k) top = s[k] > top ? s[k] : top;
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        e[k] = fast_exp(s[k] - top);
        sum += e[k];
      }
      loss += double(top) + std::log(double(sum)) - double(s[label]);
      const T inverse = T(1) / sum;
      for (int64_t k = 0; k < K; ++k) s[k] = e[k] * inverse;
      s[label] -= T(1);
    } else {
      const T* __restrict y = target + t * K;
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T difference = s[k] - y[k];
        sum += difference * difference;
        s[k] = T(2) * difference;
      }
      loss += double(sum);
    }
  }
  return loss;
}

// db and dp from d loss / d pre-activations dA (T, 4N): sums over the steps in one pass.
template <typename T>
void bias_and_peephole_gradients(const T* __restrict dA, const T* __restrict C, int64_t steps, int64_t N,
                                 T* __restrict db, T* __restrict dp) {
  for (int64_t k = 0; k < 4 * N; ++k) db[k] = T(0);
  for (int64_t k = 0; k < 3 * N; ++k) dp[k] = T(0);
  for (int64_t t = 0; t < steps; ++t) {
    const T* __restrict d = dA + t * 4 * N;
    const T* __restrict c_prev = C + t * N;  // cells row t is c^{t-1}
    const T* __restrict c = C + (t + 1) * N;
    for (int64_t k = 0; k < 4 * N; ++k) db[k] += d[k];
    for (int64_t n = 0; n < N; ++n) {
      dp[n] += d[N + n] * c_prev[n];
      dp[N + n] += d[2 * N + n] * c_prev[n];
      dp[2 * N + n] += d[3 * N + n] * c[n];
    }
  }
}

// Nesterov momentum for every tensor of a list, as torch.optim.SGD(nesterov=True):
//   v <- mu v + g;   theta <- theta - lr (g + mu v)
template <typename T>
void nesterov_tensor(Tensor& param, const Tensor& grad, Tensor& buffer, T lr, T mu) {
  T* __restrict w = param.data_ptr<T>();
  const T* __restrict g = grad.data_ptr<T>();
  T* __restrict v = buffer.data_ptr<T>();
  const int64_t n = param.numel();
  for (int64_t k = 0; k < n; ++k) {
    const T vk = mu * v[k] + g[k];
    v[k] = vk;
    w[k] -= lr * (g[k] + mu * vk);
  }
}

void nesterov_(std::vector<Tensor> params, const std::vector<Tensor>& grads, std::vector<Tensor> buffers,
               double lr, double mu) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == buffers.size(), "nesterov_: list sizes differ");
  for (size_t k = 0; k < params.size(); ++k) {
    TORCH_CHECK(params[k].is_contiguous() && grads[k].is_contiguous() && buffers[k].is_contiguous(),
                "nesterov_: tensors must be contiguous");
    AT_DISPATCH_FLOATING_TYPES(params[k].scalar_type(), "nesterov_", [&] {
      nesterov_tensor<scalar_t>(params[k], grads[k], buffers[k], static_cast<scalar_t>(lr),
                                static_cast<scalar_t>(mu));
    });
  }
}

// One direction of a sequence: its weights and gradient buffers (full layout), and what
// its forward keeps for the backward pass.
struct Direction {
  Tensor W, R, b, p, scale, shift, gW, gR, gb, gp;
  bool g_tanh, h_tanh;
  Tensor x, R_t, states, cells, block_input, cell_output;
};

// The fused step (see "a whole step of one sequence" above). `directions`: 10 tensors a
// direction, W R b p scale shift gW gR gb gp; `activations`: g_tanh, h_tanh a direction;
// the read-out Wout, bout and its gradient buffers; the task (readout_loss's numbers).
// With `params`, `grads`, `buffers` (every parameter of the network, its gradient buffer
// and momentum buffer, in one order), `step` also applies the Nesterov update (nesterov_)
// once the gradients are in. The tensors are held, not copied: the update changes the
// network's own parameters in place. Workspace is kept between calls and grows with the
// longest sequence seen.
class FusedStep {
 public:
  FusedStep(const std::vector<Tensor>& directions, const std::vector<bool>& activations, Tensor Wout, Tensor bout,
            Tensor gWout, Tensor gbout, int64_t task, std::vector<Tensor> params, std::vector<Tensor> grads,
            std::vector<Tensor> buffers)
      : Wout_(std::move(Wout)), bout_(std::move(bout)), gWout_(std::move(gWout)), gbout_(std::move(gbout)),
        task_(task), params_(std::move(params)), grads_(std::move(grads)), buffers_(std::move(buffers)) {
    const size_t count = directions.size() / 10;
    TORCH_CHECK((count == 1 || count == 2) && directions.size() == 10 * count && activations.size() == 2 * count,
                "FusedStep: 10 tensors and 2 activations a direction, one or two directions");
    TORCH_CHECK(params_.size() == grads_.size() && params_.size() == buffers_.size(), "FusedStep: list sizes differ");
    for (size_t d = 0; d < count; ++d) {
      const Tensor* t = directions.data() + 10 * d;
      for (int k = 0; k < 10; ++k) TORCH_CHECK(t[k].is_contiguous(), "FusedStep: tensors must be contiguous");
      dirs_.push_back({t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], activations[2 * d],
                       activations[2 * d + 1]});
    }
  }

  // Forward, loss and backward of one sequence x (T, 1, M), target (T, 1, K) values or
  // (T, 1) labels, into the gradient buffers; then, if `lr` >= 0 and the constructor was
  // given the parameter lists, the Nesterov update (lr, momentum mu). Returns the
  // loss; a loss that is not finite writes no gradient and updates nothing.
  // `weights`: empty, or W R b p of every direction in place of those held (the engine's
  // variants with fewer blocks map theirs to the full layout anew before each step).
  double step(const Tensor& x_in, const Tensor& target, const std::vector<Tensor>& weights, double lr, double mu) {
    c10::InferenceMode guard;  // no autograd metadata on the views and workspace below
    TORCH_CHECK(weights.empty() || weights.size() == 4 * dirs_.size(), "FusedStep.step: W R b p a direction");
    for (size_t d = 0; d < dirs_.size() && !weights.empty(); ++d) {
      dirs_[d].W = weights[4 * d].contiguous(), dirs_[d].R = weights[4 * d + 1].contiguous();
      dirs_[d].b = weights[4 * d + 2].contiguous(), dirs_[d].p = weights[4 * d + 3].contiguous();
    }
    const int64_t T = x_in.size(0), M = x_in.size(2), K = Wout_.size(0), count = dirs_.size();
    TORCH_CHECK(x_in.size(1) == 1, "FusedStep: one sequence a step");
    const int64_t N = dirs_[0].W.size(0) / 4, H = count * N;
    const auto options = x_in.options();
    if (T > capacity_) grow(T, N, H, K, options);
    const Tensor x = x_in.reshape({T, M});
    Tensor Y = count == 1 ? Tensor() : Y_.narrow(0, 0, T);
    double loss = 0.0;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_step", [&] {
      for (int64_t d = 0; d < count; ++d) {
        Direction& dir = dirs_[d];
        dir.x = d == 0 ? x : x.flip(0);
        Tensor a = a_[d].narrow(0, 0, T);
        Tensor a_flat = a.view({T, 4 * N});
        at::addmm_out(a_flat, dir.b, dir.x, dir.W.t());  // input projection
        at::Tensor states = dir.states.narrow(0, 0, T + 1), cells = dir.cells.narrow(0, 0, T + 1);
        Tensor block_input = dir.block_input.narrow(0, 0, T), cell_output = dir.cell_output.narrow(0, 0, T);
        transpose(dir.R, dir.R_t);
        by_activations<scalar_t>(dir.g_tanh, dir.h_tanh, [&](auto g, auto h) {
          forward_loop<scalar_t, decltype(g)::value, decltype(h)::value>(a, states, cells, block_input, cell_output,
                                                                          dir.R_t, dir.p, dir.scale, dir.shift);
        });
        if (count == 2) {  // Y = [y_forward, y_backward reversed in time]
          const scalar_t* S = states.data_ptr<scalar_t>();
          scalar_t* out = Y.data_ptr<scalar_t>();
          for (int64_t t = 0; t < T; ++t) {
            const scalar_t* y = S + ((d == 0 ? t : T - 1 - t) + 1) * 4 * N;
            std::memcpy(out + t * H + d * N, y, sizeof(scalar_t) * N);
          }
        }
      }
      if (count == 1) Y = dirs_[0].states.narrow(0, 1, T).view({T, 4 * N}).narrow(1, 0, N);  // row stride 4N
      Tensor S = scores_.narrow(0, 0, T);
      at::addmm_out(S, bout_, Y, Wout_.t());  // scores (T, K), then d loss / d scores in place
      const Tensor labels = task_ == 1 ? target.reshape({T}).contiguous() : Tensor();
      const Tensor values = task_ == 1 ? Tensor() : target.reshape({T, K}).contiguous();
      loss = loss_in_place<scalar_t>(S.data_ptr<scalar_t>(), task_ == 1 ? nullptr : values.data_ptr<scalar_t>(),
                                     task_ == 1 ? labels.data_ptr<int64_t>() : nullptr, T, K, task_);
      if (!std::isfinite(loss)) return;
      at::mm_out(gWout_, S.t(), Y);
      column_sums<scalar_t>(S.data_ptr<scalar_t>(), T, K, gbout_.data_ptr<scalar_t>());
      Tensor dY = dY_.narrow(0, 0, T);
      at::mm_out(dY, S, Wout_);  // (T, H)
      for (int64_t d = 0; d < count; ++d) {
        Direction& dir = dirs_[d];
        const int64_t n_rec = dir.R_t.size(0);
        Tensor dY_d = dY_d_.narrow(0, 0, T);  // this direction's columns, in its own time order
        const scalar_t* from = dY.data_ptr<scalar_t>();
        scalar_t* to = dY_d.data_ptr<scalar_t>();
        for (int64_t t = 0; t < T; ++t) std::memcpy(to + t * N, from + (d == 0 ? t : T - 1 - t) * H + d * N,
                                                   sizeof(scalar_t) * N);
        Tensor dA = dA_.narrow(0, 0, T);
        Tensor states = dir.states.narrow(0, 0, T + 1), cells = dir.cells.narrow(0, 0, T + 1);
        by_activations<scalar_t>(dir.g_tanh, dir.h_tanh, [&](auto g, auto h) {
          backward_loop<scalar_t, decltype(g)::value, decltype(h)::value>(
              dY_d, dA, states, cells, dir.block_input, dir.cell_output, dir.R, dir.R_t, dir.p, dir.scale);
        });
        bias_and_peephole_gradients<scalar_t>(dA.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>(), T, N,
                                              dir.gb.data_ptr<scalar_t>(), dir.gp.data_ptr<scalar_t>());
        const Tensor dA_flat = dA.view({T, 4 * N});
        at::mm_out(dir.gW, dA_flat.t(), dir.x);
        at::mm_out(dir.gR, dA_flat.t(), states.narrow(0, 0, T).view({T, 4 * N}).narrow(1, 0, n_rec));
      }
    });
    if (std::isfinite(loss) && lr >= 0 && !params_.empty()) nesterov_(params_, grads_, buffers_, lr, mu);
    return loss;
  }

 private:
  template <typename T> static void column_sums(const T* __restrict S, int64_t rows, int64_t cols, T* __restrict out) {
    for (int64_t k = 0; k < cols; ++k) out[k] = T(0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < cols; ++k) out[k] += S[r * cols + k];
  }

  // R_t = R^T (n_rec, 4N), in blocks of 16 x 16 so that both sides stay in L1.
  static void transpose(const Tensor& R, Tensor& R_t) {
    AT_DISPATCH_FLOATING_TYPES(R.scalar_type(), "transpose", [&] {
      const int64_t rows = R.size(0), cols = R.size(1);
      const scalar_t* __restrict from = R.data_ptr<scalar_t>();
      scalar_t* __restrict to = R_t.data_ptr<scalar_t>();
      constexpr int64_t block = 16;
      for (int64_t r0 = 0; r0 < rows; r0 += block)
        for (int64_t c0 = 0; c0 < cols; c0 += block)
          for (int64_t r = r0; r < std::min(rows, r0 + block); ++r)
            for (int64_t c = c0; c < std::min(cols, c0 + block); ++c) to[c * rows + r] = from[r * cols + c];
    });
  }

  void grow(int64_t T, int64_t N, int64_t H, int64_t K, const at::TensorOptions& options) {
    capacity_ = std::max<int64_t>(T, 2 * capacity_);
    for (size_t d = 0; d < dirs_.size(); ++d) {
      Direction& dir = dirs_[d];
      a_.resize(dirs_.size());
      a_[d] = at::empty({capacity_, 1, 4 * N}, options);
      dir.R_t = at::empty({dir.R.size(1), dir.R.size(0)}, options);
      dir.states = at::zeros({capacity_ + 1, 1, 4 * N}, options);  // row 0 stays zero: the initial state
      dir.cells = at::zeros({capacity_ + 1, 1, N}, options);
      dir.block_input = at::empty({capacity_, 1, N}, options);
      dir.cell_output = at::empty({capacity_, 1, N}, options);
    }
    Y_ = at::empty({capacity_, H}, options);
    scores_ = at::empty({capacity_, K}, options);
    dY_ = at::empty({capacity_, H}, options);
    dY_d_ = at::empty({capacity_, 1, N}, options);
    dA_ = at::empty({capacity_, 1, 4 * N}, options);
  }

  std::vector<Direction> dirs_;
  Tensor Wout_, bout_, gWout_, gbout_;
  int64_t task_;
  std::vector<Tensor> params_, grads_, buffers_;
  int64_t capacity_ = 0;
  std::vector<Tensor> a_;
  Tensor Y_, scores_, dY_, dY_d_, dA_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lstm_forward, "LSTM time loop, forward");
  m.def("backward", &lstm_backward, "LSTM time loop, backward through time");
  m.def("backward_into", &lstm_backward_into, "LSTM backward through time, gradients into given tensors");
  m.def("readout_loss", &readout_loss, "read-out scores, loss and its gradient for the closed-form tasks");
  m.def("readout_backward", &readout_backward, "read-out backward: dY, and Wout, bout gradients");
  pybind11::class_<FusedStep>(m, "FusedStep")
      .def(pybind11::init<const std::vector<Tensor>&, const std::vector<bool>&, Tensor, Tensor, Tensor, Tensor,
                          int64_t, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>())
      .def("step", &FusedStep::step, "forward, loss, backward (and the Nesterov update) of one sequence");
  m.def("nesterov_", &nesterov_, "Nesterov momentum SGD update of a list of tensors, in place");
}
