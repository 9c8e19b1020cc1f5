// GRPO: advantages (group-normalized, centered, leave-one-out) and the token-level PPO / k3 terms
// against hand-computed values and their derivatives against finite differences; the objective
// presets; on the tiny Llama, the trainer's mini-batch gradient of every objective (paper + KL,
// REINFORCE, GRPO, DAPO, Dr. GRPO, GSPO, RLOO) against central differences of its own surrogate
// loss, each aggregation against its hand-computed value on the rollout policy, dynamic sampling,
// invariance to micro-batching, and one update lowering the surrogate it descends.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

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
  // Leave-one-out (RLOO): r_i minus the mean of the other three.
  auto const L = train::group_advantages(r, 4, train::AdvantageMode::LeaveOneOut);
  CHECK(L[0] == doctest::Approx(1.0 - 0.0));         // others 0, 0, 0
  CHECK(L[1] == doctest::Approx(0.0 - 1.0 / 3.0));   // others 1, 0, 0
  CHECK(L[8] == doctest::Approx(0.0 - 2.0 / 3.0));   // group 3 = {0, 1, 0, 1}: others 1, 0, 1
  CHECK(L[9] == doctest::Approx(1.0 - 1.0 / 3.0));   // others 0, 0, 1
  for (int i = 4; i < 8; ++i) CHECK(L[static_cast<std::size_t>(i)] == 0.0f);
  CHECK(train::group_advantages(std::vector<double>{1, 0}, 1, train::AdvantageMode::LeaveOneOut) == std::vector<float>{0, 0});
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
    o.custom_reward = even_fraction;
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

TEST_CASE("objective presets: each sets the settings its paper states; names parse back") {
  using train::Objective;
  struct Expected {
    Objective objective;
    train::PolicyLoss loss;
    train::AdvantageMode advantage;
    train::Aggregation aggregation;
    float clip_low, clip_high, dual_clip;
    bool dynamic;
  };
  using L = train::PolicyLoss;
  using A = train::AdvantageMode;
  using G = train::Aggregation;
  Expected const table[] = {
      {Objective::Paper, L::Ppo, A::GroupNormalized, G::TokenMean, 0.2f, 0.4f, 3.0f, false},
      {Objective::Grpo, L::Ppo, A::GroupNormalized, G::SequenceMeanTokenMean, 0.2f, 0.2f, 0.0f, false},
      {Objective::Dapo, L::Ppo, A::GroupNormalized, G::TokenMean, 0.2f, 0.28f, 0.0f, true},
      {Objective::DrGrpo, L::Ppo, A::GroupCentered, G::ConstantNormalizer, 0.2f, 0.2f, 0.0f, false},
      {Objective::Gspo, L::SequenceRatio, A::GroupNormalized, G::SequenceMeanTokenMean, 3e-4f, 4e-4f, 0.0f, false},
      {Objective::Rloo, L::Ppo, A::LeaveOneOut, G::SequenceMeanTokenSum, 0.2f, 0.2f, 0.0f, false},
  };
  train::GrpoOptions const defaults;
  for (auto const& e : table) {
    INFO(train::to_string(e.objective));
    CHECK(train::objective_from_string(train::to_string(e.objective)) == e.objective);
    train::GrpoOptions o;
    o.apply_objective(Objective::Dapo);  // a preset replaces every objective setting of the one before
    o.apply_objective(e.objective);
    CHECK(o.loss == e.loss);
    CHECK(o.advantage == e.advantage);
    CHECK(o.aggregation == e.aggregation);
    CHECK(o.clip_low == e.clip_low);
    CHECK(o.clip_high == e.clip_high);
    CHECK(o.dual_clip == e.dual_clip);
    CHECK(o.dynamic_sampling == e.dynamic);
  }
  // The defaults are the paper's preset.
  train::GrpoOptions paper;
  paper.apply_objective(Objective::Paper);
  CHECK(paper.describe_objective() == defaults.describe_objective());
  CHECK_THROWS_WITH_AS(train::objective_from_string("ppo2"), doctest::Contains("paper | grpo | dapo | dr-grpo | gspo | rloo"), Error);
  CHECK_THROWS_WITH_AS(train::aggregation_from_string("mean"), doctest::Contains("token-mean | sequence-mean | sequence-sum | constant"),
                       Error);
}

namespace {
/// Options of an objective preset on the fixture (the GSPO clip widened so that, off the rollout
/// policy, gradient still flows through most sequences).
train::GrpoOptions preset(Fixture const& f, train::Objective objective, std::uint64_t seed) {
  auto o = f.options(seed);
  o.apply_objective(objective);
  if (objective == train::Objective::Gspo) o.clip_low = 0.2f, o.clip_high = 0.3f;
  return o;
}
}  // namespace

