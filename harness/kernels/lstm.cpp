// The time loops of harness.cells.LSTMRecurrence in C++: the same equations as the Python
// loops beside them (cells.py), which stay the reference and the fallback. At Greff et
// al.'s sizes (batch 1, N <= 200) nearly all of the Python loops' time is the cost of
// calling small tensor operations, so here each step is one matrix product (ATen) and one
// plain loop over the B x N blocks for everything elementwise (which the compiler
// vectorises: see fast_exp).
//
// Inputs are the full fused tensors of cells.py: x (T, B, M); W (4N, M), b (4N), rows
// z, i, f, o; R (4N, n_rec) acting on u^{t-1} = [y] or [y, i, f, o] (full gate recurrence);
// p (3N) peepholes of i, f, o; gate = scale * sigma(a) + shift (exactly 1 where removed).
// The activations g and h (tanh or identity) are template arguments, chosen once.
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

using at::Tensor;

namespace {

// d act(a) / da, from the value v = act(a)
// exp(x) for float in plain arithmetic, so that the compiler can vectorise the loops
// (libm's expf is a call it cannot): Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2,
// a degree-7 Taylor polynomial for e^r (error below 1e-8 relative), and 2^k put into the
// exponent bits. Clamped to [-87, 88], where e^x is a normal float; NaN stays NaN.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_to_k;
  std::memcpy(&two_to_k, &bits, sizeof two_to_k);
  return p * two_to_k;
}
inline double fast_exp(double x) { return std::exp(x); }  // float64 (the tests): libm's exp

template <typename T> inline T sigmoid(T a) { return T(1) / (T(1) + fast_exp(-a)); }
// tanh(a) = 1 - 2 / (e^{2a} + 1): exact in the limits, absolute error ~1e-7 in float
template <typename T, bool is_tanh> inline T activate(T a) {
  if constexpr (is_tanh) return T(1) - T(2) / (fast_exp(T(2) * a) + T(1));
  else return a;
}
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

template <typename T, bool g_tanh, bool h_tanh>
void forward_loop(Tensor& a, Tensor& states, Tensor& cells, Tensor& block_input, Tensor& cell_output,
                  const Tensor& R, const Tensor& p, const Tensor& scale, const Tensor& shift) {
  const int64_t steps = a.size(0), B = a.size(1), N = a.size(2) / 4, n_rec = R.size(1);
  const Tensor R_t = R.t();
  const auto a_t = a.unbind(0);
  const auto recurrent_in = states.narrow(2, 0, n_rec).unbind(0);
  const T* __restrict pp = p.data_ptr<T>();
  const T* __restrict sc = scale.data_ptr<T>();
  const T* __restrict sh = shift.data_ptr<T>();
  T* S = states.data_ptr<T>();
  T* C = cells.data_ptr<T>();
  T* Z = block_input.data_ptr<T>();
  T* H = cell_output.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    Tensor at_t = a_t[t];
    at_t.addmm_(recurrent_in[t], R_t);  // a += R u^{t-1}
    const T* A = at_t.data_ptr<T>();
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
                   const Tensor& block_input, const Tensor& cell_output, const Tensor& R, const Tensor& p,
                   const Tensor& scale) {
  const int64_t steps = dY.size(0), B = dY.size(1), N = dY.size(2), n_rec = R.size(1);
  const bool gate_recurrence = n_rec == 4 * N;
  Tensor d_recurrent = at::zeros({B, n_rec}, dY.options());  // d loss / d u^t through step t + 1
  Tensor no_gate_gradient = at::zeros({B, 3 * N}, dY.options());
  Tensor dc_next = at::zeros({B, N}, dY.options());
  const auto da_t = dA.unbind(0);
  const T* pp = p.data_ptr<T>();
  const T* sc = scale.data_ptr<T>();
  const T* S = states.data_ptr<T>();
  const T* C = cells.data_ptr<T>();
  const T* Z = block_input.data_ptr<T>();
  const T* H = cell_output.data_ptr<T>();
  const T* G = dY.data_ptr<T>();
  T* DR = d_recurrent.data_ptr<T>();
  T* DC = dc_next.data_ptr<T>();
  // the gate part of d u^t: from R's gate columns (FGR), else zero
  const T* DG = gate_recurrence ? DR + N : no_gate_gradient.data_ptr<T>();
  const int64_t dg_stride = gate_recurrence ? n_rec : 3 * N;
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* D = da_t[t].data_ptr<T>();
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
    at::mm_out(d_recurrent, da_t[t], R);
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
  const Tensor Rc = R.contiguous(), pc = p.contiguous(), sc = scale.contiguous(), sh = shift.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    by_activations<scalar_t>(g_tanh, h_tanh, [&](auto g, auto h) {
      forward_loop<scalar_t, decltype(g)::value, decltype(h)::value>(a, states, cells, block_input,
                                                                      cell_output, Rc, pc, sc, sh);
    });
  });
  return {states.narrow(0, 1, T).narrow(2, 0, N).clone(), states, cells, block_input, cell_output};
}

std::vector<Tensor> lstm_backward(const Tensor& dY_in, const Tensor& x, const Tensor& W, const Tensor& R,
                                  const Tensor& p, const Tensor& scale, const Tensor& states,
                                  const Tensor& cells, const Tensor& block_input, const Tensor& cell_output,
                                  bool g_tanh, bool h_tanh, bool need_dx) {
  const int64_t T = x.size(0), B = x.size(1), M = x.size(2), N = W.size(0) / 4, n_rec = R.size(1);
  const Tensor dY = dY_in.contiguous();
  Tensor dA = at::empty({T, B, 4 * N}, x.options());  // d loss / d pre-activations z, i, f, o
  const Tensor Rc = R.contiguous(), pc = p.contiguous(), sc = scale.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_backward", [&] {
    by_activations<scalar_t>(g_tanh, h_tanh, [&](auto g, auto h) {
      backward_loop<scalar_t, decltype(g)::value, decltype(h)::value>(dY, dA, states, cells, block_input,
                                                                       cell_output, Rc, pc, sc);
    });
  });
  const Tensor dA_flat = dA.view({T * B, 4 * N});
  Tensor dx = need_dx ? at::mm(dA_flat, W).view({T, B, M}) : Tensor();
  Tensor dW = at::mm(dA_flat.t(), x.reshape({T * B, M}));
  Tensor dR = at::mm(dA_flat.t(), states.narrow(0, 0, T).narrow(2, 0, n_rec).reshape({T * B, n_rec}));
  Tensor db = dA_flat.sum(0);
  Tensor dp_if = (dA.narrow(2, N, 2 * N).reshape({T, B, 2, N}) * cells.narrow(0, 0, T).unsqueeze(2)).sum({0, 1});
  Tensor dp_o = (dA.narrow(2, 3 * N, N) * cells.narrow(0, 1, T)).sum({0, 1});
  Tensor dp = at::cat({dp_if.reshape({2 * N}), dp_o});
  return {dx, dW, dR, db, dp};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lstm_forward, "LSTM time loop, forward");
  m.def("backward", &lstm_backward, "LSTM time loop, backward through time");
}
