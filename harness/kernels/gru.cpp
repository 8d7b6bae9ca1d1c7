// The time loops of harness.models.cells.GRURecurrence in C++: the same equations as the Python
// loops there, which stay the reference and the fallback (ODYSSEY_PYTHON_LOOPS=1):
//
//   z^t = sigma(a_z^t + R_z h^{t-1}),  r^t = sigma(a_r^t + R_r h^{t-1})
//   h~^t = tanh(a_h^t + R_h (r^t * h^{t-1})),  h^t = h^{t-1} + z^t * (h~^t - h^{t-1})
//
// with a^t = W x^t + b (rows z, r, h) computed for all frames in one product. The reset
// acts before R_h, so a step is two matrix products and two plain loops over the B x N
// units (both vectorised: see loops.h).
#include <torch/extension.h>

#include <vector>

#include "loops.h"

using at::Tensor;
using odyssey::product;
using odyssey::product_transposed;
using odyssey::sigmoid;
using odyssey::tanh_;

namespace {

// Before R_h: the gates, and what R_h multiplies.
template <typename T>
void gates_row(int64_t N, const T* __restrict a_z, const T* __restrict a_r, const T* __restrict rec_z,
               const T* __restrict rec_r, const T* __restrict h_prev, T* __restrict z, T* __restrict r,
               T* __restrict reset_state) {
  for (int64_t n = 0; n < N; ++n) {
    const T zn = sigmoid(a_z[n] + rec_z[n]);
    const T rn = sigmoid(a_r[n] + rec_r[n]);
    z[n] = zn;
    r[n] = rn;
    reset_state[n] = rn * h_prev[n];
  }
}

// After R_h: the candidate and the new state.
template <typename T>
void state_row(int64_t N, const T* __restrict a_h, const T* __restrict rec_h, const T* __restrict z,
               const T* __restrict h_prev, T* __restrict candidate, T* __restrict h) {
  for (int64_t n = 0; n < N; ++n) {
    const T cand = tanh_(a_h[n] + rec_h[n]);
    candidate[n] = cand;
    h[n] = h_prev[n] + z[n] * (cand - h_prev[n]);
  }
}

// Backward, before R_h: d a_z, d a_h, and the direct path dh (1 - z) into dh_next.
template <typename T>
void backward_state_row(int64_t N, const T* __restrict dy, T* __restrict dh_next, const T* __restrict z,
                        const T* __restrict candidate, const T* __restrict h_prev, T* __restrict da_z,
                        T* __restrict da_h) {
  for (int64_t n = 0; n < N; ++n) {
    const T dh = dy[n] + dh_next[n];
    const T zn = z[n], cand = candidate[n];
    da_z[n] = dh * (cand - h_prev[n]) * zn * (T(1) - zn);
    da_h[n] = dh * zn * (T(1) - cand * cand);
    dh_next[n] = dh * (T(1) - zn);
  }
}

// Backward, after R_h: d a_r, and the path through r * h^{t-1} into dh_next.
template <typename T>
void backward_reset_row(int64_t N, const T* __restrict d_reset_state, const T* __restrict r,
                        const T* __restrict h_prev, T* __restrict da_r, T* __restrict dh_next) {
  for (int64_t n = 0; n < N; ++n) {
    const T rn = r[n], d = d_reset_state[n];
    da_r[n] = d * h_prev[n] * rn * (T(1) - rn);
    dh_next[n] += d * rn;
  }
}

template <typename T>
void forward_loop(const Tensor& a, const Tensor& R, Tensor& states, Tensor& gates, Tensor& candidate,
                  Tensor& reset_state) {
  const int64_t steps = a.size(0), B = a.size(1), N = a.size(2) / 3;
  const Tensor R_zr = R.narrow(0, 0, 2 * N), R_h = R.narrow(0, 2 * N, N);  // rows of the contiguous R
  Tensor rec_zr = at::empty({B, 2 * N}, a.options()), rec_h = at::empty({B, N}, a.options());
  const auto h_t = states.unbind(0);
  const auto rs_t = reset_state.unbind(0);
  const T* A = a.data_ptr<T>();
  T* S = states.data_ptr<T>();
  T* G = gates.data_ptr<T>();
  T* H = candidate.data_ptr<T>();
  T* RS = reset_state.data_ptr<T>();
  const T* RZR = rec_zr.data_ptr<T>();
  const T* RH = rec_h.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    product_transposed<T>(h_t[t], R_zr, rec_zr, false);
    for (int64_t b = 0; b < B; ++b) {
      const T* ab = A + (t * B + b) * 3 * N;
      T* g = G + (t * B + b) * 2 * N;
      gates_row<T>(N, ab, ab + N, RZR + b * 2 * N, RZR + b * 2 * N + N, S + (t * B + b) * N, g, g + N,
                   RS + (t * B + b) * N);
    }
    product_transposed<T>(rs_t[t], R_h, rec_h, false);
    for (int64_t b = 0; b < B; ++b) {
      state_row<T>(N, A + (t * B + b) * 3 * N + 2 * N, RH + b * N, G + (t * B + b) * 2 * N,
                   S + (t * B + b) * N, H + (t * B + b) * N, S + ((t + 1) * B + b) * N);
    }
  }
}

