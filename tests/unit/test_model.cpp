// The decoder on the real SmolLM2-135M-Instruct: configuration and tokenizer from the GGUF, the
// incremental (KV cache) path against the full forward, packing independence, generation and
// sampling. Comparisons with transformers' logits live in test_model_reference.cpp.
#include <doctest/doctest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "../model_support.hpp"
#include "../support.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/model/generate.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/text/gguf_tokenizer.hpp"

using namespace tinylora;
using Model = model::Decoder<backend::Cpu, precision::Fp32>;

namespace {
struct Real {
  Model model;
  text::Tokenizer tokenizer;
};
Real const* real() {
  static std::unique_ptr<Real> loaded = [] {
    std::unique_ptr<Real> r;
    if (auto const p = test::real_model_path()) {
      auto const f = io::GgufFile::open(*p);
      auto config = model::config_from_gguf(f);
      auto weights = model::load_weights_gguf<backend::Cpu, precision::Fp32>(f, config);
      r = std::make_unique<Real>(Real{Model(std::move(config), std::move(weights)), text::tokenizer_from_gguf(f)});
    }
    return r;
  }();
  return loaded.get();
}
std::vector<std::int32_t> chat_prompt(text::Tokenizer const& tok, std::string const& question) {
  auto const s = text::ChatTemplate::smollm2().apply_chat_template({{"user", question}}, true);
  return tok.encode(s);
}
}  // namespace

TEST_CASE("SmolLM2 configuration and tokenizer from the GGUF") {
  auto const* r = real();
  if (r == nullptr) return;
  auto const& c = r->model.config();
  CHECK(c.architecture == "llama");
  CHECK(c.n_layers == 30);
  CHECK(c.hidden == 576);
  CHECK(c.n_heads == 9);
  CHECK(c.n_kv_heads == 3);
  CHECK(c.head_dim == 64);
  CHECK(c.intermediate == 1536);
  CHECK(c.vocab == 49152);
  CHECK(c.tied_embeddings);
  CHECK(c.rope_theta == 100000.0f);
  CHECK(c.eos == 2);
  // The GGUF's tokenizer gives the ids of the Hugging Face tokenizer.json fixture.
  auto const json = text::Tokenizer::from_tokenizer_json(test::source_dir() / "tests/reference/fixtures/tokenizer_smollm2.json");
  for (std::string const s : {"Natalia sold clips to 48 of her friends in April.", "  12,345.67 #### 72\n\n", "<|im_start|>user\nhi<|im_end|>"})
    CHECK(r->tokenizer.encode(s) == json.encode(s));
}

TEST_CASE("the KV-cache decode step gives the full forward's logits") {
  auto const* r = real();
  if (r == nullptr) return;
  auto const prompt = chat_prompt(r->tokenizer, "What is 12 times 7?");
  std::vector<std::int32_t> const extra{r->tokenizer.encode("12 times 7 is 84.")};
  model::PackedBatch full;
  std::vector<std::int32_t> all = prompt;
  all.insert(all.end(), extra.begin(), extra.end());
  full.add(all);
  HostMatrix const want = r->model.logits(full);  // (n, V)
  Model::Cache cache(r->model.config().n_layers, 1, static_cast<Index>(all.size()), r->model.config().kv_dim());
  model::PackedBatch pre;
  pre.add(prompt);
  std::vector<Index> const slot{0};
  (void)r->model.hidden_states(pre, &cache, slot);
  for (std::size_t i = 0; i < extra.size(); ++i) {
    HostMatrix const got = r->model.decode_step(std::span<std::int32_t const>(&extra[i], 1), slot, cache);
    auto const row = static_cast<Index>(prompt.size() + i);
    double const err = (got.row(0) - want.row(row)).cwiseAbs().maxCoeff();
    double const scale = want.row(row).cwiseAbs().maxCoeff();
    INFO("position " << row << ": max |diff| " << err << " of max |logit| " << scale);
    CHECK(err <= 1e-4 * scale);
  }
}

