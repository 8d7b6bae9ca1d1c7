// The time loops of harness.models.gated_feedback.GatedFeedbackRecurrence (GF-LSTM and GF-GRU,
// Chung et al. 2015) in C++: the same equations as the Python loops there, which stay the
// reference and the fallback (ODYSSEY_PYTHON_LOOPS=1). Symbols: L layers of N units, G
// unit-wise gates a layer (GF-LSTM: i, f, o; GF-GRU: z, r), K = G N + L + N the rows a
// layer gets from below (its gates, its L global gates g^{i->j}, its candidate).
//
// Layer 1's input projection is one product over all frames. A step then needs, from the
// previous states h*_{t-1} alone, for every layer j: R_j h_{t-1}^j (its gates), the L N
// partial sums u_g^{i->j} . h*_{t-1}, and V^{i->j} = U^{i->j} h_{t-1}^i for every i (the
// feedback before the global gates scale it: sum_i g^{i->j} U^{i->j} h^i = sum_i g^{i->j}
// V^{i->j}). All of it depends on one source layer s at a time, so it is ONE batched
// product over the L source layers, without zero blocks:
//
//   P[s] = h_{t-1}^s (B, N) @ rows[s]^T,  rows[s] (C, N) = [R_s; u_g^{i->j}[block s] at row j L + i; U^{s->1}; ...; U^{s->L}]
//
// with C = G N + L L + L N: the matrices in their stored layout, stacked. Then the layers
// run bottom up, each one product for what comes from below (b_j + W_j h_t^{j-1}) and one
// plain loop over its units. The backward pass mirrors it: top down one product a layer
// into the layer below, and one product dP[s] (B, C) @ rows[s] a source layer into
// d h*_{t-1}; the weight gradients are one product each after the loop. The products of a
// step (in both directions without a transposed copy) and the loops over the units are
// vectorised (loops.h).
#include <torch/extension.h>

#include <vector>

#include "loops.h"

using at::Tensor;
using odyssey::product;
using odyssey::product_transposed;
using odyssey::sigmoid;
using odyssey::tanh_;

