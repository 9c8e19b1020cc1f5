// tinylora/train/grpo.hpp: GRPO as the paper ran it (its VERL fork, REFERENCE.md section 4), and the
// published variants of its objective as named presets (Objective). One training step:
//   1. rollouts: G completions of each of the step's prompts at temperature T (shared prefill);
//      with dynamic sampling (DAPO) further prompts are drawn until the batch holds the requested
//      number of groups whose rewards are not all equal, or a cap on the rounds is reached;
//   2. rewards r = sum_k w_k r_k (train/reward.hpp), advantages per group of G:
//        group-normalized  A_i = (r_i - mean(r)) / (std(r) + 1e-6)      (std unbiased, as torch.std)
//        group-centered    A_i = r_i - mean(r)
//        leave-one-out     A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean(r))     (RLOO)
//   3. n_minibatches optimizer steps over the rollout batch, each minimizing
//        token ratio (ppo)       rho_t = pi_theta(y_t) / pi_old(y_t)
//        sequence ratio (gspo)   s_i = exp( (1/|y_i|) sum_t log(pi_theta(y_t) / pi_old(y_t)) ), every token of y_i
//        l = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)),  and for A < 0: min(l, -A c)
//        (reinforce: l_t = -A log pi_theta(y_t))
//        L = sum_i sum_t w_it l_it + beta sum_i sum_t w_it k3_it,   k3 = exp(ref - logp) - (ref - logp) - 1
//      with the aggregation weights w_it over the mini-batch's n sequences and N tokens:
//        token-mean 1/N | sequence-mean 1/(n |y_i|) | sequence-sum 1/n | constant 1/(n L_max);
//      gradient clipping, linear warm-up, the recipe's optimizer on theta.
// The gradient of L w.r.t. each token's log-prob is written out below (ppo_token, k3_token, and the
// 1/|y_i| chain rule of the sequence ratio), and Decoder::objective_and_backward carries it to theta.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "tinylora/data/answer.hpp"
#include "tinylora/data/qa.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/model/generate.hpp"
#include "tinylora/optim/schedule.hpp"
#include "tinylora/optim/trainable.hpp"
#include "tinylora/text/tokenizer.hpp"
#include "tinylora/train/loop.hpp"
#include "tinylora/train/reward.hpp"