TEST_CASE("every objective preset's mini-batch gradient matches finite differences of its surrogate") {
  auto const seed = test::seed(47);
  for (auto objective : {train::Objective::Grpo, train::Objective::Dapo, train::Objective::DrGrpo, train::Objective::Gspo,
                         train::Objective::Rloo}) {
    MESSAGE("objective " << std::string(train::to_string(objective)));
    Fixture probe(seed);
    auto o = preset(probe, objective, seed);
    o.dynamic_sampling = false;  // the dense reward gives every group a signal anyway
    check_surrogate_gradient(o, seed);
  }
}

TEST_CASE("aggregations on the rollout policy (every ratio 1): the surrogate equals its hand-computed value") {
  // With rho = s = 1 each token's PPO loss is -A_i, so L = -sum_i A_i sum_t w_it:
  //   token-mean -sum_i A_i |y_i| / N;  sequence-mean -sum_i A_i / n;  sequence-sum -sum_i A_i |y_i| / n;
  //   constant -sum_i A_i |y_i| / (n L_max);  GSPO (sequence-mean) -sum_i A_i / n.
  auto const seed = test::seed(48);
  struct Case {
    train::Objective objective;
    char const* name;
  };
  for (auto const& [objective, name] : {Case{train::Objective::Paper, "token-mean"}, Case{train::Objective::Grpo, "sequence-mean"},
                                        Case{train::Objective::Rloo, "sequence-sum"}, Case{train::Objective::DrGrpo, "constant"},
                                        Case{train::Objective::Gspo, "gspo"}}) {
    INFO(std::string(name));
    Fixture f(seed);
    auto o = preset(f, objective, seed);
    o.dynamic_sampling = false;
    Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
    Trainer::RolloutStats st;
    auto rollouts = trainer.rollouts(0, st);
    // Advantages by hand: a group's own sum to zero, which would hide a wrong sequence weight; and
    // lengths 6, 5, 4, 6, ... (the tiny model never stops within 6 tokens), so the weights differ.
    for (std::size_t i = 0; i < rollouts.size(); ++i) {
      auto& r = rollouts[i];
      r.advantage = 0.5f - 0.3f * static_cast<float>(i);
      std::size_t const drop = std::min<std::size_t>(i % 3, r.old_logp.size() - 1);
      r.tokens.resize(r.tokens.size() - drop);
      r.response.resize(r.response.size() - drop);
      r.old_logp.resize(r.old_logp.size() - drop);
    }
    double n = static_cast<double>(rollouts.size()), N = 0, sum_A = 0, sum_A_len = 0;
    for (auto const& r : rollouts) {
      N += static_cast<double>(r.old_logp.size());
      sum_A += r.advantage;
      sum_A_len += r.advantage * static_cast<double>(r.old_logp.size());
    }
    double expected = 0;
    switch (o.aggregation) {
      case train::Aggregation::TokenMean: expected = -sum_A_len / N; break;
      case train::Aggregation::SequenceMeanTokenMean: expected = -sum_A / n; break;
      case train::Aggregation::SequenceMeanTokenSum: expected = -sum_A_len / n; break;
      case train::Aggregation::ConstantNormalizer: expected = -sum_A_len / (n * static_cast<double>(o.max_new_tokens)); break;
    }
    double const got = trainer.surrogate(rollouts);
    MESSAGE(std::string(name) << ": surrogate " << got << ", hand-computed " << expected);
    CHECK(got == doctest::Approx(expected).epsilon(1e-4).scale(1e-6));
    CHECK(std::abs(expected) > 1e-4);  // the advantages do not cancel, so the check means something
  }
}

TEST_CASE("the sequence ratio: one deviating token moves s_i by exp(delta / |y_i|); GSPO clips whole sequences") {
  // On a 4-token sequence with A = 1, raising one token's log-prob by 0.4 gives s = exp(0.1):
  // inside a (0.2, 0.3) clip the loss is -s and each token's dL/dlogp is -s / 4 (w = 1 / (n |y|) with
  // n = 1 and sum_t w = 1); inside (3e-4, 4e-4) the sequence is clipped: loss -(1 + 4e-4), no gradient.
  auto const seq = [](double mean_log_ratio, double lo, double hi) { return ppo_token(mean_log_ratio, 0.0, 1.0, lo, hi, 0.0); };
  auto const wide = seq(0.4 / 4, 0.2, 0.3);
  CHECK(wide.loss == doctest::Approx(-std::exp(0.1)));
  CHECK(wide.dloss / 4 == doctest::Approx(-std::exp(0.1) / 4));
  auto const narrow = seq(0.4 / 4, 3e-4, 4e-4);
  CHECK(narrow.loss == doctest::Approx(-(1 + 4e-4)));
  CHECK(narrow.dloss == 0.0);
  CHECK(narrow.clipped);
}