namespace {

struct Shape {
  int64_t steps, B, L, N, G, K, C;
  int64_t GN() const { return G * N; }
  int64_t LL() const { return L * L; }
};

template <typename T> void axpy(int64_t N, T alpha, const T* __restrict x, T* __restrict y) {
  for (int64_t n = 0; n < N; ++n) y[n] += alpha * x[n];
}
template <typename T> void scaled_copy(int64_t N, T alpha, const T* __restrict x, T* __restrict y) {
  for (int64_t n = 0; n < N; ++n) y[n] = alpha * x[n];
}
template <typename T> T dot(int64_t N, const T* __restrict x, const T* __restrict y) {
  T sum = 0;
  for (int64_t n = 0; n < N; ++n) sum += x[n] * y[n];
  return sum;
}

// GF-LSTM units of one layer and row: i, f, o from below plus the own state, the candidate
// from below plus the gated feedback fb.
template <typename T>
void lstm_row(int64_t N, const T* __restrict pre_i, const T* __restrict pre_f, const T* __restrict pre_o,
              const T* __restrict pre_c, const T* __restrict own_i, const T* __restrict own_f,
              const T* __restrict own_o, const T* __restrict fb, const T* __restrict c_prev, T* __restrict i_out,
              T* __restrict f_out, T* __restrict o_out, T* __restrict cand_out, T* __restrict c,
              T* __restrict tanh_c, T* __restrict h) {
  for (int64_t n = 0; n < N; ++n) {
    const T i = sigmoid(pre_i[n] + own_i[n]);
    const T f = sigmoid(pre_f[n] + own_f[n]);
    const T o = sigmoid(pre_o[n] + own_o[n]);
    const T cand = tanh_(pre_c[n] + fb[n]);
    const T cn = f * c_prev[n] + i * cand;
    const T tc = tanh_(cn);
    i_out[n] = i;
    f_out[n] = f;
    o_out[n] = o;
    cand_out[n] = cand;
    c[n] = cn;
    tanh_c[n] = tc;
    h[n] = o * tc;
  }
}

// GF-GRU units of one layer and row: the reset r scales the gated feedback fb.
template <typename T>
void gru_row(int64_t N, const T* __restrict pre_z, const T* __restrict pre_r, const T* __restrict pre_h,
             const T* __restrict own_z, const T* __restrict own_r, const T* __restrict fb,
             const T* __restrict h_prev, T* __restrict z_out, T* __restrict r_out, T* __restrict cand_out,
             T* __restrict h) {
  for (int64_t n = 0; n < N; ++n) {
    const T z = sigmoid(pre_z[n] + own_z[n]);
    const T r = sigmoid(pre_r[n] + own_r[n]);
    const T cand = tanh_(pre_h[n] + r * fb[n]);
    z_out[n] = z;
    r_out[n] = r;
    cand_out[n] = cand;
    h[n] = h_prev[n] + z * (cand - h_prev[n]);
  }
}

// Backward of lstm_row: d pre-activations (into d and the own-state part of dP), d fb, and
// the cell gradient dc (in: through step t + 1; out: d loss / d c_{t-1}).
template <typename T>
void lstm_backward_row(int64_t N, const T* __restrict i_in, const T* __restrict f_in, const T* __restrict o_in,
                       const T* __restrict cand_in, const T* __restrict c_prev, const T* __restrict tanh_c,
                       const T* __restrict dh, T* __restrict dc_io, T* __restrict da_i, T* __restrict da_f,
                       T* __restrict da_o, T* __restrict da_c, T* __restrict dp_i, T* __restrict dp_f,
                       T* __restrict dp_o, T* __restrict d_fb) {
  for (int64_t n = 0; n < N; ++n) {
    const T i = i_in[n], f = f_in[n], o = o_in[n], cand = cand_in[n], tc = tanh_c[n];
    const T dc = dc_io[n] + dh[n] * o * (T(1) - tc * tc);
    const T gi = dc * cand * i * (T(1) - i);
    const T gf = dc * c_prev[n] * f * (T(1) - f);
    const T go = dh[n] * tc * o * (T(1) - o);
    const T gc = dc * i * (T(1) - cand * cand);
    da_i[n] = gi;
    da_f[n] = gf;
    da_o[n] = go;
    dp_i[n] = gi;
    dp_f[n] = gf;
    dp_o[n] = go;
    da_c[n] = gc;
    d_fb[n] = gc;
    dc_io[n] = dc * f;
  }
}

// Backward of gru_row; `direct` gets the path dh (1 - z) into d loss / d h_{t-1}.
template <typename T>
void gru_backward_row(int64_t N, const T* __restrict z_in, const T* __restrict r_in,
                      const T* __restrict cand_in, const T* __restrict fb, const T* __restrict h_prev,
                      const T* __restrict dh, T* __restrict direct, T* __restrict da_z, T* __restrict da_r,
                      T* __restrict da_h, T* __restrict dp_z, T* __restrict dp_r, T* __restrict d_fb) {
  for (int64_t n = 0; n < N; ++n) {
    const T z = z_in[n], r = r_in[n], cand = cand_in[n];
    const T gh = dh[n] * z * (T(1) - cand * cand);
    const T gz = dh[n] * (cand - h_prev[n]) * z * (T(1) - z);
    const T gr = gh * fb[n] * r * (T(1) - r);
    da_z[n] = gz;
    da_r[n] = gr;
    dp_z[n] = gz;
    dp_r[n] = gr;
    da_h[n] = gh;
    d_fb[n] = gh * r;
    direct[n] = dh[n] * (T(1) - z);
  }
}

template <typename T, bool lstm>
void forward_loop(const Shape& s, const Tensor& A0, const std::vector<Tensor>& weight_below,
                  const std::vector<Tensor>& bias, const Tensor& rows, const T* fixed, Tensor& act, Tensor& P,
                  Tensor& states, Tensor& aux1, Tensor& aux2) {
  const int64_t B = s.B, L = s.L, N = s.N, K = s.K, C = s.C, GN = s.GN(), LL = s.LL();
  Tensor below = at::empty({B, K}, A0.options());  // layer j's pre-activation from below, j > 1
  Tensor fb_scratch = at::empty({N}, A0.options());
  const auto rows_s = rows.unbind(0);
  std::vector<std::vector<Tensor>> state_layers, P_steps;
  for (const auto& st : states.unbind(0)) state_layers.push_back(st.unbind(0));
  for (const auto& p : P.unbind(0)) P_steps.push_back(p.unbind(0));  // [src][t]
  const int64_t TBC = s.steps * B * C;
  const T* A = A0.data_ptr<T>();
  T* BELOW = below.data_ptr<T>();
  T* ACT = act.data_ptr<T>();
  T* PP = P.data_ptr<T>();
  T* S = states.data_ptr<T>();
  T* X1 = aux1.data_ptr<T>();
  T* X2 = lstm ? aux2.data_ptr<T>() : nullptr;
  T* FBS = fb_scratch.data_ptr<T>();
  for (int64_t t = 0; t < s.steps; ++t) {
    for (int64_t src = 0; src < L; ++src) {  // everything from h*_{t-1}
      product_transposed<T>(state_layers[t][src], rows_s[src], P_steps[src][t], false);
    }
    const T* Pt = PP + t * B * C;  // P[src, t, b] at Pt + src * TBC + b * C
    for (int64_t j = 0; j < L; ++j) {
      const T* pre_rows = A + t * B * K;
      if (j > 0) {  // b_j + W_j h_t^{j-1}
        for (int64_t b = 0; b < B; ++b) std::memcpy(BELOW + b * K, bias[j].data_ptr<T>(), sizeof(T) * K);
        product_transposed<T>(state_layers[t + 1][j - 1], weight_below[j], below, true);
        pre_rows = BELOW;
      }
      for (int64_t b = 0; b < B; ++b) {
        const T* pre = pre_rows + b * K;
        T* a = ACT + ((t * L + j) * B + b) * K;
        const int64_t row = (j * B + b) * N;  // of layer j, sequence b in a (L, B, N) step
        // the global gates g^{i->j}, and the feedback sum_i g^{i->j} V^{i->j}
        for (int64_t i = 0; i < L; ++i) {
          T sum = pre[GN + i];
          for (int64_t src = 0; src < L; ++src) sum += Pt[src * TBC + b * C + GN + j * L + i];
          a[GN + i] = fixed ? fixed[(j * B + b) * L + i] : sigmoid(sum);
        }
        T* fb = lstm ? FBS : X1 + t * L * B * N + row;
        for (int64_t n = 0; n < N; ++n) fb[n] = 0;
        for (int64_t i = 0; i < L; ++i) axpy<T>(N, a[GN + i], Pt + i * TBC + b * C + GN + LL + j * N, fb);
        const T* own = Pt + j * TBC + b * C;
        const T* h_prev = S + t * L * B * N + row;
        T* h = S + (t + 1) * L * B * N + row;
        if constexpr (lstm) {
          lstm_row<T>(N, pre, pre + N, pre + 2 * N, pre + GN + L, own, own + N, own + 2 * N, fb,
                      X1 + t * L * B * N + row, a, a + N, a + 2 * N, a + GN + L, X1 + (t + 1) * L * B * N + row,
                      X2 + t * L * B * N + row, h);
        } else {
          gru_row<T>(N, pre, pre + N, pre + GN + L, own, own + N, fb, h_prev, a, a + N, a + GN + L, h);
        }
      }
    }
  }
}

template <typename T, bool lstm>
void backward_loop(const Shape& s, const Tensor& dY, bool concat, const std::vector<Tensor>& W_below, const Tensor& rows,
                   const T* fixed, const Tensor& act, const Tensor& P, const Tensor& states, const Tensor& aux1,
                   const Tensor& aux2, Tensor& dA, Tensor& dP) {
  const int64_t B = s.B, L = s.L, N = s.N, K = s.K, C = s.C, GN = s.GN(), LL = s.LL();
  const int64_t LBN = L * B * N;
  Tensor dh = at::empty({L, B, N}, dY.options());  // d loss / d h*_t
  Tensor dh_next = at::zeros({L, B, N}, dY.options());  // d loss / d h*_t through step t + 1
  Tensor dc = at::zeros({L, B, N}, dY.options());  // GF-LSTM: d loss / d c*_t through step t + 1
  Tensor d_fb_scratch = at::empty({N}, dY.options());
  const auto rows_s = rows.unbind(0);  // (C, N) each
  const auto dh_layers = dh.unbind(0);
  const auto dh_next_layers = dh_next.unbind(0);
  std::vector<std::vector<Tensor>> dA_steps, dP_steps;  // [j][t], [src][t]
  for (const auto& d : dA.unbind(0)) dA_steps.push_back(d.unbind(0));
  for (const auto& d : dP.unbind(0)) dP_steps.push_back(d.unbind(0));
  const int64_t TBC = s.steps * B * C;
  const T* DY = dY.data_ptr<T>();
  const T* ACT = act.data_ptr<T>();
  const T* PP = P.data_ptr<T>();
  const T* S = states.data_ptr<T>();
  const T* X1 = aux1.data_ptr<T>();
  const T* X2 = lstm ? aux2.data_ptr<T>() : nullptr;
  T* DH = dh.data_ptr<T>();
  T* DHN = dh_next.data_ptr<T>();  // copied into dh at the start of a step, then rebuilt
  T* DC = dc.data_ptr<T>();
  T* DA = dA.data_ptr<T>();
  T* DP = dP.data_ptr<T>();
  T* DFB = d_fb_scratch.data_ptr<T>();
  const int64_t out_width = concat ? L * N : N;
  for (int64_t t = s.steps - 1; t >= 0; --t) {
    for (int64_t k = 0; k < LBN; ++k) DH[k] = DHN[k];
    for (int64_t b = 0; b < B; ++b) {
      const T* dy = DY + (t * B + b) * out_width;
      for (int64_t j = concat ? 0 : L - 1; j < L; ++j) {
        axpy<T>(N, T(1), dy + (concat ? j * N : 0), DH + (j * B + b) * N);
      }
    }
    const T* Pt = PP + t * B * C;  // [src, t, b] at + src * TBC + b * C
    T* dPt = DP + t * B * C;
    for (int64_t j = L - 1; j >= 0; --j) {
      for (int64_t b = 0; b < B; ++b) {
        const T* a = ACT + ((t * L + j) * B + b) * K;
        T* d = DA + ((j * s.steps + t) * B + b) * K;
        T* dp_own = dPt + j * TBC + b * C;
        const int64_t row = (j * B + b) * N;
        const T* dh_row = DH + row;
        if constexpr (lstm) {
          lstm_backward_row<T>(N, a, a + N, a + 2 * N, a + GN + L, X1 + t * LBN + row, X2 + t * LBN + row, dh_row,
                               DC + row, d, d + N, d + 2 * N, d + GN + L, dp_own, dp_own + N, dp_own + 2 * N, DFB);
        } else {
          gru_backward_row<T>(N, a, a + N, a + GN + L, X1 + t * LBN + row, S + t * LBN + row, dh_row, DHN + row,
                              d, d + N, d + GN + L, dp_own, dp_own + N, DFB);
        }
        for (int64_t i = 0; i < L; ++i) {  // the global gates: d g^{i->j} = d fb . V^{i->j}
          const T g = a[GN + i];
          const T dg = fixed ? T(0) : dot<T>(N, DFB, Pt + i * TBC + b * C + GN + LL + j * N) * g * (T(1) - g);
          d[GN + i] = dg;
          for (int64_t src = 0; src < L; ++src) dPt[src * TBC + b * C + GN + j * L + i] = dg;
          scaled_copy<T>(N, g, DFB, dPt + i * TBC + b * C + GN + LL + j * N);  // d V^{i->j}
        }
      }
      if (j > 0) product<T>(dA_steps[j][t], W_below[j], dh_layers[j - 1], true);
    }
    // d loss / d h*_{t-1}: the direct path (GF-GRU, written above) and everything through P
    for (int64_t src = 0; src < L; ++src) product<T>(dP_steps[src][t], rows_s[src], dh_next_layers[src], !lstm);
  }
}

Shape shape_of(const Tensor& x, const Tensor& feedback, bool lstm) {
  Shape s;
  s.steps = x.size(0);
  s.B = x.size(1);
  s.L = feedback.size(0);
  s.N = feedback.size(2);
  s.G = lstm ? 3 : 2;
  s.K = s.G * s.N + s.L + s.N;
  s.C = s.G * s.N + s.L * s.L + s.L * s.N;
  return s;
}

// (G + 1) N biases -> K, with zeros for the global gates (which have none)
Tensor full_bias(const Tensor& bias, int64_t GN, int64_t L) {
  return at::cat({bias.narrow(0, 0, GN), at::zeros({L}, bias.options()), bias.narrow(0, GN, bias.size(0) - GN)});
}

}  // namespace