namespace tinylora::train {

enum class PolicyLoss { Ppo, Reinforce, SequenceRatio };
enum class AdvantageMode { GroupNormalized, GroupCentered, LeaveOneOut };
enum class Aggregation { TokenMean, SequenceMeanTokenMean, SequenceMeanTokenSum, ConstantNormalizer };

inline char const* to_string(PolicyLoss l) {
  switch (l) {
    case PolicyLoss::Ppo: return "ppo";
    case PolicyLoss::Reinforce: return "reinforce";
    case PolicyLoss::SequenceRatio: return "sequence-ratio";
  }
  return "?";
}
inline char const* to_string(AdvantageMode a) {
  switch (a) {
    case AdvantageMode::GroupNormalized: return "group-normalized";
    case AdvantageMode::GroupCentered: return "group-centered";
    case AdvantageMode::LeaveOneOut: return "leave-one-out";
  }
  return "?";
}
inline char const* to_string(Aggregation a) {
  switch (a) {
    case Aggregation::TokenMean: return "token-mean";
    case Aggregation::SequenceMeanTokenMean: return "sequence-mean";
    case Aggregation::SequenceMeanTokenSum: return "sequence-sum";
    case Aggregation::ConstantNormalizer: return "constant";
  }
  return "?";
}

namespace detail {
/// The enum value whose to_string() is s; else an error listing every spelling.
template <class E, std::size_t N>
E enum_from_string(std::string_view s, E const (&all)[N], char const* what) {
  std::string expected;
  for (E e : all) {
    if (s == to_string(e)) return e;
    expected += (expected.empty() ? "" : " | ") + std::string(to_string(e));
  }
  fail("unknown ", what, " '", s, "' (expected ", expected, ")");
}
}  // namespace detail

inline PolicyLoss policy_loss_from_string(std::string_view s) {
  return detail::enum_from_string(s, {PolicyLoss::Ppo, PolicyLoss::Reinforce, PolicyLoss::SequenceRatio}, "policy loss");
}
inline AdvantageMode advantage_from_string(std::string_view s) {
  return detail::enum_from_string(s, {AdvantageMode::GroupNormalized, AdvantageMode::GroupCentered, AdvantageMode::LeaveOneOut},
                                  "advantage");
}
inline Aggregation aggregation_from_string(std::string_view s) {
  return detail::enum_from_string(
      s, {Aggregation::TokenMean, Aggregation::SequenceMeanTokenMean, Aggregation::SequenceMeanTokenSum, Aggregation::ConstantNormalizer},
      "aggregation");
}

/// The objectives users now expect, each a preset of (ratio, advantage, aggregation, clip, dynamic
/// sampling); the options can still be set one by one after a preset.
enum class Objective {
  /// The paper's VERL fork (REFERENCE.md section 4): token ratio, group-normalized, token mean over
  /// the mini-batch, clip (0.2, 0.4), dual clip 3.
  Paper,
  /// GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, eq. 3): token ratio, group-normalized,
  /// the token mean of each sequence then the mean over sequences, clip 0.2 both ways.
  Grpo,
  /// DAPO (Yu et al. 2025, arXiv:2503.14476): the token mean over the whole batch, clip-higher
  /// (0.2, 0.28), dynamic sampling; its overlong shaping is the reward's length term.
  Dapo,
  /// Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783): r - mean
  /// (no std), each sequence's token sum divided by the constant generation limit L_max, clip 0.2.
  DrGrpo,
  /// GSPO (Zheng et al. 2025, arXiv:2507.18071): the sequence-level ratio (geometric mean of the
  /// token ratios), clip (3e-4, 4e-4), group-normalized, mean over sequences.
  Gspo,
  /// RLOO advantages (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740): the leave-one-out
  /// baseline, REINFORCE on each sequence's log-prob (token sum, mean over sequences) under the PPO
  /// clip 0.2 of the token ratio, so that a second mini-batch stays a trust-region step.
  Rloo,
};

inline char const* to_string(Objective o) {
  switch (o) {
    case Objective::Paper: return "paper";
    case Objective::Grpo: return "grpo";
    case Objective::Dapo: return "dapo";
    case Objective::DrGrpo: return "dr-grpo";
    case Objective::Gspo: return "gspo";
    case Objective::Rloo: return "rloo";
  }
  return "?";
}
inline Objective objective_from_string(std::string_view s) {
  return detail::enum_from_string(s, {Objective::Paper, Objective::Grpo, Objective::Dapo, Objective::DrGrpo, Objective::Gspo, Objective::Rloo},
                                  "objective");
}

/// Defaults: the paper's GSM8K run (REFERENCE.md section 4); the learning rate is swept.
struct GrpoOptions {
  // rollouts
  Index prompts_per_step = 64;   // rollout batch: prompts per step
  Index group_size = 4;          // G completions per prompt
  float temperature = 1.0f;
  Index max_new_tokens = 4096;
  data::PromptFormat format{};
  Reward reward = Reward::exact_match(data::ExtractRule::PaperFork);
  /// Optional reward in place of `reward`: (completion, its decoded text, reference answer).
  std::function<double(model::Completion const&, std::string const&, std::string const&)> custom_reward;
  bool dynamic_sampling = false;  // DAPO: keep only groups whose rewards differ, drawing more prompts
  Index max_sampling_rounds = 4;  // cap: rollout rounds of prompts_per_step prompts per step
  // objective (Objective::Paper's settings; apply_objective() sets another preset)
  PolicyLoss loss = PolicyLoss::Ppo;
  AdvantageMode advantage = AdvantageMode::GroupNormalized;
  Aggregation aggregation = Aggregation::TokenMean;
  float clip_low = 0.2f, clip_high = 0.4f;  // ratio clip range [1 - low, 1 + high]
  float dual_clip = 3.0f;                   // c of the dual clip for A < 0 (0: off)
  float kl_coef = 0.0f;                     // beta; > 0 computes the base model's log-probs (adapter disabled)
  bool measure_kl = false;                  // log the k3 KL to the base model (costs its forward) without adding it to the loss
  // optimization
  float lr = 1e-5f;
  double warmup_fraction = 0.05;
  double grad_clip = 1.0;                   // max global norm (0: off)
  Index n_minibatches = 2;                  // optimizer steps per rollout batch
  Index micro_batch = 8;                    // sequences per forward/backward (memory only: never changes the result)
  Index epochs = 3;
  Index max_steps = 0;                      // 0: epochs x steps per epoch
  std::uint64_t seed = 0;                   // data order and sampling

