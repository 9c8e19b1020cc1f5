// tinylora/backend/cuda/sampling.cuh: model/generate.hpp's sample_token() for a batch of logit
// rows in backend::Cuda's memory, so that a decode loop on the GPU copies only the sampled tokens
// back. Same draws: u = CounterRng(seed, stream (kSample, sequence id)).uniform(step), walked along
// the candidates' cumulative probability in double. With top-k or top-p the candidates are every
// row's vocabulary sorted by descending logit: a segmented sort done as two stable Thrust sorts (by
// logit, then by row). The per-row walks are the plain version (one row per call).
#pragma once

#include <thrust/functional.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/transform.h>

#include <cstdint>

#include "tinylora/backend/cuda/runtime.cuh"
#include "tinylora/core/rng.hpp"

namespace tinylora::backend::cuda {

namespace detail {

/// Row t of z = logits / T: log-sum-exp in double, then the pick.
struct SampleRow {
  ConstMatrixView<float> logits;  // (n, V)
  float T;
  bool greedy;
  Index keep_k;                      // candidates after top-k (V when off)
  float top_p;
  std::uint64_t seed;
  std::uint64_t const* sequences;    // (n) ids keying the draws
  std::uint64_t step;
  std::int32_t const* order;         // (n, V) candidates by descending logit, or null (no truncation)
  std::int32_t* token;               // (n)
  float* logprob;                    // (n) log q(token), q the truncated distribution
  float* policy_logprob;             // (n) log softmax(z)(token)
  TINYLORA_HOST_DEVICE void operator()(Index t) const {
    Index const V = logits.cols;
    // z = logits / T as sample_token() forms it: in float over the whole vocabulary, in double
    // on its top-k / top-p path.
    auto const z = [&](Index j) {
      return order != nullptr ? static_cast<double>(logits(t, j)) / T : static_cast<double>(logits(t, j) / T);
    };
    double m = z(0);
    Index best = 0;
    for (Index j = 1; j < V; ++j)
      if (z(j) > m) m = z(j), best = j;
    double sum = 0;
    for (Index j = 0; j < V; ++j) sum += exp(z(j) - m);
    double const lse = m + log(sum);
    if (greedy) {
      token[t] = static_cast<std::int32_t>(best);
      logprob[t] = policy_logprob[t] = static_cast<float>(z(best) - lse);
      return;
    }
    auto const candidate = [&](Index i) { return order != nullptr ? static_cast<Index>(order[t * V + i]) : i; };
    Index keep = order != nullptr ? keep_k : V;
    if (order != nullptr && top_p < 1.0f) {
      double mass = 0;
      for (Index i = 0; i < keep; ++i) {
        mass += exp(z(candidate(i)) - lse);
        if (mass >= top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    double kept_mass = 1.0;
    if (order != nullptr) {
      kept_mass = 0;
      for (Index i = 0; i < keep; ++i) kept_mass += exp(z(candidate(i)) - lse);
    }
    double const u = CounterRng(seed, streams::of(streams::kSample, sequences[t])).uniform(step) * kept_mass;
    double acc = 0;
    Index pick = candidate(keep - 1);  // if rounding leaves u above the total
    for (Index i = 0; i < keep; ++i) {
      acc += exp(z(candidate(i)) - lse);
      if (u < acc) {
        pick = candidate(i);
        break;
      }
    }
    double const policy = z(pick) - lse;
    token[t] = static_cast<std::int32_t>(pick);
    policy_logprob[t] = static_cast<float>(policy);
    logprob[t] = static_cast<float>(policy - log(kept_mass));
  }
};

/// key(e) = logits(e / V, e % V), the sort key of flat candidate e.
struct RowLogit {
  ConstMatrixView<float> logits;
  TINYLORA_HOST_DEVICE float operator()(std::int32_t e) const { return logits(e / logits.cols, e % logits.cols); }
};
struct RowOf {
  Index V;
  TINYLORA_HOST_DEVICE std::int32_t operator()(std::int32_t e) const { return static_cast<std::int32_t>(e / V); }
};
struct ColumnOf {
  Index V;
  TINYLORA_HOST_DEVICE std::int32_t operator()(std::int32_t e) const { return static_cast<std::int32_t>(e % V); }
};

}  // namespace detail

/// One token per row of logits, drawn as sample_token(row, V, o, sequences[t], step) draws it.
/// `Options` has sample_token's fields (model::SamplingOptions): greedy, temperature, top_k, top_p, seed.
///   logits: (n, V) device, sequences: (n) device; token, logprob, policy_logprob: (n) device
template <class Options>
void sample_tokens(ConstMatrixView<float> logits, Options const& o, std::uint64_t const* sequences, std::uint64_t step,
                   std::int32_t* token, float* logprob, float* policy_logprob) {
  float const T = o.greedy ? 1.0f : o.temperature;
  TINYLORA_CHECK(T > 0, "cuda::sample_tokens(): temperature must be > 0 (got ", T, "). Hint: use greedy decoding instead.");
  Index const n = logits.rows, V = logits.cols;
  TINYLORA_CHECK(n * V < (Index{1} << 31), "cuda::sample_tokens(): ", n, " x ", V, " candidates do not fit 32-bit indices");
  bool const truncate = !o.greedy && ((o.top_k > 0 && o.top_k < V) || o.top_p < 1.0f);
  cuda::Buffer<std::int32_t> order;  // (n, V) candidate columns, each row by descending logit
  if (truncate) {
    cuda::Buffer<std::int32_t> flat(static_cast<std::size_t>(n * V));
    cuda::Buffer<float> key(flat.size());
    cuda::Buffer<std::int32_t> row(flat.size());
    thrust::sequence(flat.begin(), flat.end());
    thrust::transform(flat.begin(), flat.end(), key.begin(), detail::RowLogit{logits});
    thrust::stable_sort_by_key(key.begin(), key.end(), flat.begin(), thrust::greater<float>());  // by logit, descending
    thrust::transform(flat.begin(), flat.end(), row.begin(), detail::RowOf{V});
    thrust::stable_sort_by_key(row.begin(), row.end(), flat.begin());  // then by row: each row stays descending
    order = cuda::Buffer<std::int32_t>(flat.size());
    thrust::transform(flat.begin(), flat.end(), order.begin(), detail::ColumnOf{V});
  }
  Index const keep_k = o.top_k > 0 && o.top_k < V ? static_cast<Index>(o.top_k) : V;
  cuda_detail::for_each_index(n, detail::SampleRow{logits, T, o.greedy, keep_k, o.top_p, o.seed, sequences, step,
                                      truncate ? cuda::data(order) : nullptr, token, logprob, policy_logprob});
}

}  // namespace tinylora::backend::cuda