// The parameters as harness.models.gated_feedback.GatedFeedbackRNN stores them, layer j = 1..L at
// index j - 1, K = G N + L + N:
//   weight_below[j] (K, M_j), M_1 = M, else N: rows W of the gates, w_g^{i->j} for i = 1..L,
//     W of the candidate;
//   bias[j] ((G + 1) N): b of the gates, then of the candidate (the global gates have none);
//   weight_recurrent[j] (G N, N): R of the gates on the layer's own state;
//   feedback (L, L, N, N): [i, j] = U^{i->j};  global_gate_recurrent (L, L, L N): [i, j] = u_g^{i->j};
//   fixed (L, B, L): [j, b, i] = a fixed g^{i->j} for sequence b, or None (learned gates).
// lstm: GF-LSTM (else GF-GRU); concat: output all layers. Returns [y (T, B, L N) or
// (T, B, N), then what backward needs: rows (L, C, N) the stacked matrices of the step's
// product, act (T, L, B, K) the activations, P (L, T, B, C) the products, states (T+1, L, B, N) h*_0..h*_T, aux1 and aux2
// (GF-LSTM: cells (T+1, L, B, N) and tanh of them (T, L, B, N); GF-GRU: the gated
// feedback before r (T, L, B, N) and an empty tensor)].
std::vector<Tensor> gf_forward(const Tensor& x, const std::vector<Tensor>& weight_below,
                               const std::vector<Tensor>& bias, const std::vector<Tensor>& weight_recurrent,
                               const Tensor& feedback, const Tensor& global_gate_recurrent,
                               const c10::optional<Tensor>& fixed_in, bool lstm, bool concat) {
  const Shape s = shape_of(x, feedback, lstm);
  const int64_t T = s.steps, B = s.B, L = s.L, N = s.N, K = s.K, M = x.size(2), GN = s.GN();
  TORCH_CHECK(static_cast<int64_t>(weight_below.size()) == L && static_cast<int64_t>(bias.size()) == L &&
                  static_cast<int64_t>(weight_recurrent.size()) == L,
              "gated_feedback.forward: give weight_below, bias and weight_recurrent of each of the ", L, " layers");
  TORCH_CHECK(weight_below[0].size(0) == K, "gated_feedback.forward: weight_below[0] has ", weight_below[0].size(0),
              " rows, expected ", K);
  // rows[s] = [R_s; u_g^{i->j}[block s] at row j L + i; U^{s->j} for j]  (C, N)
  const Tensor rows = at::cat({at::stack(weight_recurrent),
                               global_gate_recurrent.reshape({L, L, L, N}).permute({2, 1, 0, 3}).reshape({L, L * L, N}),
                               feedback.reshape({L, L * N, N})},
                              1);
  std::vector<Tensor> bias_full, below;
  for (int64_t j = 0; j < L; ++j) {
    bias_full.push_back(full_bias(bias[j], GN, L));
    below.push_back(weight_below[j].contiguous());
  }
  const Tensor A0 = at::addmm(bias_full[0], x.reshape({T * B, M}), weight_below[0].t()).view({T, B, K});
  Tensor act = at::empty({T, L, B, K}, x.options());
  Tensor P = at::empty({L, T, B, s.C}, x.options());
  Tensor states = at::zeros({T + 1, L, B, N}, x.options());
  Tensor aux1 = lstm ? at::zeros({T + 1, L, B, N}, x.options()) : at::empty({T, L, B, N}, x.options());
  Tensor aux2 = lstm ? at::empty({T, L, B, N}, x.options()) : at::empty({0}, x.options());
  const Tensor fixed = fixed_in.has_value() && fixed_in->defined() ? fixed_in->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gf_forward", [&] {
    const scalar_t* fx = fixed.defined() ? fixed.data_ptr<scalar_t>() : nullptr;
    if (lstm) forward_loop<scalar_t, true>(s, A0, below, bias_full, rows, fx, act, P, states, aux1, aux2);
    else forward_loop<scalar_t, false>(s, A0, below, bias_full, rows, fx, act, P, states, aux1, aux2);
  });
  const Tensor out = states.narrow(0, 1, T);  // (T, L, B, N)
  Tensor y = concat ? out.permute({0, 2, 1, 3}).reshape({T, B, L * N}).clone() : out.select(1, L - 1).clone();
  return {y, rows, act, P, states, aux1, aux2};
}

