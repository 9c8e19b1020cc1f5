// tinylora/train/grpo.hpp: GRPO as the paper ran it (its VERL fork, REFERENCE.md section 4), and the
// reference implementation's REINFORCE as an option. One training step:
//   1. rollouts: G completions of each of the step's prompts at temperature T (shared prefill);
//   2. rewards r in {0, 1} by exact match of the extracted answer, advantages per group
//        A_i = (r_i - mean(r)) / (std(r) + 1e-6)      (std unbiased, as torch.std), or r_i - mean(r);
//   3. n_minibatches optimizer steps over the rollout batch, each minimizing the token-level PPO loss
//        rho_t = pi_theta(y_t) / pi_old(y_t)           (pi_old: the rollout policy's log-probs)
//        l_t = max(-A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high)),  and for A < 0: min(l_t, -A c)
//        L = agg_t(l_t) + beta agg_t(k3_t),  k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1
//      with agg the token mean over the mini-batch (or per-sequence sums averaged over sequences);
//      gradient clipping, linear warm-up, the recipe's optimizer on theta.
// The gradient of L w.r.t. each token's log-prob is written out below (ppo_token, k3_token), and
// Decoder::objective_and_backward carries it to theta.
#pragma once

#include <algorithm>
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

namespace tinylora::train {

enum class PolicyLoss { Ppo, Reinforce };
enum class AdvantageMode { GroupNormalized, GroupCentered };
enum class Aggregation { TokenMean, SequenceMeanTokenSum };

inline PolicyLoss policy_loss_from_string(std::string_view s) {
  if (s == "ppo") return PolicyLoss::Ppo;
  if (s == "reinforce") return PolicyLoss::Reinforce;
  fail("policy_loss_from_string(): unknown policy loss '", s, "' (expected ppo or reinforce)");
}
inline AdvantageMode advantage_from_string(std::string_view s) {
  if (s == "group-normalized") return AdvantageMode::GroupNormalized;
  if (s == "group-centered") return AdvantageMode::GroupCentered;
  fail("advantage_from_string(): unknown advantage '", s, "' (expected group-normalized or group-centered)");
}
inline Aggregation aggregation_from_string(std::string_view s) {
  if (s == "token-mean") return Aggregation::TokenMean;
  if (s == "sequence-sum") return Aggregation::SequenceMeanTokenSum;
  fail("aggregation_from_string(): unknown aggregation '", s, "' (expected token-mean or sequence-sum)");
}

/// Defaults: the paper's GSM8K run (REFERENCE.md section 4); the learning rate is swept.
struct GrpoOptions {
  // rollouts
  Index prompts_per_step = 64;   // rollout batch: prompts per step
  Index group_size = 4;          // G completions per prompt
  float temperature = 1.0f;
  Index max_new_tokens = 4096;
  data::ExtractRule rule = data::ExtractRule::PaperFork;
  data::PromptFormat format{};
  /// Optional reward in place of the exact match: (completion, its decoded text, reference answer).
  std::function<double(model::Completion const&, std::string const&, std::string const&)> reward;
  // objective
  PolicyLoss loss = PolicyLoss::Ppo;
  AdvantageMode advantage = AdvantageMode::GroupNormalized;
  Aggregation aggregation = Aggregation::TokenMean;
  float clip_low = 0.2f, clip_high = 0.4f;  // ratio clip range [1 - low, 1 + high]
  float dual_clip = 3.0f;                   // c of the dual clip for A < 0 (0: off)
  float kl_coef = 0.0f;                     // beta; > 0 computes the base model's log-probs (adapter disabled)
  // optimization
  float lr = 1e-5f;
  double warmup_fraction = 0.05;
  double grad_clip = 1.0;                   // max global norm (0: off)
  Index n_minibatches = 2;                  // optimizer steps per rollout batch
  Index micro_batch = 8;                    // sequences per forward/backward (memory only: never changes the result)
  Index epochs = 3;
  Index max_steps = 0;                      // 0: epochs x steps per epoch
  std::uint64_t seed = 0;                   // data order and sampling
};

/// Advantages of rewards laid out group by group ((n_prompts G)): r - mean, divided by (std + 1e-6)
/// for GroupNormalized with the unbiased std of the group (a group of one has A = 0).
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
      A[first + i] = static_cast<float>(mode == AdvantageMode::GroupNormalized ? centered / (std_unbiased + 1e-6) : centered);
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
  std::vector<float> ref_logp;          // (response) log pi_ref, when kl_coef > 0
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

  /// Rollout statistics of one step (for the metrics).
  struct RolloutStats {
    std::vector<double> rewards;   // (n_prompts G) group by group
    std::vector<Index> prompts;    // (n_prompts) example indices
    double length = 0, stopped = 0;
  };

