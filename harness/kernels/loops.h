// What the compiled loops of gru.cpp and gated_feedback.cpp share: the activations in
// plain arithmetic, so that the compiler can vectorise the loops over the units (libm's
// expf is a call it cannot; the same fast_exp as lstm.cpp), and the small matrix products
// of a time step.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace odyssey {

// exp(x) for float: Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, a degree-7 Taylor
// polynomial for e^r (error below 1e-8 relative), and 2^k put into the exponent bits.
// Clamped to [-87, 88], where e^x is a normal float; NaN stays NaN.
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
template <typename T> inline T tanh_(T a) { return T(1) - T(2) / (fast_exp(T(2) * a) + T(1)); }

// y (+)= x @ M for a few rows x (B, rows), M (rows, cols) contiguous, y (B, cols); both
// with unit stride in their last dimension. At one sequence an update (B = 1) this is a
// matrix-vector product whose ATen call costs more than the arithmetic at N <= 100; here
// it is four rows of M at a time, each row added into y with its weight from x (a plain
// loop over cols, vectorised), so that M is read once and y stays in L1. A larger batch
// goes to ATen (BLAS), which blocks for registers.
constexpr int64_t kSmallBatch = 4;

template <typename T>
inline void add_four_rows(int64_t n, T a0, T a1, T a2, T a3, const T* __restrict m0, const T* __restrict m1,
                          const T* __restrict m2, const T* __restrict m3, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a0 * m0[i] + a1 * m1[i] + a2 * m2[i] + a3 * m3[i];
}

template <typename T> inline void add_row(int64_t n, T a, const T* __restrict m, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * m[i];
}

template <typename T> void product(const at::Tensor& x, const at::Tensor& M, at::Tensor y, bool accumulate) {
  const int64_t B = x.size(0), rows = M.size(0), cols = M.size(1);
  if (B > kSmallBatch) {
    if (accumulate) y.addmm_(x, M);
    else at::mm_out(y, x, M);
    return;
  }
  const T* X = x.data_ptr<T>();
  const T* W = M.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  const int64_t xs = x.stride(0), ys = y.stride(0);
  if (!accumulate) {
    for (int64_t b = 0; b < B; ++b) std::memset(Y + b * ys, 0, sizeof(T) * cols);
  }
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* m = W + r * cols;
    for (int64_t b = 0; b < B; ++b) {
      const T* a = X + b * xs + r;
      add_four_rows<T>(cols, a[0], a[1], a[2], a[3], m, m + cols, m + 2 * cols, m + 3 * cols, Y + b * ys);
    }
  }
  for (; r < rows; ++r) {
    for (int64_t b = 0; b < B; ++b) add_row<T>(cols, X[b * xs + r], W + r * cols, Y + b * ys);
  }
}

// y (+)= x @ M^T for a few rows x (B, cols), M (rows, cols) contiguous, y (B, rows): each
// y[b, r] the dot product of x[b] with row r of M, four rows at a time in SIMD registers
// of 32 bytes (GCC's vector extensions), so that M is read once in its stored layout, with
// no transposed copy. A larger batch goes to ATen.
template <typename T> struct Simd {
  typedef T type __attribute__((vector_size(32)));
};

template <typename T> inline typename Simd<T>::type load(const T* p) {
  typename Simd<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T> inline T lane_sum(typename Simd<T>::type v) {
  T sum = 0;
  for (size_t k = 0; k < sizeof v / sizeof(T); ++k) sum += v[k];
  return sum;
}

template <typename T>
void product_transposed(const at::Tensor& x, const at::Tensor& M, at::Tensor y, bool accumulate) {
  const int64_t B = x.size(0), rows = M.size(0), cols = M.size(1);
  if (B > kSmallBatch) {
    if (accumulate) y.addmm_(x, M.t());
    else at::mm_out(y, x, M.t());
    return;
  }
  using V = typename Simd<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const int64_t whole = cols - cols % W;
  const T* X = x.data_ptr<T>();
  const T* Mp = M.data_ptr<T>();
  T* Y = y.data_ptr<T>();
  const int64_t xs = x.stride(0), ys = y.stride(0);
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {  // four rows of M, in L1 for every b
    const T* m0 = Mp + r * cols;
    const T *m1 = m0 + cols, *m2 = m1 + cols, *m3 = m2 + cols;
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = X + b * xs;
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t i = 0; i < whole; i += W) {
        const V v = load(xb + i);
        a0 += load(m0 + i) * v;
        a1 += load(m1 + i) * v;
        a2 += load(m2 + i) * v;
        a3 += load(m3 + i) * v;
      }
      T s0 = lane_sum<T>(a0), s1 = lane_sum<T>(a1), s2 = lane_sum<T>(a2), s3 = lane_sum<T>(a3);
      for (int64_t i = whole; i < cols; ++i) {
        s0 += m0[i] * xb[i];
        s1 += m1[i] * xb[i];
        s2 += m2[i] * xb[i];
        s3 += m3[i] * xb[i];
      }
      T* yb = Y + b * ys + r;
      if (accumulate) {
        yb[0] += s0, yb[1] += s1, yb[2] += s2, yb[3] += s3;
      } else {
        yb[0] = s0, yb[1] = s1, yb[2] = s2, yb[3] = s3;
      }
    }
  }
  for (; r < rows; ++r) {
    const T* m = Mp + r * cols;
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = X + b * xs;
      V a = {};
      for (int64_t i = 0; i < whole; i += W) a += load(m + i) * load(xb + i);
      T sum = lane_sum<T>(a);
      for (int64_t i = whole; i < cols; ++i) sum += m[i] * xb[i];
      Y[b * ys + r] = accumulate ? Y[b * ys + r] + sum : sum;
    }
  }
}

}  // namespace odyssey
