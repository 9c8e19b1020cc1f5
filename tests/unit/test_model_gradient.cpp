// The gradient of the masked loss w.r.t. theta through the whole decoder (recompute-per-layer
// backward), checked by central finite differences on the tiny random Llama (tied embeddings) and
// Qwen2 (q/k/v biases) models, for TinyLoRA with tiling and for LoRA-XS untied.
#include <doctest/doctest.h>

#include <cmath>

#include "../adapter_matrix.hpp"
#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/core/type_list.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/optim/schedule.hpp"
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
  model::AdaptedModel<Recipe<A, T, precision::Fp32, optim::AdamW, backend::Cpu>> adapted(net, adapter, tie);
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
  double const err = test::relative_error(g, fd);
  MESSAGE("relative error " << err << " over " << theta.size() << " scalars");
  CHECK(err <= tolerance);
  CHECK(optim::global_norm(g) > 1e-6);
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


TEST_CASE("theta-gradient of the whole tiny Qwen2 for every adapter kind x tie strategy: directional finite differences") {
  // For each valid (adapter, tie) pair: g . d against (L(theta + eps d) - L(theta - eps d)) / (2 eps)
  // along two unit directions d of the full theta (all slots at once, so LoRA's and Full's
  // thousands of slots are covered without one difference per slot).
  auto const seed = test::seed(47);
  auto net = Model::load_hf(test::source_dir() / "tests/reference/fixtures/tiny_qwen2");
  auto const [batch, mask] = batch_of(net.config().vocab, seed);
  int checked = 0;
  for_each_pair(test::AllAdapters{}, test::AllTies{}, [&]<class A, class T>() {
    if constexpr (!(A::slots_depend_on_shape && T::mixes_module_types)) {
      INFO("adapter " << A::name << ", tie " << T::name);
      model::AdaptedModel<Recipe<A, T, precision::Fp32, optim::AdamW, backend::Cpu>> adapted(net, test::make_adapter<A>(seed), test::make_tie<T>());
      std::vector<float> theta(static_cast<std::size_t>(adapted.count()));
      CounterRng const rng(seed, 11);
      // Full and LoRA slots are weight-sized: keep Delta W small against W.
      float const scale = adapted.count() > 200 ? 0.01f : 0.05f;
      for (std::size_t i = 0; i < theta.size(); ++i) theta[i] = scale * rng.normal(i);
      adapted.set_theta(theta);
      auto const [loss, g] = adapted.loss_and_gradient(batch, mask);
      for (std::uint64_t k = 0; k < 2; ++k) {
        // d_0 = g / |g| (the largest signal), d_1 = the normalized sum of g / |g| and a random unit
        // vector r (also probes what is orthogonal to g), so g . d stays well above the loss's rounding.
        std::vector<float> d(theta.size()), r(theta.size());
        double gn = 0, rn = 0;
        for (std::size_t i = 0; i < d.size(); ++i) {
          gn += double{g[i]} * g[i];
          rn += double{r[i] = rng.normal(1000000 + i)} * r[i];
        }
        double norm = 0;
        for (std::size_t i = 0; i < d.size(); ++i) norm += double{d[i] = static_cast<float>(g[i] / std::sqrt(gn) + (k == 0 ? 0.0 : r[i] / std::sqrt(rn)))} * d[i];
        for (float& x : d) x = static_cast<float>(x / std::sqrt(norm));
        double gd = 0;
        for (std::size_t i = 0; i < d.size(); ++i) gd += double{g[i]} * d[i];
        // A step that changes L by about 0.008: large against the fp32 loss's rounding, small against
        // the curvature (the Fork convention's scale makes L steep in theta).
        float const eps = static_cast<float>(4e-3 / std::max(1.0, std::abs(gd)));
        auto plus = theta, minus = theta;
        for (std::size_t i = 0; i < d.size(); ++i) {
          plus[i] += eps * d[i];
          minus[i] -= eps * d[i];
        }
        adapted.set_theta(plus);
        double const lp = net.loss(batch, mask).mean();
        adapted.set_theta(minus);
        double const lm = net.loss(batch, mask).mean();
        adapted.set_theta(theta);
        double const fd = (lp - lm) / (2.0 * eps);
        double const err = std::abs(gd - fd) / (std::abs(gd) + std::abs(fd) + 1e-6);
        INFO("direction " << k << ": g.d = " << gd << ", finite difference " << fd << ", relative error " << err << ", b = " << theta.size());
        CHECK(err <= 2e-3);
        CHECK(std::abs(gd) > 1e-5);
      }
      ++checked;
    }
  });
  CHECK(checked == 29);  // 7 adapters x 5 ties minus the 2 shape-dependent adapters x 3 type-mixing ties
}