  /// Steps 1-2 of step s: rollouts at the current theta, rewards, advantages (and the base model's
  /// log-probs when kl_coef > 0). Empty completions are dropped.
  std::vector<Rollout> rollouts(Index s, RolloutStats& st) {
    policy_.set_enabled(true);
    policy_.set_theta(trainable_.theta());
    st.prompts = prompt_indices(s);
    std::vector<std::vector<std::int32_t>> prompts;
    for (Index i : st.prompts) prompts.push_back(prompts_[static_cast<std::size_t>(i)]);
    model::GenerationOptions g;
    g.max_new_tokens = o_.max_new_tokens;
    g.n_samples = o_.group_size;
    g.stop_ids = stop_ids_;
    g.sampling.temperature = o_.temperature;
    g.sampling.seed = o_.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(s) + 1;
    auto const completions = model::generate(policy_.model(), prompts, g);
    st.rewards.clear();
    st.length = st.stopped = 0;
    for (auto const& c : completions) {
      std::string const text = tok_.decode(c.tokens, true);
      std::string const& reference = answers_[static_cast<std::size_t>(st.prompts[static_cast<std::size_t>(c.prompt)])];
      st.rewards.push_back(o_.reward ? o_.reward(c, text, reference) : data::exact_match_reward(text, reference, o_.rule));
      st.length += static_cast<double>(c.tokens.size());
      st.stopped += c.stopped ? 1 : 0;
    }
    auto const advantages = group_advantages(st.rewards, o_.group_size, o_.advantage);
    std::vector<Rollout> out;
    for (std::size_t i = 0; i < completions.size(); ++i) {
      auto const& c = completions[i];
      if (c.tokens.empty()) continue;
      Rollout r;
      r.tokens = prompts[static_cast<std::size_t>(c.prompt)];
      r.response.assign(r.tokens.size(), 0);
      r.tokens.insert(r.tokens.end(), c.tokens.begin(), c.tokens.end());
      r.response.resize(r.tokens.size(), 1);
      r.old_logp = c.policy_logprobs;
      r.advantage = advantages[i];
      out.push_back(std::move(r));
    }
    if (o_.kl_coef > 0) reference_logprobs(out);
    return out;
  }

  Metrics step(Index s) {
    RolloutStats st;
    auto const rollouts = this->rollouts(s, st);
    // ---- 3. mini-batch updates
    double loss = 0, grad_norm = 0, kl = 0, clipped = 0, ratio_dev = 0;
    double n_tokens_all = 0;
    std::size_t const per = (rollouts.size() + static_cast<std::size_t>(o_.n_minibatches) - 1) / static_cast<std::size_t>(o_.n_minibatches);
    Index updates = 0;
    for (std::size_t first = 0; first < rollouts.size(); first += per) {
      std::size_t const last = std::min(rollouts.size(), first + per);
      Update const u = update(std::span<Rollout const>(rollouts).subspan(first, last - first), schedule_.lr(s), first == 0);
      loss += u.loss;
      grad_norm += u.grad_norm;
      kl += u.kl_sum;
      clipped += u.clipped;
      n_tokens_all += u.n_tokens;
      ratio_dev = std::max(ratio_dev, u.first_ratio_dev);
      ++updates;
    }
    auto const& rewards = st.rewards;
    double const n = static_cast<double>(rewards.size());
    double const reward_mean = std::accumulate(rewards.begin(), rewards.end(), 0.0) / n;
    double reward_var = 0;
    for (double r : rewards) reward_var += (r - reward_mean) * (r - reward_mean);
    Index solved_groups = 0, flat_groups = 0;
    for (std::size_t p = 0; p < st.prompts.size(); ++p) {
      auto const group = std::span<double const>(rewards).subspan(p * static_cast<std::size_t>(o_.group_size), static_cast<std::size_t>(o_.group_size));
      solved_groups += std::any_of(group.begin(), group.end(), [](double r) { return r > 0.5; }) ? 1 : 0;
      flat_groups += std::all_of(group.begin(), group.end(), [&](double r) { return r == group[0]; }) ? 1 : 0;
    }
    double const tokens = std::max(1.0, n_tokens_all);
    double const n_prompts = static_cast<double>(st.prompts.size());
    return {{"reward_mean", reward_mean},
            {"reward_std", std::sqrt(reward_var / n)},
            {"accuracy", static_cast<double>(std::count_if(rewards.begin(), rewards.end(), [](double r) { return r > 0.5; })) / n},
            {"pass_at_group", static_cast<double>(solved_groups) / n_prompts},
            {"flat_group_fraction", static_cast<double>(flat_groups) / n_prompts},
            {"response_length", st.length / n},
            {"stopped_fraction", st.stopped / n},
            {"policy_loss", updates > 0 ? loss / static_cast<double>(updates) : 0.0},
            {"clip_fraction", clipped / tokens},
            {"kl", kl / tokens},
            {"first_ratio_max_deviation", ratio_dev},
            {"grad_norm", updates > 0 ? grad_norm / static_cast<double>(updates) : 0.0},
            {"lr", schedule_.lr(s)}};
  }