  /// Sets the objective's fields to a preset (see Objective).
  void apply_objective(Objective o) {
    dual_clip = 0;
    dynamic_sampling = false;
    loss = PolicyLoss::Ppo;
    advantage = AdvantageMode::GroupNormalized;
    clip_low = clip_high = 0.2f;
    switch (o) {
      case Objective::Paper:
        aggregation = Aggregation::TokenMean, clip_high = 0.4f, dual_clip = 3.0f;
        break;
      case Objective::Grpo: aggregation = Aggregation::SequenceMeanTokenMean; break;
      case Objective::Dapo: aggregation = Aggregation::TokenMean, clip_high = 0.28f, dynamic_sampling = true; break;
      case Objective::DrGrpo: advantage = AdvantageMode::GroupCentered, aggregation = Aggregation::ConstantNormalizer; break;
      case Objective::Gspo:
        loss = PolicyLoss::SequenceRatio, aggregation = Aggregation::SequenceMeanTokenMean, clip_low = 3e-4f, clip_high = 4e-4f;
        break;
      case Objective::Rloo: advantage = AdvantageMode::LeaveOneOut, aggregation = Aggregation::SequenceMeanTokenSum; break;
    }
  }

  /// The objective's settings in one line (for run identities and logs).
  std::string describe_objective() const {
    return std::string("loss=") + to_string(loss) + " adv=" + to_string(advantage) + " agg=" + to_string(aggregation) + " clip=" +
           exact(clip_low) + ":" + exact(clip_high) + ":" + exact(dual_clip) + " kl=" + exact(kl_coef) +
           " dynamic=" + (dynamic_sampling ? std::to_string(max_sampling_rounds) : std::string("off")) + " reward=" + reward.describe();
  }
};

/// Advantages of rewards laid out group by group ((n_prompts G)): r - mean, divided by (std + 1e-6)
/// for GroupNormalized with the unbiased std of the group, or r_i - mean_{j != i} r_j for
/// LeaveOneOut (a group of one has A = 0).
inline std::vector<float> group_advantages(std::span<double const> rewards, Index G, AdvantageMode mode) {
  TINYLORA_CHECK(G >= 1 && rewards.size() % static_cast<std::size_t>(G) == 0, "group_advantages(): ", rewards.size(),
                 " rewards do not split into groups of ", G);
  std::vector<float> A(rewards.size());
  for (std::size_t first = 0; first < rewards.size(); first += static_cast<std::size_t>(G)) {
    auto const group = rewards.subspan(first, static_cast<std::size_t>(G));
    double const mean = std::accumulate(group.begin(), group.end(), 0.0) / static_cast<double>(G);
    double var = 0;
    for (double r : group) var += (r - mean) * (r - mean);
    double const std_unbiased = G > 1 ? std::sqrt(var / static_cast<double>(G - 1)) : 1.0;
    for (std::size_t i = 0; i < group.size(); ++i) {
      double const centered = group[i] - mean;
      double a = centered;
      if (mode == AdvantageMode::GroupNormalized) a = centered / (std_unbiased + 1e-6);
      if (mode == AdvantageMode::LeaveOneOut) a = G > 1 ? centered * static_cast<double>(G) / static_cast<double>(G - 1) : 0.0;
      A[first + i] = static_cast<float>(a);
    }
  }
  return A;
}

/// One token's PPO loss l(logp) and dl/dlogp (see the header comment); `clipped` when the clipped
/// branch is the larger (VERL's pg_clipfrac counts these).
struct TokenLoss {
  double loss = 0, dloss = 0;
  bool clipped = false;
};

inline TokenLoss ppo_token(double logp, double old_logp, double A, double clip_low, double clip_high, double dual_clip) {
  double const log_ratio = std::clamp(logp - old_logp, -20.0, 20.0);
  double const ratio = std::exp(log_ratio);
  double const dratio = std::abs(logp - old_logp) < 20.0 ? ratio : 0.0;  // d ratio / d logp
  double const lo = 1.0 - clip_low, hi = 1.0 + clip_high;
  double const l1 = -A * ratio, l2 = -A * std::clamp(ratio, lo, hi);
  TokenLoss t;
  if (l1 >= l2) {
    t.loss = l1;
    t.dloss = -A * dratio;
  } else {
    t.loss = l2;
    t.dloss = ratio > lo && ratio < hi ? -A * dratio : 0.0;
    t.clipped = true;
  }
  if (A < 0 && dual_clip > 0 && -A * dual_clip < t.loss) {
    t.loss = -A * dual_clip;
    t.dloss = 0;
  }
  return t;
}

/// The k3 ("low-variance") estimate of KL(pi_theta || pi_ref) at one token and its d/dlogp:
///   k3 = exp(ref - logp) - (ref - logp) - 1,   dk3/dlogp = 1 - exp(ref - logp)   (clamped like VERL).
inline TokenLoss k3_token(double logp, double ref_logp) {
  double const delta = std::clamp(ref_logp - logp, -20.0, 20.0);
  double const e = std::exp(delta);
  double const kl = e - delta - 1.0;
  bool const inside = std::abs(ref_logp - logp) < 20.0 && kl < 10.0;
  return {std::min(kl, 10.0), inside ? 1.0 - e : 0.0, false};
}

/// One sampled completion ready for the update: prompt + response tokens, the response's rollout
/// log-probs and its advantage (broadcast to its tokens).
struct Rollout {
  std::vector<std::int32_t> tokens;     // (prompt + response)
  std::vector<std::uint8_t> response;   // (prompt + response) 1 on response tokens
  std::vector<float> old_logp;          // (response) log pi_old
  std::vector<float> ref_logp;          // (response) log pi_ref, when kl_coef > 0 or measure_kl (else empty)
  float advantage = 0;
};

/// R: the Recipe; its optimizer updates theta, its precision rounds it.
template <IsRecipe R>
class GrpoTrainer {
 public:
  using Policy = model::AdaptedModel<R>;
  using O = typename R::optimizer;
  using P = typename R::precision;