// dY (T, B, L N) or (T, B, N), and x, weight_below, fixed and the saved tensors of
// gf_forward -> [dx (T, B, M) or undefined (None) without need_dx, d feedback,
// d global_gate_recurrent, d weight_below[1..L], d bias[1..L], d weight_recurrent[1..L]],
// each the shape of its parameter.
std::vector<Tensor> gf_backward(const Tensor& dY_in, const Tensor& x, const std::vector<Tensor>& weight_below,
                                const c10::optional<Tensor>& fixed_in, const Tensor& rows, const Tensor& act,
                                const Tensor& P, const Tensor& states, const Tensor& aux1, const Tensor& aux2,
                                bool lstm, bool concat, bool need_dx) {
  const int64_t L = rows.size(0), N = rows.size(2);
  Shape s;
  s.steps = x.size(0);
  s.B = x.size(1);
  s.L = L;
  s.N = N;
  s.G = lstm ? 3 : 2;
  s.K = s.G * N + L + N;
  s.C = rows.size(1);
  const int64_t T = s.steps, B = s.B, K = s.K, C = s.C, M = x.size(2), GN = s.GN(), LL = s.LL();
  const Tensor dY = dY_in.contiguous();
  Tensor dA = at::empty({L, T, B, K}, x.options());  // d loss / d pre-activations from below
  Tensor dP = at::empty({L, T, B, C}, x.options());  // d loss / d P
  std::vector<Tensor> below;
  for (const auto& w : weight_below) below.push_back(w.contiguous());
  const Tensor fixed = fixed_in.has_value() && fixed_in->defined() ? fixed_in->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gf_backward", [&] {
    const scalar_t* fx = fixed.defined() ? fixed.data_ptr<scalar_t>() : nullptr;
    if (lstm) backward_loop<scalar_t, true>(s, dY, concat, below, rows, fx, act, P, states, aux1, aux2, dA, dP);
    else backward_loop<scalar_t, false>(s, dY, concat, below, rows, fx, act, P, states, aux1, aux2, dA, dP);
  });
  const Tensor d_first = dA[0].view({T * B, K});
  Tensor dx = need_dx ? at::mm(d_first, below[0]).view({T, B, M}) : Tensor();
  Tensor d_rows = at::empty({L, C, N}, x.options());
  for (int64_t src = 0; src < L; ++src) {  // dP[src] against h_{t-1}^src (a view at batch 1)
    Tensor out = d_rows[src];
    at::mm_out(out, dP[src].view({T * B, C}).t(), states.narrow(0, 0, T).select(1, src).reshape({T * B, N}));
  }
  std::vector<Tensor> grads = {
      dx, d_rows.narrow(1, GN + LL, L * N).reshape({L, L, N, N}).contiguous(),
      d_rows.narrow(1, GN, LL).reshape({L, L, L, N}).permute({2, 1, 0, 3}).reshape({L, L, L * N})};
  std::vector<Tensor> d_bias;
  for (int64_t j = 0; j < L; ++j) {
    const Tensor d = dA[j].view({T * B, K});
    const Tensor input = j == 0 ? x.reshape({T * B, M}) : states.narrow(0, 1, T).select(1, j - 1).reshape({T * B, N});
    grads.push_back(at::mm(d.t(), input));
    const Tensor db = d.sum(0);
    d_bias.push_back(at::cat({db.narrow(0, 0, GN), db.narrow(0, GN + L, N)}));
  }
  grads.insert(grads.end(), d_bias.begin(), d_bias.end());
  for (int64_t j = 0; j < L; ++j) grads.push_back(d_rows[j].narrow(0, 0, GN).contiguous());
  return grads;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &gf_forward, "gated-feedback RNN time loop, forward");
  m.def("backward", &gf_backward, "gated-feedback RNN time loop, backward through time");
}