TEST_CASE("threading: per-sequence parts give the serial forward's hidden states, decode logits and errors") {
  auto const* r = real();
  if (r == nullptr) return;
  int const saved = omp_get_max_threads();
  omp_set_num_threads(2);  // two parts whatever the environment says
  model::PackedBatch batch;
  std::vector<std::vector<std::int32_t>> prompts;
  for (char const* q : {"What is 2 + 3?", "Name a colour.", "Count to five, please.", "Hi"}) prompts.push_back(chat_prompt(r->tokenizer, q));
  for (auto const& p : prompts) batch.add(p);
  HostMatrix const parallel_h = r->model.hidden_states(batch);        // (n, d) two threads, two sequences each
  HostMatrix const serial_h = r->model.hidden_states_serial(batch);   // (n, d) one part
  double const err = (parallel_h - serial_h).cwiseAbs().maxCoeff();
  INFO("max |diff| " << err << " of max |h| " << serial_h.cwiseAbs().maxCoeff());
  CHECK(err <= 1e-5 * serial_h.cwiseAbs().maxCoeff());
  // Decoding 128 rows: two parts of 64 rows against all rows on one thread, from identical caches.
  Index longest = 0;
  for (auto const& p : prompts) longest = std::max(longest, static_cast<Index>(p.size()));
  auto prefill = [&] {
    auto cache = std::make_unique<Model::Cache>(r->model.config().n_layers, 128, longest + 2, r->model.config().kv_dim());
    std::vector<Index> const slots{0, 1, 2, 3};
    (void)r->model.hidden_states(batch, cache.get(), slots);
    for (Index s = 4; s < 128; ++s) cache->copy_slot(s % 4, s);
    return cache;
  };
  auto split_cache = prefill(), serial_cache = prefill();
  std::vector<std::int32_t> tokens(128);
  std::vector<Index> slots(128);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::int32_t>(11 * i + 7);
    slots[i] = static_cast<Index>(i);
  }
  HostMatrix const split = r->model.decode_step(tokens, slots, *split_cache);    // (128, V)
  HostMatrix const serial = r->model.decode_rows(tokens, slots, *serial_cache);  // (128, V)
  double const derr = (split - serial).cwiseAbs().maxCoeff();
  INFO("decode: max |diff| " << derr << " of max |logit| " << serial.cwiseAbs().maxCoeff());
  CHECK(derr <= 1e-5 * serial.cwiseAbs().maxCoeff());
  CHECK(split_cache->length == serial_cache->length);
  // An error inside one part (a token id outside the vocabulary, in the second part) reaches the caller.
  model::PackedBatch bad = batch;
  bad.add(std::vector<std::int32_t>{1, 2, static_cast<std::int32_t>(r->model.config().vocab + 5)});
  CHECK_THROWS_WITH_AS((void)r->model.hidden_states(bad), doctest::Contains("outside the vocabulary"), Error);
  omp_set_num_threads(saved);
}

TEST_CASE("packing: sequences scored together equal sequences scored alone") {
  auto const* r = real();
  if (r == nullptr) return;
  auto const a = chat_prompt(r->tokenizer, "Name a prime number.");
  auto const b = r->tokenizer.encode("The quick brown fox jumps over the lazy dog.");
  model::PackedBatch both, only_b;
  both.add(a);
  both.add(b);
  only_b.add(b);
  HostMatrix const together = r->model.logits(both);
  HostMatrix const alone = r->model.logits(only_b);
  double const err = (together.bottomRows(alone.rows()) - alone).cwiseAbs().maxCoeff();
  CHECK(err <= 1e-4 * alone.cwiseAbs().maxCoeff());
  // The masked loss is the mean over supervised targets only.
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(both.n_tokens()), 0);
  for (std::size_t t = a.size() + 1; t < mask.size(); ++t) mask[t] = 1;
  auto const loss = r->model.loss(both, mask);
  CHECK(loss.n_tokens == static_cast<Index>(b.size()) - 1);
  double manual = 0;
  for (Index t = 0; t + 1 < alone.rows(); ++t) {
    double const m = alone.row(t).maxCoeff();
    double const lse = m + std::log((alone.row(t).array().cast<double>() - m).exp().sum());
    manual += lse - alone(t, b[static_cast<std::size_t>(t + 1)]);
  }
  CHECK(loss.mean() == doctest::Approx(manual / static_cast<double>(b.size() - 1)).epsilon(1e-5));
}

