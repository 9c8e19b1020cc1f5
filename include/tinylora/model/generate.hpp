// tinylora/model/generate.hpp: batched incremental generation with a KV cache. G samples of one
// prompt share its prefill (the prompt is encoded once, its cache slot copied); sequences stop
// independently at a stop token or the length limit. Each sampled token comes with its log-prob
// under the sampling distribution (after temperature, top-k, top-p) and under the policy at the
// temperature alone (what GRPO's importance ratio uses).
#pragma once

#include "tinylora/core/eigen.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "tinylora/core/rng.hpp"
#include "tinylora/model/decoder.hpp"

namespace tinylora::model {

struct SamplingOptions {
  bool greedy = false;       // argmax; temperature, top-k and top-p are ignored
  float temperature = 1.0f;
  int top_k = 0;             // 0: no top-k
  float top_p = 1.0f;        // 1: no nucleus truncation
  std::uint64_t seed = 0;    // draws are keyed by (seed, sequence id, step): batching never changes them
};

struct GenerationOptions {
  Index max_new_tokens = 128;
  Index n_samples = 1;                  // G completions per prompt
  std::vector<std::int32_t> stop_ids;   // e.g. the model's EOS / <|im_end|>
  SamplingOptions sampling;
};

struct Completion {
  Index prompt = 0;                     // index of the prompt
  Index sample = 0;                     // 0..G-1
  std::vector<std::int32_t> tokens;     // generated tokens (the stop token included when hit)
  std::vector<float> logprobs;          // log q(token): the sampling distribution
  std::vector<float> policy_logprobs;   // log softmax(logits / T)(token)
  bool stopped = false;                 // hit a stop token (else the length limit)
};

/// Picks a token from one row of logits. Returns (token, log q(token), log softmax(logits/T)(token)).
struct Sampled {
  std::int32_t token;
  float logprob;
  float policy_logprob;
};

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
    double const lse = backend::cpu::log_sum_exp(zf.data(), vocab);
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

/// One decode step of the active rows and a token drawn for each. A decoder that samples in its own
/// memory (backend::Cuda's: only the tokens come back) does it itself; otherwise every row of the
/// host logits is drawn in parallel (counter-based RNG: the same tokens whatever the thread count).
template <class Model>
std::vector<Sampled> decode_and_sample(Model const& model, std::span<std::int32_t const> tokens, std::span<Index const> slots,
                                       typename Model::Cache& cache, SamplingOptions const& o, std::uint64_t step) {
  if constexpr (requires { model.decode_sample(tokens, slots, cache, o, step); }) {
    return model.decode_sample(tokens, slots, cache, o, step);
  } else {
    HostMatrix const logits = model.decode_step(tokens, slots, cache);  // (n_active, V)
    std::vector<Sampled> drawn(slots.size());
    auto const n = static_cast<Index>(slots.size());
#pragma omp parallel for schedule(static) if (n > 1)
    for (Index i = 0; i < n; ++i)
      drawn[static_cast<std::size_t>(i)] = sample_token(logits.row(i).data(), logits.cols(), o,
                                                        static_cast<std::uint64_t>(slots[static_cast<std::size_t>(i)]), step);
    return drawn;
  }
}

/// Generates n_samples completions for every prompt. Completion order: prompt-major, then sample.
template <class B, class P>
std::vector<Completion> generate(Decoder<B, P> const& model, std::vector<std::vector<std::int32_t>> const& prompts,
                                 GenerationOptions const& o) {
  TINYLORA_CHECK(o.n_samples >= 1 && o.max_new_tokens >= 0, "generate(): need n_samples >= 1 and max_new_tokens >= 0");
  Index const n_prompts = static_cast<Index>(prompts.size()), G = o.n_samples, V = model.config().vocab;
  Index longest = 0;
  for (auto const& p : prompts) {
    TINYLORA_CHECK(!p.empty(), "generate(): an empty prompt. Hint: every prompt needs at least one token.");
    longest = std::max<Index>(longest, static_cast<Index>(p.size()));
  }
  std::vector<Completion> out(static_cast<std::size_t>(n_prompts * G));
  if (n_prompts == 0) return out;
  typename Decoder<B, P>::Cache cache(model.config().n_layers, n_prompts * G, longest + o.max_new_tokens, model.config().kv_dim());
  // Prefill each prompt once into slot p G, then share it with the other samples.
  PackedBatch batch;
  std::vector<Index> first_slots;
  for (Index p = 0; p < n_prompts; ++p) {
    batch.add(prompts[static_cast<std::size_t>(p)]);
    first_slots.push_back(p * G);
  }
  HostMatrix const first_logits = model.prefill(batch, cache, first_slots);  // (n_prompts, V)
  std::vector<Index> active;
  std::vector<std::int32_t> next;
  for (Index p = 0; p < n_prompts; ++p)
    for (Index g = 0; g < G; ++g) {
      Index const slot = p * G + g;
      if (g > 0) cache.copy_slot(p * G, slot);
      auto& c = out[static_cast<std::size_t>(slot)];
      c.prompt = p;
      c.sample = g;
      if (o.max_new_tokens == 0) continue;
      Sampled const s = sample_token(first_logits.row(p).data(), V, o.sampling, static_cast<std::uint64_t>(slot), 0);
      c.tokens.push_back(s.token);
      c.logprobs.push_back(s.logprob);
      c.policy_logprobs.push_back(s.policy_logprob);
      c.stopped = std::find(o.stop_ids.begin(), o.stop_ids.end(), s.token) != o.stop_ids.end();
      if (!c.stopped && o.max_new_tokens > 1) {
        active.push_back(slot);
        next.push_back(s.token);
      }
    }
  TINYLORA_CHECK(o.sampling.greedy || o.sampling.temperature > 0, "generate(): temperature must be > 0 (got ",
                 o.sampling.temperature, "). Hint: use greedy decoding instead.");
  for (Index step = 1; !active.empty(); ++step) {
    std::vector<Sampled> const drawn = decode_and_sample(model, next, active, cache, o.sampling, static_cast<std::uint64_t>(step));
    std::vector<Index> still;
    std::vector<std::int32_t> following;
    for (std::size_t i = 0; i < active.size(); ++i) {
      auto& c = out[static_cast<std::size_t>(active[i])];
      Sampled const s = drawn[i];
      c.tokens.push_back(s.token);
      c.logprobs.push_back(s.logprob);
      c.policy_logprobs.push_back(s.policy_logprob);
      c.stopped = std::find(o.stop_ids.begin(), o.stop_ids.end(), s.token) != o.stop_ids.end();
      if (!c.stopped && static_cast<Index>(c.tokens.size()) < o.max_new_tokens) {
        still.push_back(active[i]);
        following.push_back(s.token);
      }
    }
    active = std::move(still);
    next = std::move(following);
  }
  return out;
}

}  // namespace tinylora::model