TEST_CASE("a nonlinear objective of the token log-probs at temperature 0.7: its theta-gradient matches finite differences") {
  // J(logp) = sum_t c_t logp_t + 0.5 sum_t exp(2 logp_t): the shape of a PPO ratio term (exp of
  // log-probs) plus a linear policy-gradient term, differentiated through Decoder::objective_and_backward.
  auto const seed = test::seed(37);
  auto net = Model::load_hf(test::source_dir() / "tests/reference/fixtures/tiny_llama");
  using A = adapters::TinyLora<adapters::Paper>;
  model::AdaptedModel<Recipe<A, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>> adapted(net, A{.r = 2, .u = 2, .seed = seed},
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
  std::vector<double> fd(theta.size());
  for (std::size_t j = 0; j < theta.size(); ++j) {
    auto plus = theta, minus = theta;
    plus[j] += eps;
    minus[j] -= eps;
    adapted.set_theta(plus);
    double const jp = J(net.token_logprobs(batch, mask, T));
    adapted.set_theta(minus);
    double const jm = J(net.token_logprobs(batch, mask, T));
    fd[j] = (jp - jm) / (2.0 * eps);
  }
  double const err = test::relative_error(g, fd);
  MESSAGE("relative error " << err << " over " << theta.size() << " scalars");
  CHECK(err <= 1e-3);
  CHECK(optim::global_norm(g) > 1e-6);
}

namespace {
/// The logits of sequence 0's last token through the KV cache: its prefix prefilled, then one
/// decode step (which multiplies by the decoder's packed copies of the weights).   returns (1, V)
HostMatrix decode_last(Model const& net, model::PackedBatch const& batch) {
  std::vector<std::int32_t> const seq(batch.ids.begin(), batch.ids.begin() + batch.offsets[1]);
  Model::Cache cache(net.config().n_layers, 1, static_cast<Index>(seq.size()), net.config().kv_dim());
  model::PackedBatch prefix;
  prefix.add(std::span<std::int32_t const>(seq).first(seq.size() - 1));
  std::vector<Index> const slot{0};
  (void)net.hidden_states(prefix, &cache, slot);
  return net.decode_step(std::span<std::int32_t const>(&seq.back(), 1), slot, cache);
}
}  // namespace

TEST_CASE("merging the adapter into the weights gives the fused forward; unmerging restores the base") {
  auto const seed = test::seed(32);
  auto net = Model::load_hf(test::source_dir() / "tests/reference/fixtures/tiny_qwen2");
  adapters::TinyLora<adapters::Paper> kind;
  kind.u = 2;
  model::AdaptedModel<Recipe<adapters::TinyLora<adapters::Paper>, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>> adapted(
      net, kind, tying::Tiling{4});
  auto const [batch, mask] = batch_of(net.config().vocab, seed);
  adapted.set_enabled(false);
  HostMatrix const base = net.logits(batch);
  adapted.set_enabled(true);
  std::vector<float> theta(static_cast<std::size_t>(adapted.count()), 0.2f);
  adapted.set_theta(theta);
  HostMatrix const fused = net.logits(batch);
  CHECK((fused - base).cwiseAbs().maxCoeff() > 1e-3);  // the adapter changes the function
  Index const last = batch.offsets[1] - 1;  // sequence 0's last row
  auto const close = [](HostMatrix const& got, HostMatrix const& want) {
    return (got - want).cwiseAbs().maxCoeff() <= 1e-4 * want.cwiseAbs().maxCoeff();
  };
  CHECK(close(decode_last(net, batch), fused.row(last)));  // packs the base weights; the adapter adds Delta W
  adapted.merge();
  HostMatrix const merged = net.logits(batch);
  CHECK((merged - fused).cwiseAbs().maxCoeff() <= 1e-4 * fused.cwiseAbs().maxCoeff());
  // Decoding after the merge must use the merged weights, not the copies packed before it.
  CHECK(close(decode_last(net, batch), fused.row(last)));
  CHECK_THROWS_WITH_AS(adapted.set_theta(theta), doctest::Contains("unmerge() first"), Error);
  adapted.unmerge();
  adapted.set_enabled(false);
  HostMatrix const restored = net.logits(batch);
  CHECK((restored - base).cwiseAbs().maxCoeff() <= 1e-5 * base.cwiseAbs().maxCoeff());
  CHECK(close(decode_last(net, batch), base.row(last)));
}
