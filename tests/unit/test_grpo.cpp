// GRPO: advantages and the token-level PPO / k3 terms against hand-computed values and their
// derivatives against finite differences; on the tiny Llama, the trainer's mini-batch gradient
// (PPO with KL, REINFORCE) against central differences of its own surrogate loss, invariance to
// micro-batching, and one update lowering the surrogate it descends.
#include <doctest/doctest.h>

#include <cmath>

#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/train/grpo.hpp"
#include "tinylora/tying/strategies.hpp"

using namespace tinylora;
using train::ppo_token;

TEST_CASE("group advantages: (r - mean) / (unbiased std + 1e-6), or r - mean, per group") {
  std::vector<double> const r{1, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1};
  auto const A = train::group_advantages(r, 4, train::AdvantageMode::GroupNormalized);
  // Group 1: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5.
  CHECK(A[0] == doctest::Approx(0.75 / (0.5 + 1e-6)).epsilon(1e-7));
  CHECK(A[1] == doctest::Approx(-0.25 / (0.5 + 1e-6)).epsilon(1e-7));
  for (int i = 4; i < 8; ++i) CHECK(A[static_cast<std::size_t>(i)] == 0.0f);  // all equal: no signal
  // Group 3: mean 0.5, unbiased std sqrt(4 * 0.25 / 3).
  CHECK(A[9] == doctest::Approx(0.5 / (std::sqrt(1.0 / 3.0) + 1e-6)).epsilon(1e-6));
  auto const C = train::group_advantages(r, 4, train::AdvantageMode::GroupCentered);
  CHECK(C[0] == doctest::Approx(0.75));
  CHECK(C[10] == doctest::Approx(-0.5));
  CHECK(train::group_advantages(std::vector<double>{1, 0}, 1, train::AdvantageMode::GroupNormalized) == std::vector<float>{0, 0});
  CHECK_THROWS_WITH_AS(train::group_advantages(std::vector<double>{1, 0, 1}, 2, train::AdvantageMode::GroupCentered),
                       doctest::Contains("do not split into groups of 2"), Error);
}

TEST_CASE("the PPO token loss: clip (0.2, 0.4) and dual clip 3, hand-computed") {
  auto const at = [](double ratio, double A) { return ppo_token(std::log(ratio), 0.0, A, 0.2, 0.4, 3.0); };
  // A > 0, ratio inside the range: l = -A ratio, dl/dlogp = -A ratio.
  auto t = at(1.2, 1.0);
  CHECK(t.loss == doctest::Approx(-1.2));
  CHECK(t.dloss == doctest::Approx(-1.2));
  CHECK_FALSE(t.clipped);
  // A > 0, ratio above 1.4: the clipped branch -1.4 is the larger; no gradient.
  t = at(1.5, 1.0);
  CHECK(t.loss == doctest::Approx(-1.4));
  CHECK(t.dloss == 0.0);
  CHECK(t.clipped);
  // A > 0, ratio below 0.8: -A ratio = -0.5 is the larger: unclipped, gradient flows.
  t = at(0.5, 2.0);
  CHECK(t.loss == doctest::Approx(-1.0));
  CHECK(t.dloss == doctest::Approx(-1.0));
  CHECK_FALSE(t.clipped);
  // A < 0, ratio below 0.8: the clipped branch 0.8 |A| wins; no gradient.
  t = at(0.5, -1.0);
  CHECK(t.loss == doctest::Approx(0.8));
  CHECK(t.dloss == 0.0);
  CHECK(t.clipped);
  // A < 0, ratio 2: l = 2 |A| (< 3 |A|), gradient |A| ratio.
  t = at(2.0, -1.0);
  CHECK(t.loss == doctest::Approx(2.0));
  CHECK(t.dloss == doctest::Approx(2.0));
  // A < 0, ratio 4: the dual clip caps the loss at 3 |A|, no gradient.
  t = at(4.0, -0.5);
  CHECK(t.loss == doctest::Approx(1.5));
  CHECK(t.dloss == 0.0);
  // Dual clip off: the loss keeps growing with the ratio.
  CHECK(ppo_token(std::log(4.0), 0.0, -0.5, 0.2, 0.4, 0.0).loss == doctest::Approx(2.0));
}

