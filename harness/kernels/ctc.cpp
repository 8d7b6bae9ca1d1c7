// Connectionist temporal classification for the native engine (harness.training.engine.native):
// the loss of Graves, Fernández, Gomez & Schmidhuber (ICML 2006) and its gradient with
// respect to the read-out's scores, best-path decoding and the edit distance of the
// character error rate (harness/training/ctc.py holds the definitions and the Python reference).
//
// The network's scores s (T, B, K) pass through a softmax over K outputs, output 0 the
// blank. A target l of length L becomes l' = (blank, l_1, blank, l_2, ..., l_L, blank),
// S = 2L + 1 states. The forward variable alpha_t(s) is the probability of all path
// prefixes that emit l'_1..s in frames 1..t; it moves from s, s - 1, and s - 2 when
// l'_s is a label different from l'_{s-2} (Graves et al. 2006, section 4.1). The backward
// variable here, beta_t(s), is the probability of the path suffixes from state s at t
// emitting the frames after t (without frame t's own emission), so that
// alpha_t(s) beta_t(s) is the probability of all paths through s at t, with no division.
//
// Both are rescaled to sum 1 at every frame (Graves et al. 2006, section 4.1, after
// Rabiner 1989): alpha stays in probability space in double precision, and the loss
// -ln p(l|x) = -sum_t ln C_t - ln(alpha^_T(S) + alpha^_T(S - 1)) is accumulated in log
// space from the scale factors C_t, so no frame can underflow it. The gradient with
// respect to the scores (the softmax folded in, Graves et al. 2006, section 4.2):
//   d loss / d s_t(k) = y_t(k) - sum_{s: l'_s = k} alpha^_t(s) beta^_t(s) / Z_t,
//   Z_t = sum_s alpha^_t(s) beta^_t(s).
// A target that needs more frames than its sequence has (L plus one blank between each
// pair of equal neighbours) has no path: it is refused with an error naming it, never
// turned into an infinite or zero loss (harness.datasets.ctc_targets.check_targets refuses such data first).
#include <torch/extension.h>

#include "loops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

using at::Tensor;

namespace {

constexpr int64_t kBlank = 0;

// e^x of the softmax: float scores take loops.h's fast_exp (vectorised, ~1e-7 relative),
// except far below the largest score (x < -80, where fast_exp clamps), which takes libm's
// exp, as float64 scores always do; the rest of the algorithm is in double.
template <typename T>
void softmax_row(const T* __restrict s, double* __restrict y, float* __restrict work, int64_t K) {
  T top = s[0];
  for (int64_t k = 1; k < K; ++k) top = std::max(top, s[k]);
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t k = 0; k < K; ++k) work[k] = odyssey::fast_exp(s[k] - top);
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const double value = s[k] - top < -80.0f ? std::exp(double(s[k]) - double(top)) : double(work[k]);
      y[k] = value;
      sum += value;
    }
    const double inverse = 1.0 / sum;
    for (int64_t k = 0; k < K; ++k) y[k] *= inverse;
  } else {
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += (y[k] = std::exp(double(s[k]) - double(top)));
    const double inverse = 1.0 / sum;
    for (int64_t k = 0; k < K; ++k) y[k] *= inverse;
  }
}

// What one sequence's forward-backward needs, kept between sequences to allocate once.
struct Workspace {
  std::vector<double> y, alpha, beta, beta_next, emission, skip, occupancy;
  std::vector<int64_t> label;
  std::vector<float> work;
};

