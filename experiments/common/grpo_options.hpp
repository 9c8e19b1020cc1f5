// experiments/common/grpo_options.hpp: the GRPO options shared by 02_budget_sweep and
// 03_train_grpo (defaults: the paper's GSM8K run, train::GrpoOptions), and their part of a run's identity.
#pragma once

#include <string>

#include "common/cli.hpp"
#include "tinylora/train/grpo.hpp"

namespace tinylora::cli {

struct GrpoCli {
  train::GrpoOptions grpo;
  std::string loss = "ppo", advantage = "group-normalized", aggregation = "token-mean";
};

/// Every GRPO option except the learning rate (the sweep takes a list of them).
inline void add_grpo_options(po::options_description& desc, GrpoCli& o) {
  auto& g = o.grpo;
  desc.add_options()("prompts", po::value(&g.prompts_per_step)->default_value(g.prompts_per_step), "prompts per step (rollout batch)")(
      "group", po::value(&g.group_size)->default_value(g.group_size), "completions per prompt (G)")(
      "temperature", po::value(&g.temperature)->default_value(g.temperature), "sampling temperature of the rollouts")(
      "max-new-tokens", po::value(&g.max_new_tokens)->default_value(g.max_new_tokens), "rollout generation limit")(
      "loss", po::value(&o.loss)->default_value(o.loss), "ppo | reinforce (the reference implementation's objective)")(
      "advantage", po::value(&o.advantage)->default_value(o.advantage), "group-normalized | group-centered")(
      "aggregation", po::value(&o.aggregation)->default_value(o.aggregation), "token-mean | sequence-sum")(
      "clip-low", po::value(&g.clip_low)->default_value(g.clip_low), "ratio clip below 1")(
      "clip-high", po::value(&g.clip_high)->default_value(g.clip_high), "ratio clip above 1")(
      "dual-clip", po::value(&g.dual_clip)->default_value(g.dual_clip), "dual clip c for negative advantages (0: off)")(
      "kl-coef", po::value(&g.kl_coef)->default_value(g.kl_coef), "k3 KL penalty to the base model (0: off)")(
      "warmup", po::value(&g.warmup_fraction)->default_value(g.warmup_fraction), "warm-up fraction of the steps")(
      "grad-clip", po::value(&g.grad_clip)->default_value(g.grad_clip), "max gradient norm (0: off)")(
      "minibatches", po::value(&g.n_minibatches)->default_value(g.n_minibatches), "optimizer steps per rollout batch")(
      "micro-batch", po::value(&g.micro_batch)->default_value(g.micro_batch), "sequences per forward/backward (memory only)")(
      "epochs", po::value(&g.epochs)->default_value(g.epochs), "passes over the training prompts")(
      "max-steps", po::value(&g.max_steps)->default_value(g.max_steps), "stop after this many steps (0: all epochs)");
}

/// Turns the string options into the enums (after parsing); errors name the bad value.
inline void finish_grpo_options(GrpoCli& o, std::string const& rule, std::uint64_t seed) {
  o.grpo.loss = train::policy_loss_from_string(o.loss);
  o.grpo.advantage = train::advantage_from_string(o.advantage);
  o.grpo.aggregation = train::aggregation_from_string(o.aggregation);
  o.grpo.rule = data::extract_rule_from_string(rule);
  o.grpo.seed = seed;
}

inline std::string grpo_identity(GrpoCli const& o) {
  auto const& g = o.grpo;
  return " prompts=" + std::to_string(g.prompts_per_step) + " group=" + std::to_string(g.group_size) + " T=" + std::to_string(g.temperature) +
         " max_new=" + std::to_string(g.max_new_tokens) + " loss=" + o.loss + " adv=" + o.advantage + " agg=" + o.aggregation +
         " clip=" + std::to_string(g.clip_low) + ":" + std::to_string(g.clip_high) + ":" + std::to_string(g.dual_clip) +
         " kl=" + std::to_string(g.kl_coef) + " warmup=" + std::to_string(g.warmup_fraction) + " grad_clip=" + std::to_string(g.grad_clip) +
         " minibatches=" + std::to_string(g.n_minibatches) + " epochs=" + std::to_string(g.epochs) + " max_steps=" + std::to_string(g.max_steps);
}

}  // namespace tinylora::cli
