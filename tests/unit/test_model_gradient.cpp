// The gradient of the masked loss w.r.t. theta through the whole decoder (recompute-per-layer
// backward), checked by central finite differences on the tiny random Llama (tied embeddings) and
// Qwen2 (q/k/v biases) models, for TinyLoRA with tiling and for LoRA-XS untied.
#include <doctest/doctest.h>

#include <cmath>

#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/tying/strategies.hpp"

using namespace tinylora;
using Model = model::Decoder<backend::Cpu, precision::Fp32>;

namespace {
/// Two packed sequences of different lengths, the second half of each supervised.
std::pair<model::PackedBatch, std::vector<std::uint8_t>> batch_of(Index vocab, std::uint64_t seed) {
  CounterRng const rng(seed, streams::of(streams::kTest, 7));
  model::PackedBatch b;
  std::vector<std::uint8_t> mask;
  std::uint64_t draw = 0;
  for (Index len : {Index{11}, Index{6}}) {
    std::vector<std::int32_t> seq;
    for (Index t = 0; t < len; ++t) {
      seq.push_back(static_cast<std::int32_t>(rng.bits64(draw++) % static_cast<std::uint64_t>(vocab)));
      mask.push_back(t >= len / 2 ? 1 : 0);
    }
    b.add(seq);
  }
  return {b, mask};
}

template <class A, class T>
void check_gradient(std::string const& name, A adapter, T tie, double tolerance) {
  auto const seed = test::seed(31);
  INFO("model " << name << ", adapter " << A::name << ", tie " << T::name);
  auto net = Model::load_hf(test::source_dir() / "tests/reference/fixtures" / name);
  model::AdaptedModel<A, T, precision::Fp32, backend::Cpu> adapted(net, adapter, tie);
  auto const [batch, mask] = batch_of(net.config().vocab, seed);
  std::vector<float> theta(static_cast<std::size_t>(adapted.count()));
  CounterRng const rng(seed, 3);
  for (std::size_t i = 0; i < theta.size(); ++i) theta[i] = 0.05f * rng.normal(i);
  adapted.set_theta(theta);
  auto const [loss, g] = adapted.loss_and_gradient(batch, mask);
  CHECK(loss.mean() == doctest::Approx(net.loss(batch, mask).mean()).epsilon(1e-6));
  // Central differences in double of the fp32 forward; L is smooth in theta.
  float const eps = 2e-3f;
  std::vector<double> fd(theta.size());
  for (std::size_t j = 0; j < theta.size(); ++j) {
    auto plus = theta, minus = theta;
    plus[j] += eps;
    minus[j] -= eps;
    adapted.set_theta(plus);
    double const lp = net.loss(batch, mask).mean();
    adapted.set_theta(minus);
    double const lm = net.loss(batch, mask).mean();
    fd[j] = (lp - lm) / (2.0 * eps);
  }
  double num = 0, a = 0, b = 0;
  for (std::size_t j = 0; j < theta.size(); ++j) {
    num += (g[j] - fd[j]) * (g[j] - fd[j]);
    a += double{g[j]} * g[j];
    b += fd[j] * fd[j];
  }
  double const err = std::sqrt(num) / (std::sqrt(a) + std::sqrt(b));
  MESSAGE("relative error " << err << " over " << theta.size() << " scalars; |g| = " << std::sqrt(a));
  CHECK(err <= tolerance);
  CHECK(std::sqrt(a) > 1e-6);
  // Disabled adapters: the base model, and no gradient reaches theta.
  adapted.set_enabled(false);
  auto const [base_loss, g0] = adapted.loss_and_gradient(batch, mask);
  CHECK(base_loss.mean() != doctest::Approx(loss.mean()));
  for (float x : g0) CHECK(x == 0.0f);
}
}  // namespace

TEST_CASE("theta-gradient of the whole tiny Llama: TinyLoRA (paper) with tiling matches finite differences") {
  adapters::TinyLora<adapters::Paper> kind;
  kind.u = 2;
  check_gradient("tiny_llama", kind, tying::Tiling{3}, 2e-3);
}

TEST_CASE("theta-gradient of the whole tiny Qwen2: TinyLoRA (peft) with PEFT's weight tying matches finite differences") {
  adapters::TinyLora<adapters::Peft> kind;
  kind.u = 1;
  check_gradient("tiny_qwen2", kind, tying::PeftRatio{0.5}, 2e-3);
}

TEST_CASE("theta-gradient of the whole tiny Llama: LoRA-XS untied matches finite differences") {
  check_gradient("tiny_llama", adapters::LoraXs{}, tying::Untied{}, 2e-3);
}