// One sequence: its loss, and d loss / d scores written into grad (frames 0..T-1 of it).
// scores and grad point at frame 0 of this sequence; frame t is `stride` values further.
// The rows of alpha carry two zeros before state 0 and the rows of beta two after state
// S - 1, so that s - 1, s - 2 (s + 1, s + 2) need no test; skip[s] is 1 where state s
// may be entered from s - 2 (a label unlike the one two states back), else 0.
template <typename T>
double sequence_ctc(const T* scores, T* grad, int64_t stride, int64_t frames, int64_t K, const int64_t* labels,
                    int64_t L, Workspace& w) {
  const int64_t S = 2 * L + 1, row = S + 2;
  const double infinity = std::numeric_limits<double>::infinity();
  w.label.assign(S, kBlank);
  w.skip.assign(S + 2, 0.0);
  for (int64_t s = 1; s < S; s += 2) {
    w.label[s] = labels[s / 2];
    if (s >= 3 && labels[s / 2] != labels[s / 2 - 1]) w.skip[s] = 1.0;
  }
  const int64_t* label = w.label.data();
  const double* skip = w.skip.data();

  // softmax of every frame
  w.y.resize(frames * K);
  w.work.resize(K);
  for (int64_t t = 0; t < frames; ++t) {
    softmax_row<T>(scores + t * stride, w.y.data() + t * K, w.work.data(), K);
  }
  w.emission.resize(S);
  double* e = w.emission.data();

  // forward: alpha^_t, rescaled to sum 1; log_p accumulates ln C_t
  w.alpha.assign(frames * row, 0.0);
  double log_p = 0;
  for (int64_t t = 0; t < frames; ++t) {
    const double* yt = w.y.data() + t * K;
    for (int64_t s = 0; s < S; ++s) e[s] = yt[label[s]];
    double* a = w.alpha.data() + t * row + 2;  // a[-1], a[-2] are the zeros
    if (t == 0) {
      a[0] = e[0];
      if (S > 1) a[1] = e[1];
    } else {
      const double* prev = a - row;
      for (int64_t s = 0; s < S; ++s) a[s] = (prev[s] + prev[s - 1] + skip[s] * prev[s - 2]) * e[s];
    }
    double C = 0;
    for (int64_t s = 0; s < S; ++s) C += a[s];
    if (!(C > 0) || !std::isfinite(C)) return infinity;  // no path left (cannot happen for an alignable target)
    const double inverse = 1.0 / C;
    for (int64_t s = 0; s < S; ++s) a[s] *= inverse;
    log_p += std::log(C);
  }
  const double* last = w.alpha.data() + (frames - 1) * row + 2;
  const double end = last[S - 1] + (S > 1 ? last[S - 2] : 0.0);
  if (!(end > 0)) return infinity;
  log_p += std::log(end);

  // backward: beta^_t (without frame t's emission), and the gradient of frame t. Here
  // e[s] holds y_{t+1}(l'_s) beta^_{t+1}(s), two zeros after state S - 1.
  w.beta.assign(row, 0.0);
  w.beta_next.assign(row, 0.0);
  double* beta = w.beta.data();
  w.beta[S - 1] = 1.0;
  if (S > 1) w.beta[S - 2] = 1.0;
  w.emission.assign(row, 0.0);
  e = w.emission.data();
  w.occupancy.resize(K);
  double* occupancy = w.occupancy.data();
  for (int64_t t = frames - 1; t >= 0; --t) {
    if (t < frames - 1) {  // beta_t(s) = sum over s' in {s, s+1, s+2 if it may skip} of y_{t+1}(l'_s') beta_{t+1}(s')
      const double* yn = w.y.data() + (t + 1) * K;
      for (int64_t s = 0; s < S; ++s) e[s] = yn[label[s]] * beta[s];
      double D = 0;
      for (int64_t s = 0; s < S; ++s) {
        beta[s] = e[s] + e[s + 1] + skip[s + 2] * e[s + 2];
        D += beta[s];
      }
      if (!(D > 0) || !std::isfinite(D)) return infinity;
      const double inverse = 1.0 / D;
      for (int64_t s = 0; s < S; ++s) beta[s] *= inverse;
    }
    const double* a = w.alpha.data() + t * row + 2;
    std::fill(occupancy, occupancy + K, 0.0);
    double Z = 0;
    for (int64_t s = 0; s < S; ++s) {
      const double through = a[s] * beta[s];
      occupancy[label[s]] += through;
      Z += through;
    }
    const double* yt = w.y.data() + t * K;
    const double inverse = 1.0 / Z;
    T* g = grad + t * stride;
    for (int64_t k = 0; k < K; ++k) g[k] = T(yt[k] - occupancy[k] * inverse);
  }
  return -log_p;
}

}  // namespace