  GrpoTrainer(Policy& policy, text::Tokenizer const& tok, std::vector<data::QaExample> const& train, std::vector<std::int32_t> stop_ids,
              GrpoOptions const& o, O optimizer = {})
      : policy_(policy), tok_(tok), o_(o), stop_ids_(std::move(stop_ids)),
        trainable_(optimizer, std::vector<float>(policy.theta().begin(), policy.theta().end())) {
    TINYLORA_CHECK(o.prompts_per_step >= 1 && o.group_size >= 1 && o.n_minibatches >= 1 && o.micro_batch >= 1 && o.epochs >= 1,
                   "GrpoTrainer: prompts_per_step, group_size, n_minibatches, micro_batch and epochs must be >= 1");
    TINYLORA_CHECK(o.prompts_per_step * o.group_size >= o.n_minibatches, "GrpoTrainer: ", o.n_minibatches,
                   " mini-batches need at least as many completions per step (got ", o.prompts_per_step * o.group_size, ")");
    TINYLORA_CHECK(static_cast<Index>(train.size()) >= o.prompts_per_step, "GrpoTrainer: ", train.size(),
                   " training examples are fewer than the ", o.prompts_per_step, " prompts of one step. Hint: lower --prompts.");
    TINYLORA_CHECK(o.max_sampling_rounds >= 1, "GrpoTrainer: max_sampling_rounds must be >= 1 (got ", o.max_sampling_rounds, ")");
    if (!o.custom_reward) o.reward.validate(o.max_new_tokens);
    for (auto const& ex : train) {
      prompts_.push_back(tok.encode(data::render_prompt(o.format, ex.question), true));
      answers_.push_back(data::gsm8k_reference_answer(ex.answer));
    }
    total_ = planned_steps(train.size(), o.prompts_per_step, o.epochs, o.max_steps);
    schedule_ = optim::LrSchedule::with_warmup_fraction(o.lr, o.warmup_fraction, total_);
    policy_.set_theta(trainable_.theta());
  }

  Index total_steps() const { return total_; }
  std::vector<float> theta() const { return trainable_.theta(); }
  optim::LrSchedule const& schedule() const { return schedule_; }
  void save(io::Checkpoint& c) { save_trainable(c, trainable_); }
  void restore(io::Checkpoint const& c) {
    restore_trainable(c, trainable_);
    policy_.set_theta(trainable_.theta());
  }

  /// The examples of step s (epoch by epoch, each in its own seeded order).
  std::vector<Index> prompt_indices(Index s) const { return epoch_batch(o_.seed, 1000, prompts_.size(), o_.prompts_per_step, s); }

  /// What one mini-batch update measured: the loss, the pre-clip gradient norm, KL and clip counts.
  struct Update {
    double loss = 0, grad_norm = 0, kl_sum = 0, clipped = 0, n_tokens = 0, first_ratio_dev = 0;
  };

  /// Rollout statistics of one step (for the metrics). rewards, prompts and components describe the
  /// step's own prompts (the first round), so that runs with and without dynamic sampling report
  /// the same quantity; the counts cover every round.
  struct RolloutStats {
    std::vector<double> rewards;                 // (n_prompts G) group by group, first round
    std::vector<std::vector<double>> components; // (terms, n_prompts G) r_k before weights, first round
    std::vector<Index> prompts;                  // (n_prompts) example indices, first round
    double length = 0, stopped = 0;              // sums over the first round's completions
    Index rounds = 0, groups_kept = 0, groups_skipped = 0, sequences = 0, tokens = 0;  // all rounds
    double seconds_generation = 0, seconds_reward = 0, seconds_reference = 0;
  };