  /// The mini-batch loss L at the current theta (forward only): what update() descends.
  double surrogate(std::span<Rollout const> mb) const {
    double const weight = aggregation_weight(mb);
    double loss = 0;
    for (std::size_t first = 0; first < mb.size(); first += static_cast<std::size_t>(o_.micro_batch)) {
      auto const micro = mb.subspan(first, std::min(mb.size() - first, static_cast<std::size_t>(o_.micro_batch)));
      auto const [batch, mask] = pack(micro);
      auto const logp = policy_.model().token_logprobs(batch, mask, o_.temperature);
      Update u;
      token_terms(micro, logp, weight, false, u);
      loss += u.loss;
    }
    return loss;
  }

  /// dL/dtheta of the mini-batch at the current theta, accumulated over micro-batches (unclipped).
  std::vector<float> surrogate_gradient(std::span<Rollout const> mb, bool on_policy, Update& u) {
    double const weight = aggregation_weight(mb);
    std::vector<float> grad(static_cast<std::size_t>(policy_.count()), 0.0f);  // (b)
    for (std::size_t first = 0; first < mb.size(); first += static_cast<std::size_t>(o_.micro_batch)) {
      auto const micro = mb.subspan(first, std::min(mb.size() - first, static_cast<std::size_t>(o_.micro_batch)));
      auto const [batch, mask] = pack(micro);
      auto const objective = [&](std::span<float const> logp) { return token_terms(micro, logp, weight, on_policy, u); };
      auto const [logp, g] = policy_.objective_and_gradient(batch, mask, o_.temperature, objective);
      for (std::size_t k = 0; k < grad.size(); ++k) grad[k] += g[k];
    }
    for (auto const& r : mb) u.n_tokens += static_cast<double>(r.old_logp.size());
    return grad;
  }

 private:
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

  double aggregation_weight(std::span<Rollout const> mb) const {
    double n_tokens = 0;
    for (auto const& r : mb) n_tokens += static_cast<double>(r.old_logp.size());
    return o_.aggregation == Aggregation::TokenMean ? 1.0 / std::max(1.0, n_tokens) : 1.0 / static_cast<double>(mb.size());
  }

  /// Every token's loss term (summed into u) and dL/dlogp, in the decoder's supervised order.
  std::vector<float> token_terms(std::span<Rollout const> micro, std::span<float const> logp, double weight, bool on_policy,
                                 Update& u) const {
    std::vector<float> d(logp.size());
    std::size_t t = 0;
    for (auto const& r : micro)
      for (std::size_t j = 0; j < r.old_logp.size(); ++j, ++t) {
        TokenLoss const pg = o_.loss == PolicyLoss::Ppo
                                 ? ppo_token(logp[t], r.old_logp[j], r.advantage, o_.clip_low, o_.clip_high, o_.dual_clip)
                                 : TokenLoss{-double{r.advantage} * logp[t], -double{r.advantage}, false};
        double dl = pg.dloss;
        u.loss += weight * pg.loss;
        u.clipped += pg.clipped ? 1 : 0;
        if (on_policy) u.first_ratio_dev = std::max(u.first_ratio_dev, std::abs(std::exp(double{logp[t]} - r.old_logp[j]) - 1.0));
        if (o_.kl_coef > 0) {
          TokenLoss const k = k3_token(logp[t], r.ref_logp[j]);
          u.loss += weight * o_.kl_coef * k.loss;
          u.kl_sum += k.loss;
          dl += o_.kl_coef * k.dloss;
        }
        d[t] = static_cast<float>(weight * dl);
      }
    TINYLORA_CHECK(t == logp.size(), "GrpoTrainer: ", logp.size(), " log-probs for ", t, " response tokens");
    return d;
  }

  /// One optimizer step on a mini-batch of rollouts. On the first mini-batch theta is still the
  /// rollout policy's, so every ratio should be 1 up to the numerical difference of the cached
  /// decode and the full forward: that deviation is reported.
  Update update(std::span<Rollout const> mb, float lr, bool on_policy) {
    Update u;
    auto grad = surrogate_gradient(mb, on_policy, u);
    u.grad_norm = o_.grad_clip > 0 ? optim::clip_global_norm(grad, o_.grad_clip) : optim::global_norm(grad);
    TINYLORA_CHECK(std::isfinite(u.grad_norm), "GrpoTrainer: the gradient is not finite (norm ", u.grad_norm,
                   "). Hint: lower the learning rate; the last checkpoint is intact.");
    trainable_.step(grad, lr);
    policy_.set_theta(trainable_.theta());
    return u;
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
};

}  // namespace tinylora::train
