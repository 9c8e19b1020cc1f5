// tinylora/backend/sampling.hpp: what every backend's token sampler takes and returns
// (B::sample_tokens in the Backend concept): the options of one draw and the drawn token with its
// log-probs. Draws are keyed by (seed, sequence id, step) through core/rng.hpp's counter-based
// generator, so a backend, a batch composition or a thread count never changes which token is drawn.
#pragma once

#include <cstdint>

namespace tinylora::backend {

struct SamplingOptions {
  bool greedy = false;       // argmax; temperature, top-k and top-p are ignored
  float temperature = 1.0f;
  int top_k = 0;             // 0: no top-k
  float top_p = 1.0f;        // 1: no nucleus truncation
  std::uint64_t seed = 0;    // draws are keyed by (seed, sequence id, step): batching never changes them
};

/// One drawn token: (token, log q(token) under the sampling distribution, log softmax(logits / T)(token)).
struct Sampled {
  std::int32_t token;
  float logprob;
  float policy_logprob;
};

}  // namespace tinylora::backend