  /// Steps 1-2 of step s: rollouts at the current theta, rewards, advantages (and the base model's
  /// log-probs when kl_coef > 0 or measure_kl). Without dynamic sampling every group of the step's prompts is kept
  /// (a group whose rewards are all equal has A = 0); with it, such groups are skipped and round
  /// k = 1, 2, ... draws prompts_per_step further prompts (a permutation keyed by (seed, step, k))
  /// until prompts_per_step groups carry a signal or max_sampling_rounds rounds were drawn; surplus
  /// groups of the last round are dropped. Empty completions are dropped.
  std::vector<Rollout> rollouts(Index s, RolloutStats& st) {
    using clock = std::chrono::steady_clock;
    policy_.set_enabled(true);
    policy_.set_theta(trainable_.theta());
    st = RolloutStats{};
    std::size_t const G = static_cast<std::size_t>(o_.group_size);
    std::vector<Rollout> out;
    Index const rounds = o_.dynamic_sampling ? o_.max_sampling_rounds : 1;
    for (Index round = 0; round < rounds && (round == 0 || st.groups_kept < o_.prompts_per_step); ++round) {
      std::vector<Index> const indices = round == 0 ? prompt_indices(s) : resample_indices(s, round);
      std::vector<std::vector<std::int32_t>> prompts;
      for (Index i : indices) prompts.push_back(prompts_[static_cast<std::size_t>(i)]);
      model::GenerationOptions g;
      g.max_new_tokens = o_.max_new_tokens;
      g.n_samples = o_.group_size;
      g.stop_ids = stop_ids_;
      g.sampling.temperature = o_.temperature;
      g.sampling.seed = o_.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(s) + 1 + (static_cast<std::uint64_t>(round) << 40);
      auto t0 = clock::now();
      auto const completions = model::generate(policy_.model(), prompts, g);
      auto t1 = clock::now();
      st.seconds_generation += std::chrono::duration<double>(t1 - t0).count();
      ++st.rounds;
      std::vector<double> rewards;
      std::vector<std::vector<double>> components(o_.reward.terms.size());
      for (auto const& c : completions) {
        std::size_t const n_text = c.tokens.size() - (c.stopped ? 1 : 0);
        std::string const text = tok_.decode(std::span<std::int32_t const>(c.tokens).first(n_text), true);
        std::string const& reference = answers_[static_cast<std::size_t>(indices[static_cast<std::size_t>(c.prompt)])];
        if (o_.custom_reward) {
          rewards.push_back(o_.custom_reward(c, text, reference));
        } else {
          auto const scored = o_.reward.score({text, reference, static_cast<Index>(c.tokens.size()), c.stopped, o_.max_new_tokens});
          rewards.push_back(scored.total);
          for (std::size_t k = 0; k < components.size(); ++k) components[k].push_back(scored.components[k]);
        }
        st.tokens += static_cast<Index>(c.tokens.size());
        if (round == 0) {
          st.length += static_cast<double>(c.tokens.size());
          st.stopped += c.stopped ? 1 : 0;
        }
      }
      st.sequences += static_cast<Index>(completions.size());
      if (round == 0) {
        st.rewards = rewards;
        st.prompts = indices;
        if (!o_.custom_reward) st.components = components;
      }
      st.seconds_reward += std::chrono::duration<double>(clock::now() - t1).count();
      auto const advantages = group_advantages(rewards, o_.group_size, o_.advantage);
      for (std::size_t p = 0; p < indices.size(); ++p) {
        auto const group = std::span<double const>(rewards).subspan(p * G, G);
        bool const flat = std::all_of(group.begin(), group.end(), [&](double r) { return r == group[0]; });
        if (o_.dynamic_sampling && flat) {
          ++st.groups_skipped;
          continue;
        }
        if (o_.dynamic_sampling && st.groups_kept >= o_.prompts_per_step) continue;  // surplus of the last round
        ++st.groups_kept;
        for (std::size_t i = p * G; i < (p + 1) * G; ++i) {
          auto const& c = completions[i];
          if (c.tokens.empty()) continue;
          Rollout r;
          r.tokens = prompts[p];
          r.response.assign(r.tokens.size(), 0);
          r.tokens.insert(r.tokens.end(), c.tokens.begin(), c.tokens.end());
          r.response.resize(r.tokens.size(), 1);
          r.old_logp = c.policy_logprobs;
          r.advantage = advantages[i];
          out.push_back(std::move(r));
        }
      }
    }
    if (o_.kl_coef > 0 || o_.measure_kl) {
      auto const t0 = clock::now();
      reference_logprobs(out);
      st.seconds_reference = std::chrono::duration<double>(clock::now() - t0).count();
    }
    return out;
  }

  /// The wall-clock split of the last step (seconds): not part of the metrics, since a rerun of a
  /// step gives the same metrics but not the same times; the loop logs it under timing/.
  Metrics const& last_timing() const { return timing_; }