TEST_CASE("greedy generation: answers, stops at <|im_end|>, and equals argmax of the full forward") {
  auto const* r = real();
  if (r == nullptr) return;
  auto const prompt = chat_prompt(r->tokenizer, "What is the capital of France?");
  model::GenerationOptions o;
  o.max_new_tokens = 16;
  o.sampling.greedy = true;
  o.stop_ids = {r->model.config().eos};
  auto const c = model::generate(r->model, {prompt}, o);
  REQUIRE(c.size() == 1);
  std::string const text = r->tokenizer.decode(c[0].tokens, true);
  INFO("completion: " << text);
  CHECK(text.find("Paris") != std::string::npos);
  CHECK(c[0].stopped);
  // Recompute every step without a cache.
  std::vector<std::int32_t> seq = prompt;
  for (std::size_t i = 0; i < c[0].tokens.size(); ++i) {
    model::PackedBatch b;
    b.add(seq);
    std::vector<Index> const last{b.n_tokens() - 1};
    HostMatrix const lg = r->model.logits(b, last);
    Index best = 0;
    lg.row(0).maxCoeff(&best);
    CHECK(best == c[0].tokens[i]);
    seq.push_back(c[0].tokens[i]);
  }
}

TEST_CASE("sampling: G samples of one prompt share its prefill and equal independent runs; seeds reproduce") {
  auto const* r = real();
  if (r == nullptr) return;
  auto const seed = test::seed(2024);
  auto const prompt = chat_prompt(r->tokenizer, "Write a number.");
  model::GenerationOptions o;
  o.max_new_tokens = 6;
  o.n_samples = 3;
  o.sampling = {.greedy = false, .temperature = 1.0f, .top_k = 50, .top_p = 0.9f, .seed = seed};
  auto const shared = model::generate(r->model, {prompt}, o);
  auto const again = model::generate(r->model, {prompt}, o);
  REQUIRE(shared.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(shared[i].tokens == again[i].tokens);
    CHECK(shared[i].sample == static_cast<Index>(i));
    for (std::size_t t = 0; t < shared[i].tokens.size(); ++t) {
      CHECK(shared[i].logprobs[t] <= 1e-6f);
      CHECK(shared[i].logprobs[t] >= shared[i].policy_logprobs[t] - 1e-5f);  // truncation only raises q
    }
  }
  // The same slots without sharing: three copies of the prompt, one sample each.
  model::GenerationOptions one = o;
  one.n_samples = 1;
  auto const separate = model::generate(r->model, {prompt, prompt, prompt}, one);
  for (std::size_t i = 0; i < 3; ++i) CHECK(separate[i].tokens == shared[i].tokens);
}

TEST_CASE("sample_token: hand-computed distributions") {
  std::vector<float> const logits{std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  model::SamplingOptions greedy{.greedy = true};
  auto const g = model::sample_token(logits.data(), 3, greedy, 0, 0);
  CHECK(g.token == 0);
  CHECK(g.logprob == doctest::Approx(std::log(0.5)));
  // top-k = 2 keeps {0.5, 0.3}: q = (0.625, 0.375).
  int counts[3] = {0, 0, 0};
  model::SamplingOptions topk{.greedy = false, .temperature = 1.0f, .top_k = 2, .top_p = 1.0f, .seed = 7};
  for (std::uint64_t step = 0; step < 4000; ++step) {
    auto const s = model::sample_token(logits.data(), 3, topk, 1, step);
    ++counts[s.token];
    CHECK(s.logprob == doctest::Approx(s.token == 0 ? std::log(0.625) : std::log(0.375)).epsilon(1e-5));
    CHECK(s.policy_logprob == doctest::Approx(s.token == 0 ? std::log(0.5) : std::log(0.3)).epsilon(1e-5));
  }
  CHECK(counts[2] == 0);
  CHECK(counts[0] / 4000.0 == doctest::Approx(0.625).epsilon(0.05));
  // top-p = 0.6 keeps the smallest prefix with mass >= 0.6: {0.5, 0.3}. Temperature 2 flattens.
  model::SamplingOptions topp{.greedy = false, .temperature = 2.0f, .top_k = 0, .top_p = 0.6f, .seed = 7};
  auto const p = model::sample_token(logits.data(), 3, topp, 0, 0);
  double const z0 = std::sqrt(0.5), z1 = std::sqrt(0.3), z2 = std::sqrt(0.2), Z = z0 + z1 + z2;
  double const q = (p.token == 0 ? z0 : z1) / Z;
  CHECK(p.policy_logprob == doctest::Approx(std::log(q)).epsilon(1e-5));
  CHECK_THROWS_WITH_AS(model::sample_token(logits.data(), 3, {.greedy = false, .temperature = 0.0f}, 0, 0),
                       doctest::Contains("temperature must be > 0"), Error);
}