TEST_CASE("a nonlinear objective of the token log-probs at temperature 0.7: its theta-gradient matches finite differences") {
  // J(logp) = sum_t c_t logp_t + 0.5 sum_t exp(2 logp_t): the shape of a PPO ratio term (exp of
  // log-probs) plus a linear policy-gradient term, differentiated through Decoder::objective_and_backward.
  auto const seed = test::seed(37);
  auto net = Model::load_hf(test::source_dir() / "tests/reference/fixtures/tiny_llama");
  using A = adapters::TinyLora<adapters::Paper>;
  model::AdaptedModel<A, tying::Tiling, precision::Fp32, backend::Cpu> adapted(net, A{.r = 2, .u = 2, .seed = seed},
                                                                              tying::Tiling{3});
  auto const [batch, mask] = batch_of(net.config().vocab, seed);
  float const T = 0.7f;
  std::vector<float> c;
  CounterRng const rng(seed, 5);
  for (std::size_t i = 0; i < 64; ++i) c.push_back(rng.normal(i));
  auto const J = [&](std::span<float const> logp) {
    double acc = 0;
    for (std::size_t t = 0; t < logp.size(); ++t) acc += c[t] * logp[t] + 0.5 * std::exp(2.0 * logp[t]);
    return acc;
  };
  auto const dJ = [&](std::span<float const> logp) {
    std::vector<float> d(logp.size());
    for (std::size_t t = 0; t < logp.size(); ++t) d[t] = static_cast<float>(c[t] + std::exp(2.0 * logp[t]));
    return d;
  };
  std::vector<float> theta(static_cast<std::size_t>(adapted.count()));
  for (std::size_t i = 0; i < theta.size(); ++i) theta[i] = 0.05f * rng.normal(100 + i);
  adapted.set_theta(theta);
  auto const [logp, g] = adapted.objective_and_gradient(batch, mask, T, dJ);
  // The log-probs are those of token_logprobs(); at T = 1 they sum to -loss.sum_nll.
  auto const again = net.token_logprobs(batch, mask, T);
  REQUIRE(again.size() == logp.size());
  for (std::size_t t = 0; t < logp.size(); ++t) CHECK(logp[t] == again[t]);
  double sum1 = 0;
  for (float x : net.token_logprobs(batch, mask, 1.0f)) sum1 += x;
  CHECK(-sum1 == doctest::Approx(net.loss(batch, mask).sum_nll).epsilon(1e-5));
  float const eps = 2e-3f;
  double num = 0, a = 0, b = 0;
  for (std::size_t j = 0; j < theta.size(); ++j) {
    auto plus = theta, minus = theta;
    plus[j] += eps;
    minus[j] -= eps;
    adapted.set_theta(plus);
    double const jp = J(net.token_logprobs(batch, mask, T));
    adapted.set_theta(minus);
    double const jm = J(net.token_logprobs(batch, mask, T));
    double const fd = (jp - jm) / (2.0 * eps);
    num += (g[j] - fd) * (g[j] - fd);
    a += double{g[j]} * g[j];
    b += fd * fd;
  }
  double const err = std::sqrt(num) / (std::sqrt(a) + std::sqrt(b));
  MESSAGE("relative error " << err << " over " << theta.size() << " scalars; |g| = " << std::sqrt(a));
  CHECK(err <= 2e-3);
  CHECK(std::sqrt(a) > 1e-6);
}

TEST_CASE("merging the adapter into the weights gives the fused forward; unmerging restores the base") {
  auto const seed = test::seed(32);
  auto net = Model::load_hf(test::source_dir() / "tests/reference/fixtures/tiny_qwen2");
  adapters::TinyLora<adapters::Paper> kind;
  kind.u = 2;
  model::AdaptedModel<adapters::TinyLora<adapters::Paper>, tying::Tiling, precision::Fp32, backend::Cpu> adapted(
      net, kind, tying::Tiling{4});
  auto const [batch, mask] = batch_of(net.config().vocab, seed);
  adapted.set_enabled(false);
  HostMatrix const base = net.logits(batch);
  adapted.set_enabled(true);
  std::vector<float> theta(static_cast<std::size_t>(adapted.count()), 0.2f);
  adapted.set_theta(theta);
  HostMatrix const fused = net.logits(batch);
  CHECK((fused - base).cwiseAbs().maxCoeff() > 1e-3);  // the adapter changes the function
  adapted.merge();
  HostMatrix const merged = net.logits(batch);
  CHECK((merged - fused).cwiseAbs().maxCoeff() <= 1e-4 * fused.cwiseAbs().maxCoeff());
  CHECK_THROWS_WITH_AS(adapted.set_theta(theta), doctest::Contains("unmerge() first"), Error);
  adapted.unmerge();
  adapted.set_enabled(false);
  HostMatrix const restored = net.logits(batch);
  CHECK((restored - base).cwiseAbs().maxCoeff() <= 1e-5 * base.cwiseAbs().maxCoeff());
}