TEST_CASE("PPO and k3 token terms: derivatives match finite differences away from the kinks") {
  auto const seed = test::seed(41);
  CounterRng const rng(seed, 1);
  int checked = 0;
  for (std::uint64_t i = 0; i < 400; ++i) {
    double const old = -3.0 + rng.uniform(4 * i), logp = old + 1.2 * rng.normal(4 * i + 1), A = 2.0 * rng.normal(4 * i + 2);
    double const ratio = std::exp(logp - old), h = 1e-6;
    bool const near_kink = std::abs(ratio - 0.8) < 1e-3 || std::abs(ratio - 1.4) < 1e-3 || std::abs(ratio - 3.0) < 1e-3;
    if (near_kink) continue;
    double const fd = (ppo_token(logp + h, old, A, 0.2, 0.4, 3.0).loss - ppo_token(logp - h, old, A, 0.2, 0.4, 3.0).loss) / (2 * h);
    CHECK(ppo_token(logp, old, A, 0.2, 0.4, 3.0).dloss == doctest::Approx(fd).epsilon(1e-5).scale(1e-6));
    double const ref = logp + 0.5 * rng.normal(4 * i + 3);
    double const fk = (train::k3_token(logp + h, ref).loss - train::k3_token(logp - h, ref).loss) / (2 * h);
    CHECK(train::k3_token(logp, ref).dloss == doctest::Approx(fk).epsilon(1e-5).scale(1e-6));
    ++checked;
  }
  CHECK(checked > 350);
  // k3 by hand: ref - logp = d gives exp(d) - d - 1 >= 0, zero at d = 0.
  CHECK(train::k3_token(-1.0, -1.0).loss == 0.0);
  CHECK(train::k3_token(-1.0, -0.5).loss == doctest::Approx(std::exp(0.5) - 1.5));
}

namespace {
using Adapter = adapters::TinyLora<adapters::Paper>;
using Policy = model::AdaptedModel<Recipe<Adapter, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>>;
using Trainer = train::GrpoTrainer<Recipe<Adapter, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>>;

std::vector<data::QaExample> prompts() {
  return {{"What is 2 + 3?", "#### 5"}, {"Tom has 4 apples and eats one. How many are left?", "#### 3"},
          {"Name a color.", "#### 0"}, {"Count to three.", "#### 3"}};
}

/// A dense, deterministic reward on a random model: the fraction of even token ids.
double even_fraction(model::Completion const& c, std::string const&, std::string const&) {
  double even = 0;
  for (auto t : c.tokens) even += t % 2 == 0 ? 1 : 0;
  return c.tokens.empty() ? 0.0 : even / static_cast<double>(c.tokens.size());
}

struct Fixture {
  model::Decoder<backend::Cpu, precision::Fp32> net;
  text::Tokenizer tok;
  Policy policy;
  explicit Fixture(std::uint64_t seed)
      : net(model::Decoder<backend::Cpu, precision::Fp32>::load(test::source_dir() / "tests/reference/fixtures/tiny_llama")),
        tok(text::load_tokenizer(test::source_dir() / "tests/reference/fixtures/tiny_llama")),
        policy(net, Adapter{.r = 2, .u = 2, .seed = seed}, tying::Tiling{4}) {
    std::vector<float> theta(static_cast<std::size_t>(policy.count()));
    CounterRng const rng(seed, 9);
    for (std::size_t i = 0; i < theta.size(); ++i) theta[i] = 0.05f * rng.normal(i);
    policy.set_theta(theta);
  }
  train::GrpoOptions options(std::uint64_t seed) const {
    train::GrpoOptions o;
    o.prompts_per_step = 2;
    o.group_size = 3;
    o.max_new_tokens = 6;
    o.temperature = 0.9f;
    o.reward = even_fraction;
    o.seed = seed;
    o.micro_batch = 2;
    return o;
  }
};

void check_surrogate_gradient(train::GrpoOptions const& o, std::uint64_t seed) {
  Fixture f(seed);
  Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
  Trainer::RolloutStats st;
  auto const rollouts = trainer.rollouts(0, st);
  REQUIRE(rollouts.size() == 6);
  bool any_signal = false;
  for (auto const& r : rollouts) any_signal = any_signal || r.advantage != 0.0f;
  REQUIRE(any_signal);
  // Move theta off the rollout policy so ratios differ from 1 and the clip branches are exercised.
  std::vector<float> theta = trainer.theta();
  for (std::size_t i = 0; i < theta.size(); ++i) theta[i] += (i % 2 ? 0.04f : -0.03f);
  f.policy.set_theta(theta);
  Trainer::Update u;
  auto const g = trainer.surrogate_gradient(rollouts, false, u);
  CHECK(u.loss == doctest::Approx(trainer.surrogate(rollouts)).epsilon(1e-6));
  float const eps = 2e-3f;
  std::vector<double> fd(theta.size());
  for (std::size_t j = 0; j < theta.size(); ++j) {
    auto plus = theta, minus = theta;
    plus[j] += eps;
    minus[j] -= eps;
    f.policy.set_theta(plus);
    double const lp = trainer.surrogate(rollouts);
    f.policy.set_theta(minus);
    double const lm = trainer.surrogate(rollouts);
    fd[j] = (lp - lm) / (2.0 * eps);
  }
  double const err = test::relative_error(g, fd);
  MESSAGE("surrogate gradient vs central differences: relative error " << err << ", |g| = " << optim::global_norm(g)
                                                                        << ", clipped tokens " << u.clipped << " of " << u.n_tokens);
  CHECK(err <= 2e-3);
  CHECK(optim::global_norm(g) > 1e-6);
}
}  // namespace