  Metrics step(Index s) {
    using clock = std::chrono::steady_clock;
    RolloutStats st;
    auto const rollouts = this->rollouts(s, st);
    // ---- 3. mini-batch updates
    double loss = 0, grad_norm = 0, kl = 0, clipped = 0, ratio_dev = 0;
    double n_tokens_all = 0, seconds_backward = 0, seconds_optimizer = 0;
    std::size_t const per = (rollouts.size() + static_cast<std::size_t>(o_.n_minibatches) - 1) / static_cast<std::size_t>(o_.n_minibatches);
    Index updates = 0;
    for (std::size_t first = 0; first < rollouts.size(); first += per) {
      std::size_t const last = std::min(rollouts.size(), first + per);
      Update u;
      auto const t0 = clock::now();
      auto grad = surrogate_gradient(std::span<Rollout const>(rollouts).subspan(first, last - first), first == 0, u);
      auto const t1 = clock::now();
      optimizer_step(grad, schedule_.lr(s), u);
      seconds_backward += std::chrono::duration<double>(t1 - t0).count();
      seconds_optimizer += std::chrono::duration<double>(clock::now() - t1).count();
      loss += u.loss;
      grad_norm += u.grad_norm;
      kl += u.kl_sum;
      clipped += u.clipped;
      n_tokens_all += u.n_tokens;
      ratio_dev = std::max(ratio_dev, u.first_ratio_dev);
      ++updates;
    }
    timing_ = {{"generation", st.seconds_generation}, {"reward", st.seconds_reward}, {"reference", st.seconds_reference},
               {"forward_backward", seconds_backward}, {"optimizer", seconds_optimizer}};
    auto const& rewards = st.rewards;
    double const n = static_cast<double>(rewards.size());
    double const reward_mean = std::accumulate(rewards.begin(), rewards.end(), 0.0) / n;
    double reward_var = 0;
    for (double r : rewards) reward_var += (r - reward_mean) * (r - reward_mean);
    // "correct": the first correctness term of the reward (else a reward above 0.5).
    std::vector<std::uint8_t> correct(rewards.size());
    auto const correct_term = std::find_if(o_.reward.terms.begin(), o_.reward.terms.end(),
                                           [](RewardTerm const& t) { return t.kind == RewardTerm::Kind::Correct; });
    for (std::size_t i = 0; i < rewards.size(); ++i)
      correct[i] = !st.components.empty() && correct_term != o_.reward.terms.end()
                       ? st.components[static_cast<std::size_t>(correct_term - o_.reward.terms.begin())][i] > 0.5
                       : rewards[i] > 0.5;
    Index solved_groups = 0, flat_groups = 0;
    std::size_t const G = static_cast<std::size_t>(o_.group_size);
    for (std::size_t p = 0; p < st.prompts.size(); ++p) {
      auto const group = std::span<double const>(rewards).subspan(p * G, G);
      solved_groups += std::any_of(correct.begin() + static_cast<std::ptrdiff_t>(p * G), correct.begin() + static_cast<std::ptrdiff_t>((p + 1) * G),
                                   [](std::uint8_t c) { return c != 0; })
                           ? 1
                           : 0;
      flat_groups += std::all_of(group.begin(), group.end(), [&](double r) { return r == group[0]; }) ? 1 : 0;
    }
    double const tokens = std::max(1.0, n_tokens_all);
    double const n_prompts = static_cast<double>(st.prompts.size());
    Metrics m{{"reward_mean", reward_mean},
              {"reward_std", std::sqrt(reward_var / n)},
              {"accuracy", static_cast<double>(std::count(correct.begin(), correct.end(), std::uint8_t{1})) / n},
              {"pass_at_group", static_cast<double>(solved_groups) / n_prompts},
              {"flat_group_fraction", static_cast<double>(flat_groups) / n_prompts},
              {"response_length", st.length / n},
              {"stopped_fraction", st.stopped / n}};
    for (std::size_t k = 0; k < st.components.size(); ++k)
      m.emplace_back("reward_" + o_.reward.terms[k].name(),
                     std::accumulate(st.components[k].begin(), st.components[k].end(), 0.0) / static_cast<double>(st.components[k].size()));
    m.insert(m.end(), {{"groups_trained", static_cast<double>(st.groups_kept)},
                       {"groups_skipped", static_cast<double>(st.groups_skipped)},
                       {"sampling_rounds", static_cast<double>(st.rounds)},
                       {"sequences_generated", static_cast<double>(st.sequences)},
                       {"tokens_generated", static_cast<double>(st.tokens)},
                       {"policy_loss", updates > 0 ? loss / static_cast<double>(updates) : 0.0},
                       {"clip_fraction", clipped / tokens},
                       {"kl", kl / tokens},
                       {"first_ratio_max_deviation", ratio_dev},
                       {"grad_norm", updates > 0 ? grad_norm / static_cast<double>(updates) : 0.0},
                       {"lr", schedule_.lr(s)}});
    return m;
  }

