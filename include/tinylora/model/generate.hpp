// tinylora/model/generate.hpp: batched incremental generation with a KV cache. G samples of one
// prompt share its prefill (the prompt is encoded once, its cache slot copied); sequences stop
// independently at a stop token or the length limit. Each sampled token comes with its log-prob
// under the sampling distribution (after temperature, top-k, top-p) and under the policy at the
// temperature alone (what GRPO's importance ratio uses).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tinylora/backend/cpu/sampling.hpp"
#include "tinylora/backend/sampling.hpp"
#include "tinylora/model/decoder.hpp"

namespace tinylora::model {

using backend::Sampled;
using backend::SamplingOptions;

struct GenerationOptions {
  Index max_new_tokens = 128;
  Index n_samples = 1;                  // G completions per prompt
  std::vector<std::int32_t> stop_ids;   // e.g. the model's EOS / <|im_end|>
  SamplingOptions sampling;
  /// Sequence id of the first completion: completion j (prompt-major) draws as sequence
  /// first_sequence + j, so prompts split over several calls can draw what one call would.
  std::uint64_t first_sequence = 0;
};

struct Completion {
  Index prompt = 0;                     // index of the prompt
  Index sample = 0;                     // 0..G-1
  std::vector<std::int32_t> tokens;     // generated tokens (the stop token included when hit)
  std::vector<float> logprobs;          // log q(token): the sampling distribution
  std::vector<float> policy_logprobs;   // log softmax(logits / T)(token)
  bool stopped = false;                 // hit a stop token (else the length limit)
};

/// Picks a token from one row of logits (backend/cpu/sampling.hpp; every backend's sample_tokens
/// draws the same).   logits: (vocab)
inline Sampled sample_token(float const* logits, Index vocab, SamplingOptions const& o, std::uint64_t sequence,
                            std::uint64_t step) {
  return backend::cpu::sample_token(logits, vocab, o, sequence, step);
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
      Sampled const s = sample_token(first_logits.row(p).data(), V, o.sampling, o.first_sequence + static_cast<std::uint64_t>(slot), 0);
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
    std::vector<Sampled> const drawn = model.decode_sample(next, active, cache, o.sampling, static_cast<std::uint64_t>(step), o.first_sequence);
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