template <typename T>
void backward_loop(const Tensor& dY, const Tensor& R, const Tensor& states, const Tensor& gates,
                   const Tensor& candidate, Tensor& dA) {
  const int64_t steps = dY.size(0), B = dY.size(1), N = dY.size(2);
  const Tensor R_zr = R.narrow(0, 0, 2 * N), R_h = R.narrow(0, 2 * N, N);
  Tensor dh_next = at::zeros({B, N}, dY.options());  // d loss / d h^t through step t + 1
  Tensor d_reset_state = at::empty({B, N}, dY.options());
  const auto da_t = dA.unbind(0);
  std::vector<Tensor> da_zr, da_h;
  for (const auto& d : da_t) {
    da_zr.push_back(d.narrow(1, 0, 2 * N));
    da_h.push_back(d.narrow(1, 2 * N, N));
  }
  const T* S = states.data_ptr<T>();
  const T* G = gates.data_ptr<T>();
  const T* H = candidate.data_ptr<T>();
  const T* DY = dY.data_ptr<T>();
  T* DA = dA.data_ptr<T>();
  T* DH = dh_next.data_ptr<T>();
  const T* DRS = d_reset_state.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t b = 0; b < B; ++b) {
      T* d = DA + (t * B + b) * 3 * N;
      backward_state_row<T>(N, DY + (t * B + b) * N, DH + b * N, G + (t * B + b) * 2 * N, H + (t * B + b) * N,
                            S + (t * B + b) * N, d, d + 2 * N);
    }
    product<T>(da_h[t], R_h, d_reset_state, false);
    for (int64_t b = 0; b < B; ++b) {
      backward_reset_row<T>(N, DRS + b * N, G + (t * B + b) * 2 * N + N, S + (t * B + b) * N,
                            DA + (t * B + b) * 3 * N + N, DH + b * N);
    }
    product<T>(da_zr[t], R_zr, dh_next, true);
  }
}

}  // namespace

// x (T, B, M), W (3N, M), R (3N, N), b (3N), rows z, r, h. Returns [h (T, B, N), and what
// backward needs: states (T+1, B, N) h^0..h^T, gates (T, B, 2N) z and r, candidate
// (T, B, N), reset_state (T, B, N) r * h^{t-1}].
std::vector<Tensor> gru_forward(const Tensor& x, const Tensor& W, const Tensor& R, const Tensor& b) {
  const int64_t T = x.size(0), B = x.size(1), M = x.size(2), N = W.size(0) / 3;
  const Tensor a = at::addmm(b, x.reshape({T * B, M}), W.t()).view({T, B, 3 * N});  // input projection
  Tensor states = at::zeros({T + 1, B, N}, x.options());
  Tensor gates = at::empty({T, B, 2 * N}, x.options());
  Tensor candidate = at::empty({T, B, N}, x.options());
  Tensor reset_state = at::empty({T, B, N}, x.options());
  const Tensor Rc = R.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_forward", [&] {
    forward_loop<scalar_t>(a, Rc, states, gates, candidate, reset_state);
  });
  return {states.narrow(0, 1, T).clone(), states, gates, candidate, reset_state};
}

// d loss / d h (T, B, N) and the saved tensors -> [dx (T, B, M) or undefined (None) without
// need_dx, dW (3N, M), dR (3N, N), db (3N)].
std::vector<Tensor> gru_backward(const Tensor& dY_in, const Tensor& x, const Tensor& W, const Tensor& R,
                                 const Tensor& states, const Tensor& gates, const Tensor& candidate,
                                 const Tensor& reset_state, bool need_dx) {
  const int64_t T = x.size(0), B = x.size(1), M = x.size(2), N = W.size(0) / 3;
  const Tensor dY = dY_in.contiguous();
  Tensor dA = at::empty({T, B, 3 * N}, x.options());  // d loss / d pre-activations z, r, h
  const Tensor Rc = R.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_backward", [&] {
    backward_loop<scalar_t>(dY, Rc, states, gates, candidate, dA);
  });
  const Tensor dA_flat = dA.view({T * B, 3 * N});
  Tensor dx = need_dx ? at::mm(dA_flat, W).view({T, B, M}) : Tensor();
  Tensor dW = at::mm(dA_flat.t(), x.reshape({T * B, M}));
  Tensor dR = at::cat({at::mm(dA_flat.narrow(1, 0, 2 * N).t(), states.narrow(0, 0, T).reshape({T * B, N})),
                       at::mm(dA_flat.narrow(1, 2 * N, N).t(), reset_state.reshape({T * B, N}))});
  Tensor db = dA_flat.sum(0);
  return {dx, dW, dR, db};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &gru_forward, "GRU time loop, forward");
  m.def("backward", &gru_backward, "GRU time loop, backward through time");
}