  /// The mini-batch loss L at the current theta (forward only): what update() descends.
  double surrogate(std::span<Rollout const> mb) const {
    MiniBatch const shape = mini_batch_shape(mb);
    double loss = 0;
    for (std::size_t first = 0; first < mb.size(); first += static_cast<std::size_t>(o_.micro_batch)) {
      auto const micro = mb.subspan(first, std::min(mb.size() - first, static_cast<std::size_t>(o_.micro_batch)));
      auto const [batch, mask] = pack(micro);
      auto const logp = policy_.model().token_logprobs(batch, mask, o_.temperature);
      Update u;
      token_terms(micro, logp, shape, false, u);
      loss += u.loss;
    }
    return loss;
  }

  /// dL/dtheta of the mini-batch at the current theta, accumulated over micro-batches (unclipped).
  std::vector<float> surrogate_gradient(std::span<Rollout const> mb, bool on_policy, Update& u) {
    MiniBatch const shape = mini_batch_shape(mb);
    std::vector<float> grad(static_cast<std::size_t>(policy_.count()), 0.0f);  // (b)
    for (std::size_t first = 0; first < mb.size(); first += static_cast<std::size_t>(o_.micro_batch)) {
      auto const micro = mb.subspan(first, std::min(mb.size() - first, static_cast<std::size_t>(o_.micro_batch)));
      auto const [batch, mask] = pack(micro);
      auto const objective = [&](std::span<float const> logp) { return token_terms(micro, logp, shape, on_policy, u); };
      auto const [logp, g] = policy_.objective_and_gradient(batch, mask, o_.temperature, objective);
      for (std::size_t k = 0; k < grad.size(); ++k) grad[k] += g[k];
    }
    for (auto const& r : mb) u.n_tokens += static_cast<double>(r.old_logp.size());
    return grad;
  }

 private:
  /// The prompts of dynamic-sampling round k >= 1 of step s: a permutation keyed by (seed, s, k).
  std::vector<Index> resample_indices(Index s, Index round) const {
    auto order = seeded_permutation(o_.seed, 0x100000000ull / 2 + static_cast<std::uint64_t>(s) * 64 + static_cast<std::uint64_t>(round),
                                    prompts_.size());
    order.resize(static_cast<std::size_t>(o_.prompts_per_step));
    return order;
  }

  /// log pi_ref of every response token with the adapter switched off (the base model).
  void reference_logprobs(std::vector<Rollout>& rollouts) {
    policy_.set_enabled(false);
    for (std::size_t first = 0; first < rollouts.size(); first += static_cast<std::size_t>(o_.micro_batch)) {
      std::size_t const last = std::min(rollouts.size(), first + static_cast<std::size_t>(o_.micro_batch));
      auto const [batch, mask] = pack(std::span<Rollout const>(rollouts).subspan(first, last - first));
      auto const ref = policy_.model().token_logprobs(batch, mask, o_.temperature);
      std::size_t at = 0;
      for (std::size_t i = first; i < last; ++i) {
        auto& r = rollouts[i];
        r.ref_logp.assign(ref.begin() + static_cast<std::ptrdiff_t>(at), ref.begin() + static_cast<std::ptrdiff_t>(at + r.old_logp.size()));
        at += r.old_logp.size();
      }
    }
    policy_.set_enabled(true);
  }

  /// The supervised mask marks response tokens; the decoder's supervised order is sequence by
  /// sequence, token by token, which is the order of old_logp.
  static std::pair<model::PackedBatch, std::vector<std::uint8_t>> pack(std::span<Rollout const> rs) {
    model::PackedBatch batch;
    std::vector<std::uint8_t> mask;
    for (auto const& r : rs) {
      batch.add(r.tokens);
      mask.insert(mask.end(), r.response.begin(), r.response.end());
    }
    return {std::move(batch), std::move(mask)};
  }

  /// What the aggregation weights need of a mini-batch: its sequences n and response tokens N.
  struct MiniBatch {
    double n_sequences = 0, n_tokens = 0;
  };
  static MiniBatch mini_batch_shape(std::span<Rollout const> mb) {
    MiniBatch m{static_cast<double>(mb.size()), 0};
    for (auto const& r : mb) m.n_tokens += static_cast<double>(r.old_logp.size());
    return m;
  }

