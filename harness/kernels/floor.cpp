// The floor of a training step (harness.bench.floor): the two recurrent products of one
// time step at batch 1, alone, built with the same compiler and flags as the cell loops.
// Forward a = R u (R: 4N x n_rec, u: n_rec), backward du = R^T da (da: 4N). Each has two
// plain forms over R as stored (row-major) or over its transposed copy, both the loops of
// loops.h that the cell kernels use:
//   form 0 "dot":  each output a dot product with a contiguous row (four rows at a time);
//   form 1 "axpy": the output accumulated from contiguous rows, each scaled by one input.
// Forward: form 0 reads R's rows, form 1 R^T's; backward: form 0 reads R^T's rows, form 1 R's.
// `products` repeats one product `repeats` times (the timing is the caller's), and
// returns its result, so that a test can check it against torch.mv.
#include <torch/extension.h>

#include "loops.h"

using at::Tensor;

Tensor products(const Tensor& R, const Tensor& Rt, const Tensor& input, bool forward, int64_t form,
                int64_t repeats) {
  TORCH_CHECK(R.dim() == 2 && R.is_contiguous() && Rt.is_contiguous(), "products: R and Rt contiguous matrices");
  TORCH_CHECK(form == 0 || form == 1, "products: form is 0 (dot) or 1 (axpy)");
  const Tensor x = input.contiguous().view({1, -1});
  // forward: (1, n_rec) -> (1, 4N); backward: (1, 4N) -> (1, n_rec)
  Tensor out = at::empty({1, forward ? R.size(0) : R.size(1)}, R.options());
  AT_DISPATCH_FLOATING_TYPES(R.scalar_type(), "products", [&] {
    for (int64_t k = 0; k < repeats; ++k) {
      if (forward) {  // a = R u
        if (form == 0) odyssey::product_transposed<scalar_t>(x, R, out, false);  // u @ R^T, R's rows
        else odyssey::product<scalar_t>(x, Rt, out, false);                     // u @ Rt, rows of Rt
      } else {  // du = R^T da
        if (form == 0) odyssey::product_transposed<scalar_t>(x, Rt, out, false);  // da @ Rt^T, Rt's rows
        else odyssey::product<scalar_t>(x, R, out, false);                       // da @ R, R's rows
      }
    }
  });
  return out.view({-1});
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("products", &products, "the recurrent product of a step, forward (R u) or backward (R^T da), repeated");
}