TEST_CASE("GRPO on the tiny Llama: the PPO + k3 mini-batch gradient matches finite differences of the surrogate") {
  auto const seed = test::seed(43);
  Fixture probe(seed);
  auto o = probe.options(seed);
  o.kl_coef = 0.1f;
  check_surrogate_gradient(o, seed);
}

TEST_CASE("GRPO on the tiny Llama: the REINFORCE (sequence-sum, r - mean) gradient matches finite differences") {
  auto const seed = test::seed(44);
  Fixture probe(seed);
  auto o = probe.options(seed);
  o.loss = train::PolicyLoss::Reinforce;
  o.advantage = train::AdvantageMode::GroupCentered;
  o.aggregation = train::Aggregation::SequenceMeanTokenSum;
  check_surrogate_gradient(o, seed);
}

TEST_CASE("GRPO on the tiny Llama: micro-batching changes nothing; an update lowers the surrogate it descends") {
  auto const seed = test::seed(45);
  std::vector<float> g1, g6;
  double loss1 = 0, loss6 = 0;
  for (Index micro : {Index{1}, Index{6}}) {
    Fixture f(seed);
    auto o = f.options(seed);
    o.micro_batch = micro;
    Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
    Trainer::RolloutStats st;
    auto const rollouts = trainer.rollouts(0, st);
    Trainer::Update u;
    (micro == 1 ? g1 : g6) = trainer.surrogate_gradient(rollouts, true, u);
    (micro == 1 ? loss1 : loss6) = u.loss;
    // On the rollout policy every ratio is 1 up to the cached decode vs full forward difference.
    CHECK(u.first_ratio_dev < 1e-4);
  }
  CHECK(loss1 == doctest::Approx(loss6).epsilon(1e-6));
  for (std::size_t k = 0; k < g1.size(); ++k) CHECK(g1[k] == doctest::Approx(g6[k]).epsilon(1e-4).scale(1e-7));
  // A small step along -g (one SGD step) lowers the surrogate of its own rollout batch.
  Fixture f(seed);
  auto o = f.options(seed);
  Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
  Trainer::RolloutStats st;
  auto const rollouts = trainer.rollouts(0, st);
  double const before = trainer.surrogate(rollouts);
  Trainer::Update u;
  auto const g = trainer.surrogate_gradient(rollouts, true, u);
  auto theta = trainer.theta();
  for (std::size_t k = 0; k < theta.size(); ++k) theta[k] -= 1e-3f * g[k] / static_cast<float>(optim::global_norm(g));
  f.policy.set_theta(theta);
  double const after = trainer.surrogate(rollouts);
  MESSAGE("surrogate before " << before << ", after a 1e-3 step along -g/|g|: " << after);
  CHECK(after < before);
}

TEST_CASE("GRPO steps are a function of (seed, step, theta): rerunning a step after restoring gives the same metrics") {
  auto const seed = test::seed(46);
  train::Metrics first, again;
  std::vector<float> theta_first, theta_again;
  io::Checkpoint saved;
  {
    Fixture f(seed);
    Trainer trainer(f.policy, f.tok, prompts(), {}, f.options(seed), optim::AdamW{});
    trainer.step(0);
    trainer.save(saved);
    first = trainer.step(1);
    theta_first = trainer.theta();
  }
  {
    Fixture f(seed);
    Trainer trainer(f.policy, f.tok, prompts(), {}, f.options(seed), optim::AdamW{});
    trainer.restore(saved);
    again = trainer.step(1);
    theta_again = trainer.theta();
  }
  REQUIRE(first.size() == again.size());
  for (std::size_t i = 0; i < first.size(); ++i) {
    INFO(first[i].first);
    CHECK(first[i].second == again[i].second);
  }
  CHECK(theta_first == theta_again);
  CHECK(first[0].first == "reward_mean");
  CHECK(first[0].second > 0.0);
}