  /// w_it of every token of sequence r (see the header comment).
  double token_weight(Rollout const& r, MiniBatch const& m) const {
    double const n = std::max(1.0, m.n_sequences), length = std::max<double>(1.0, static_cast<double>(r.old_logp.size()));
    switch (o_.aggregation) {
      case Aggregation::TokenMean: return 1.0 / std::max(1.0, m.n_tokens);
      case Aggregation::SequenceMeanTokenMean: return 1.0 / (n * length);
      case Aggregation::SequenceMeanTokenSum: return 1.0 / n;
      case Aggregation::ConstantNormalizer: return 1.0 / (n * static_cast<double>(std::max<Index>(1, o_.max_new_tokens)));
    }
    return 0.0;
  }

  /// Every token's loss term (summed into u) and dL/dlogp, in the decoder's supervised order.
  /// The sequence ratio s_i = exp(mean_t(logp_t - old_t)) enters every token of y_i with the same
  /// value, so L_i = l(s_i) sum_t w_it and dL_i/dlogp_t = l'(s_i) sum_t' w_it' / |y_i|.
  std::vector<float> token_terms(std::span<Rollout const> micro, std::span<float const> logp, MiniBatch const& shape, bool on_policy,
                                 Update& u) const {
    std::vector<float> d(logp.size());
    std::size_t t = 0;
    for (auto const& r : micro) {
      double const w = token_weight(r, shape);
      std::size_t const length = r.old_logp.size();
      TokenLoss sequence{};
      if (o_.loss == PolicyLoss::SequenceRatio && length > 0) {
        double mean_log_ratio = 0;
        for (std::size_t j = 0; j < length; ++j) mean_log_ratio += double{logp[t + j]} - double{r.old_logp[j]};
        mean_log_ratio /= static_cast<double>(length);
        // l and dl/d(mean log-ratio); with sum_t' w_it' = w |y_i| and d(mean)/dlogp_t = 1 / |y_i|,
        // each token's dL/dlogp_t is w dl/d(mean): the two |y_i| cancel.
        sequence = ppo_token(mean_log_ratio, 0.0, r.advantage, o_.clip_low, o_.clip_high, o_.dual_clip);
      }
      for (std::size_t j = 0; j < length; ++j, ++t) {
        TokenLoss pg;
        switch (o_.loss) {
          case PolicyLoss::Ppo: pg = ppo_token(logp[t], r.old_logp[j], r.advantage, o_.clip_low, o_.clip_high, o_.dual_clip); break;
          case PolicyLoss::Reinforce: pg = TokenLoss{-double{r.advantage} * logp[t], -double{r.advantage}, false}; break;
          case PolicyLoss::SequenceRatio: pg = sequence; break;
        }
        double dl = pg.dloss;
        u.loss += w * pg.loss;
        u.clipped += pg.clipped ? 1 : 0;
        if (on_policy) u.first_ratio_dev = std::max(u.first_ratio_dev, std::abs(std::exp(double{logp[t]} - r.old_logp[j]) - 1.0));
        if (!r.ref_logp.empty()) {
          TokenLoss const k = k3_token(logp[t], r.ref_logp[j]);
          u.kl_sum += k.loss;  // measured whenever the base model's log-probs are there
          if (o_.kl_coef > 0) {
            u.loss += w * o_.kl_coef * k.loss;
            dl += o_.kl_coef * k.dloss;
          }
        }
        d[t] = static_cast<float>(w * dl);
      }
    }
    TINYLORA_CHECK(t == logp.size(), "GrpoTrainer: ", logp.size(), " log-probs for ", t, " response tokens");
    return d;
  }

  /// The optimizer step on a mini-batch's gradient: clipping, the recipe's optimizer, theta back into
  /// the policy.
  void optimizer_step(std::vector<float>& grad, float lr, Update& u) {
    u.grad_norm = o_.grad_clip > 0 ? optim::clip_global_norm(grad, o_.grad_clip) : optim::global_norm(grad);
    TINYLORA_CHECK(std::isfinite(u.grad_norm), "GrpoTrainer: the gradient is not finite (norm ", u.grad_norm,
                   "). Hint: lower the learning rate; the last checkpoint is intact.");
    trainable_.step(grad, lr);
    policy_.set_theta(trainable_.theta());
  }

  Policy& policy_;
  text::Tokenizer const& tok_;
  GrpoOptions o_;
  std::vector<std::int32_t> stop_ids_;
  optim::Trainable<P, O> trainable_;
  std::vector<std::vector<std::int32_t>> prompts_;  // tokenized chat prompts
  std::vector<std::string> answers_;                // reference final answers
  Index total_ = 0;
  optim::LrSchedule schedule_;
  Metrics timing_;
};

}  // namespace tinylora::train