TEST_CASE("dynamic sampling: groups whose rewards are all equal are skipped and replaced, up to the cap") {
  auto const seed = test::seed(49);
  // "Name a color." (reference 0) always scores 1: its group carries no signal; the others score
  // the dense even-token fraction.
  auto const reward = [](model::Completion const& c, std::string const& text, std::string const& reference) {
    return reference == "0" ? 1.0 : even_fraction(c, text, reference);
  };
  Index flat_seen = 0;
  for (Index s = 0; s < 4; ++s) {
    Fixture f(seed);
    auto o = f.options(seed);
    o.custom_reward = reward;
    o.dynamic_sampling = true;
    o.max_sampling_rounds = 6;
    Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
    Trainer::RolloutStats st;
    auto const rollouts = trainer.rollouts(s, st);
    INFO("step " << s << ": rounds " << st.rounds << ", skipped " << st.groups_skipped);
    CHECK(st.groups_kept == o.prompts_per_step);
    CHECK(rollouts.size() == static_cast<std::size_t>(o.prompts_per_step * o.group_size));
    CHECK(st.sequences == st.rounds * o.prompts_per_step * o.group_size);
    bool const first_round_flat = std::find(st.prompts.begin(), st.prompts.end(), Index{2}) != st.prompts.end();
    if (first_round_flat) CHECK(st.rounds >= 2);
    flat_seen += st.groups_skipped;
    // Every kept group has a signal: its advantages are not all zero.
    for (std::size_t g = 0; g < rollouts.size(); g += static_cast<std::size_t>(o.group_size)) {
      bool any = false;
      for (std::size_t i = g; i < g + static_cast<std::size_t>(o.group_size); ++i) any = any || rollouts[i].advantage != 0.0f;
      CHECK(any);
    }
    // A function of (seed, step, theta): drawing again gives the same rollouts.
    Trainer::RolloutStats again;
    auto const redo = trainer.rollouts(s, again);
    REQUIRE(redo.size() == rollouts.size());
    for (std::size_t i = 0; i < redo.size(); ++i) CHECK(redo[i].tokens == rollouts[i].tokens);
    CHECK(again.groups_skipped == st.groups_skipped);
  }
  CHECK(flat_seen >= 1);  // the flat prompt was drawn at least once in four steps
  // Without dynamic sampling the flat group stays in the batch (with A = 0).
  Fixture f(seed);
  auto o = f.options(seed);
  o.custom_reward = [](model::Completion const&, std::string const&, std::string const&) { return 1.0; };
  Trainer plain(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
  Trainer::RolloutStats st;
  CHECK(plain.rollouts(0, st).size() == 6);
  CHECK(st.groups_skipped == 0);
  // With it, and every reward equal, every round is skipped: the step trains on nothing and says so.
  o.dynamic_sampling = true;
  o.max_sampling_rounds = 3;
  Fixture g(seed);
  Trainer starved(g.policy, g.tok, prompts(), {}, o, optim::AdamW{});
  auto const before = starved.theta();
  auto const m = starved.step(0);
  auto const metric = [&](char const* name) {
    for (auto const& [key, value] : m)
      if (key == name) return value;
    FAIL("no metric " << name);
    return 0.0;
  };
  CHECK(metric("groups_trained") == 0.0);
  CHECK(metric("groups_skipped") == 3.0 * static_cast<double>(o.prompts_per_step));
  CHECK(metric("sampling_rounds") == 3.0);
  CHECK(metric("reward_mean") == 1.0);
  CHECK(starved.theta() == before);
}

TEST_CASE("a composed reward is logged term by term; the step's time split is reported beside the metrics") {
  auto const seed = test::seed(50);
  Fixture f(seed);
  auto o = f.options(seed);
  o.custom_reward = nullptr;
  o.reward = train::Reward::parse("correct:last-number=1,format:hash=0.5,length:3=0.25", data::ExtractRule::PaperFork);
  Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
  auto const m = trainer.step(0);
  std::map<std::string, double> by_name(m.begin(), m.end());
  REQUIRE(by_name.count("reward_correct_last-number"));
  REQUIRE(by_name.count("reward_format_hash"));
  REQUIRE(by_name.count("reward_length"));
  double const composed = by_name["reward_correct_last-number"] + 0.5 * by_name["reward_format_hash"] + 0.25 * by_name["reward_length"];
  MESSAGE("reward terms: correct " << by_name["reward_correct_last-number"] << ", format " << by_name["reward_format_hash"] << ", length "
                                   << by_name["reward_length"]);
  CHECK(by_name["reward_mean"] == doctest::Approx(composed));
  // The tiny model's completions run to the 6-token limit: cut, so each is penalized by -1 (a
  // stopped one of 4..6 tokens would get -1/3..-1 under the 3-token window).
  CHECK(by_name["reward_length"] < 0.0);
  CHECK(by_name["reward_length"] >= -1.0);
  CHECK(by_name["tokens_generated"] == doctest::Approx(by_name["response_length"] * 6));
  std::map<std::string, double> timing(trainer.last_timing().begin(), trainer.last_timing().end());
  for (char const* part : {"generation", "reward", "forward_backward", "optimizer"}) {
    INFO(part);
    REQUIRE(timing.count(part));
    CHECK(timing[part] >= 0.0);
  }
  CHECK(timing["generation"] > 0.0);
  CHECK(timing["forward_backward"] > 0.0);
}

TEST_CASE("select_on_validation: the best validation score, ties broken by the training reward, then the first; NaN never wins") {
  using train::select_on_validation;
  CHECK(select_on_validation(std::vector<double>{0.1, 0.3, 0.2}, std::vector<double>{9, 0, 9}) == 1);
  CHECK(select_on_validation(std::vector<double>{0.0, 0.0, 0.0}, std::vector<double>{0.1, 0.4, 0.2}) == 1);  // all tied at 0
  CHECK(select_on_validation(std::vector<double>{0.5, 0.5}, std::vector<double>{0.2, 0.2}) == 0);
  double const nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(select_on_validation(std::vector<double>{nan, 0.0}, std::vector<double>{1, 0}) == 1);
  CHECK(select_on_validation(std::vector<double>{0.2, 0.2}, std::vector<double>{nan, 0.1}) == 1);
  CHECK_THROWS_WITH_AS(select_on_validation(std::vector<double>{0.2}, std::vector<double>{}), doctest::Contains("1 validation scores and 0"),
                       Error);
}

TEST_CASE("measure_kl: the k3 KL to the base model is logged without changing the update; it equals the KL-penalty path's") {
  auto const seed = test::seed(51);
  auto run = [&](bool measure, float kl_coef) {
    Fixture f(seed);  // theta != 0: the policy differs from the base model
    auto o = f.options(seed);
    o.measure_kl = measure;
    o.kl_coef = kl_coef;
    o.n_minibatches = 1;  // one update, its KL taken before it: at the rollout policy in every run
    Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
    auto const m = trainer.step(0);
    return std::pair{std::map<std::string, double>(m.begin(), m.end()), trainer.theta()};
  };
  auto const [plain, theta_plain] = run(false, 0.0f);
  auto const [measured, theta_measured] = run(true, 0.0f);
  auto const [penalized, theta_penalized] = run(false, 0.05f);
  (void)theta_penalized;
  MESSAGE("kl: not measured " << plain.at("kl") << ", measured " << measured.at("kl") << ", with the penalty " << penalized.at("kl"));
  CHECK(plain.at("kl") == 0.0);
  CHECK(measured.at("kl") > 1e-6);
  CHECK(measured.at("kl") == doctest::Approx(penalized.at("kl")).epsilon(1e-9));
  CHECK(theta_measured == theta_plain);  // the update is the one without measurement, bit for bit
  // The penalty enters the loss (Adam's first step, lr sign(g), may hide it in theta; the loss shows it).
  CHECK(penalized.at("policy_loss") != plain.at("policy_loss"));
  for (auto const& [name, value] : plain)
    if (name != "kl") {
      INFO(name);
      CHECK(measured.at(name) == value);
    }
  // The same number by hand: the mean k3 of the rollouts' tokens, at the rollout log-probs.
  Fixture f(seed);
  auto o = f.options(seed);
  o.measure_kl = true;
  Trainer trainer(f.policy, f.tok, prompts(), {}, o, optim::AdamW{});
  Trainer::RolloutStats st;
  auto const rollouts = trainer.rollouts(0, st);
  double sum = 0, n = 0;
  for (auto const& r : rollouts) {
    REQUIRE(r.ref_logp.size() == r.old_logp.size());
    for (std::size_t j = 0; j < r.old_logp.size(); ++j, ++n) sum += train::k3_token(r.old_logp[j], r.ref_logp[j]).loss;
  }
  CHECK(sum / n == doctest::Approx(measured.at("kl")).epsilon(1e-3));
}