// Loss and gradient of a batch: scores (T, B, K) (float or double), targets the labels of
// all sequences concatenated (int64, 1..K-1), input_lengths and target_lengths (B) int64.
// Returns {losses (B) double, d (sum of losses) / d scores (T, B, K), zero on padding}.
std::vector<Tensor> ctc_loss(const Tensor& scores_in, const Tensor& targets_in, const Tensor& input_lengths_in,
                             const Tensor& target_lengths_in) {
  TORCH_CHECK(scores_in.dim() == 3, "ctc_loss: scores must be (T, B, K)");
  const Tensor scores = scores_in.contiguous();
  const Tensor targets = targets_in.to(at::kLong).contiguous();
  const Tensor input_lengths = input_lengths_in.to(at::kLong).contiguous();
  const Tensor target_lengths = target_lengths_in.to(at::kLong).contiguous();
  const int64_t T = scores.size(0), B = scores.size(1), K = scores.size(2);
  TORCH_CHECK(input_lengths.numel() == B && target_lengths.numel() == B, "ctc_loss: one length a sequence");
  const int64_t* frames = input_lengths.data_ptr<int64_t>();
  const int64_t* lengths = target_lengths.data_ptr<int64_t>();
  const int64_t* all_labels = targets.data_ptr<int64_t>();
  std::vector<int64_t> offsets(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) offsets[b + 1] = offsets[b] + lengths[b];
  TORCH_CHECK(offsets[B] == targets.numel(), "ctc_loss: the target lengths do not add up to the targets given");
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* l = all_labels + offsets[b];
    int64_t needed = lengths[b];
    for (int64_t j = 0; j < lengths[b]; ++j) {
      TORCH_CHECK(l[j] >= 1 && l[j] < K, "ctc_loss: sequence ", b, " of the batch has label ", l[j],
                  ", outside 1..", K - 1, " (0 is the blank)");
      if (j > 0 && l[j] == l[j - 1]) ++needed;
    }
    TORCH_CHECK(frames[b] >= 1 && frames[b] <= T, "ctc_loss: sequence ", b, " has ", frames[b], " frames of ", T);
    TORCH_CHECK(needed <= frames[b], "ctc_loss: sequence ", b, " of the batch has ", lengths[b],
                " labels, which need at least ", needed, " frames, but it has ", frames[b],
                "; CTC cannot align it (harness.datasets.ctc_targets.check_targets refuses such data before training)");
  }
  Tensor losses = at::empty({B}, scores.options().dtype(at::kDouble));
  Tensor grad = at::zeros_like(scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "ctc_loss", [&] {
    Workspace workspace;
    double* loss = losses.data_ptr<double>();
    for (int64_t b = 0; b < B; ++b) {
      loss[b] = sequence_ctc<scalar_t>(scores.data_ptr<scalar_t>() + b * K, grad.data_ptr<scalar_t>() + b * K,
                                       B * K, frames[b], K, all_labels + offsets[b], lengths[b], workspace);
    }
  });
  return {losses, grad};
}

// Best-path decoding (harness.training.ctc.best_path): the arg-max output of every frame, repeats
// merged, then blanks dropped. scores (T, B, K), lengths (B). Returns the labels of each
// sequence.
std::vector<std::vector<int64_t>> best_path(const Tensor& scores_in, const Tensor& lengths_in) {
  const Tensor scores = scores_in.contiguous();
  const Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const int64_t B = scores.size(1), K = scores.size(2);
  const int64_t* frames = lengths.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> out(B);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "best_path", [&] {
    const scalar_t* S = scores.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      int64_t previous = -1;
      for (int64_t t = 0; t < frames[b]; ++t) {
        const scalar_t* s = S + (t * B + b) * K;
        const int64_t best = std::max_element(s, s + K) - s;  // the first of equal maxima, as numpy's argmax
        if (best != previous && best != kBlank) out[b].push_back(best);
        previous = best;
      }
    }
  });
  return out;
}

// Levenshtein distance (insertions, deletions, substitutions, each 1) of two sequences.
int64_t edit_distance(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    int64_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const int64_t above = row[j];
      row[j] = std::min({above + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The edits of best-path decoding against the targets, summed over a batch, and the
// number of target labels: the two sums of the character error rate.
std::vector<int64_t> decoding_errors(const Tensor& scores, const Tensor& lengths, const Tensor& targets_in,
                                     const Tensor& target_lengths_in) {
  const Tensor targets = targets_in.to(at::kLong).contiguous();
  const Tensor target_lengths = target_lengths_in.to(at::kLong).contiguous();
  const auto hypotheses = best_path(scores, lengths);
  const int64_t* labels = targets.data_ptr<int64_t>();
  const int64_t* n = target_lengths.data_ptr<int64_t>();
  int64_t edits = 0, characters = 0;
  for (size_t b = 0; b < hypotheses.size(); ++b) {
    const std::vector<int64_t> reference(labels + characters, labels + characters + n[b]);
    edits += edit_distance(hypotheses[b], reference);
    characters += n[b];
  }
  return {edits, characters};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ctc_loss", &ctc_loss, "CTC loss of each sequence and its gradient with respect to the scores");
  m.def("best_path", &best_path, "best-path (greedy) CTC decoding");
  m.def("edit_distance", &edit_distance, "Levenshtein distance of two label sequences");
  m.def("decoding_errors", &decoding_errors, "edits of best-path decoding and target labels of a batch");
}
