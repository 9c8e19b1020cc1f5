// tinylora/backend/cpu/sampling.hpp: one token drawn from a row of logits in host memory, and
// backend::Cpu's sample_tokens (every row of a decode step, rows in parallel). The plain version of
// backend/cuda/sampling.cuh, which draws the same tokens on the device.
#pragma once

#include "tinylora/core/eigen.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "tinylora/backend/cpu/kernels.hpp"
#include "tinylora/backend/sampling.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/rng.hpp"

namespace tinylora::backend::cpu {

/// Picks a token from one row of logits.   logits: (vocab)
inline Sampled sample_token(float const* logits, Index vocab, SamplingOptions const& o, std::uint64_t sequence,
                            std::uint64_t step) {
  float const T = o.greedy ? 1.0f : o.temperature;
  TINYLORA_CHECK(T > 0, "sample_token(): temperature must be > 0 (got ", T, "). Hint: use greedy decoding instead.");
  bool const truncate = (o.top_k > 0 && o.top_k < vocab) || o.top_p < 1.0f;
  if (o.greedy || !truncate) {
    // The whole vocabulary: lse of z = logits / T by the vectorized log-sum-exp, then an inverse-CDF
    // scan block by block (a block's mass in one vectorized pass, exps in double only inside the
    // block where u falls). Same distribution as the plain path below with keep = vocab.
    std::vector<float> zf(static_cast<std::size_t>(vocab));  // (V) logits / T
    for (Index j = 0; j < vocab; ++j) zf[static_cast<std::size_t>(j)] = logits[j] / T;
    double const lse = log_sum_exp(zf.data(), vocab);
    if (o.greedy) {
      auto const best = static_cast<std::int32_t>(std::max_element(logits, logits + vocab) - logits);
      auto const lp = static_cast<float>(zf[static_cast<std::size_t>(best)] - lse);
      return {best, lp, lp};
    }
    constexpr Index kBlock = 256;
    double const u = CounterRng(o.seed, streams::of(streams::kSample, sequence)).uniform(step);
    double acc = 0;
    std::int32_t token = static_cast<std::int32_t>(vocab - 1);  // if rounding leaves u above the total
    for (Index j0 = 0; j0 < vocab; j0 += kBlock) {
      Index const n = std::min(kBlock, vocab - j0);
      double const block = (Eigen::Map<Eigen::ArrayXf const>(zf.data() + j0, n) - static_cast<float>(lse)).exp().sum();
      if (u >= acc + block) {
        acc += block;
        continue;
      }
      for (Index j = j0; j < j0 + n; ++j) {
        acc += std::exp(double{zf[static_cast<std::size_t>(j)]} - lse);
        if (u < acc) {
          token = static_cast<std::int32_t>(j);
          break;
        }
      }
      if (u < acc) break;
      token = static_cast<std::int32_t>(j0 + n - 1);  // the block's float mass overstated its double one
    }
    auto const lp = static_cast<float>(zf[static_cast<std::size_t>(token)] - lse);
    return {token, lp, lp};
  }
  // Top-k / top-p, the plain way: log softmax(logits / T) in double, candidates in descending
  // probability, truncated by top-k, then by top-p (smallest prefix with mass >= p).
  std::vector<double> z(static_cast<std::size_t>(vocab));
  double m = -INFINITY;
  for (Index j = 0; j < vocab; ++j) m = std::max(m, z[static_cast<std::size_t>(j)] = double{logits[j]} / T);
  double sum = 0;
  for (double x : z) sum += std::exp(x - m);
  double const lse = m + std::log(sum);
  std::vector<std::int32_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  Index keep = vocab;
  if (o.top_k > 0) keep = std::min<Index>(keep, o.top_k);
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](std::int32_t a, std::int32_t b) { return z[static_cast<std::size_t>(a)] > z[static_cast<std::size_t>(b)]; });
  if (o.top_p < 1.0f) {
    double mass = 0;
    for (Index i = 0; i < keep; ++i) {
      mass += std::exp(z[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] - lse);
      if (mass >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_mass = 0;
  for (Index i = 0; i < keep; ++i) kept_mass += std::exp(z[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] - lse);
  double const u = CounterRng(o.seed, streams::of(streams::kSample, sequence)).uniform(step) * kept_mass;
  double acc = 0;
  std::int32_t token = order[static_cast<std::size_t>(keep - 1)];
  for (Index i = 0; i < keep; ++i) {
    acc += std::exp(z[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] - lse);
    if (u < acc) {
      token = order[static_cast<std::size_t>(i)];
      break;
    }
  }
  double const policy = z[static_cast<std::size_t>(token)] - lse;
  return {token, static_cast<float>(policy - std::log(kept_mass)), static_cast<float>(policy)};
}

/// One token per row, drawn as sample_token(row, V, o, sequences[t], step) draws it; rows in
/// parallel (counter-based draws: the same tokens whatever the thread count).
///   logits: (n, V), sequences: (n); token, logprob, policy_logprob: (n)
inline void sample_tokens(ConstMatrixView<float> logits, SamplingOptions const& o, std::uint64_t const* sequences,
                          std::uint64_t step, std::int32_t* token, float* logprob, float* policy_logprob) {
  float const T = o.greedy ? 1.0f : o.temperature;
  TINYLORA_CHECK(T > 0, "sample_token(): temperature must be > 0 (got ", T, "). Hint: use greedy decoding instead.");
#pragma omp parallel for schedule(static) if (logits.rows > 1)
  for (Index t = 0; t < logits.rows; ++t) {
    Sampled const s = sample_token(logits.data + t * logits.ld, logits.cols, o, sequences[t], step);
    token[t] = s.token;
    logprob[t] = s.logprob;
    policy_logprob[t] = s.policy_logprob;
  }
}

}  // namespace tinylora::backend::cpu
