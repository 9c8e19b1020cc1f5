// experiments/common/grpo_options.hpp: the GRPO options shared by 02_budget_sweep and
// 03_train_grpo (defaults: the paper's GSM8K run, train::GrpoOptions), and their part of a run's
// identity. --objective picks a preset (train::Objective); --loss, --advantage, --aggregation,
// --clip-low, --clip-high, --dual-clip and --dynamic-sampling, when given, override its settings.
#pragma once

#include <optional>
#include <string>

#include "common/cli.hpp"
#include "tinylora/train/grpo.hpp"

namespace tinylora::cli {

struct GrpoCli {
  train::GrpoOptions grpo;
  std::string objective = "paper", reward = "correct";
  std::string loss = "objective", advantage = "objective", aggregation = "objective", dynamic_sampling = "objective";
  std::optional<float> clip_low, clip_high, dual_clip;
};

/// Every GRPO option except the learning rate (the sweep takes a list of them).
inline void add_grpo_options(po::options_description& desc, GrpoCli& o) {
  auto& g = o.grpo;
  auto const optional_float = [](std::optional<float>& target) {
    return po::value<float>()->value_name("X")->notifier([&target](float v) { target = v; });
  };
  desc.add_options()("prompts", po::value(&g.prompts_per_step)->default_value(g.prompts_per_step), "prompts per step (rollout batch)")(
      "group", po::value(&g.group_size)->default_value(g.group_size), "completions per prompt (G)")(
      "temperature", po::value(&g.temperature)->default_value(g.temperature), "sampling temperature of the rollouts")(
      "max-new-tokens", po::value(&g.max_new_tokens)->default_value(g.max_new_tokens), "rollout generation limit")(
      "reward", po::value(&o.reward)->default_value(o.reward),
      "weighted reward terms TERM[:ARG][=W], comma-separated: correct[:RULE] (RULE default: --rule), format[:hash|boxed|either], "
      "length:C (DAPO's soft overlong penalty over the last C tokens); e.g. correct:last-number=1,format:hash=0.5")(
      "objective", po::value(&o.objective)->default_value(o.objective),
      "paper | grpo | dapo | dr-grpo | gspo | rloo: a preset of the options below (train/grpo.hpp names each one's source)")(
      "loss", po::value(&o.loss)->default_value(o.loss), "ppo (token ratio) | sequence-ratio (GSPO) | reinforce (default: the objective's)")(
      "advantage", po::value(&o.advantage)->default_value(o.advantage),
      "group-normalized | group-centered | leave-one-out (default: the objective's)")(
      "aggregation", po::value(&o.aggregation)->default_value(o.aggregation),
      "token-mean | sequence-mean | sequence-sum | constant (default: the objective's)")(
      "clip-low", optional_float(o.clip_low), "ratio clip below 1 (default: the objective's)")(
      "clip-high", optional_float(o.clip_high), "ratio clip above 1 (default: the objective's)")(
      "dual-clip", optional_float(o.dual_clip), "dual clip c for negative advantages, 0: off (default: the objective's)")(
      "dynamic-sampling", po::value(&o.dynamic_sampling)->default_value(o.dynamic_sampling),
      "on | off: skip groups whose rewards are all equal and draw further prompts (DAPO; default: the objective's)")(
      "max-sampling-rounds", po::value(&g.max_sampling_rounds)->default_value(g.max_sampling_rounds),
      "with dynamic sampling: rollout rounds per step at most")(
      "kl-coef", po::value(&g.kl_coef)->default_value(g.kl_coef), "k3 KL penalty to the base model (0: off)")(
      "measure-kl", po::bool_switch(&g.measure_kl), "log the k3 KL to the base model every step even with --kl-coef 0 (one more forward per step)")(
      "warmup", po::value(&g.warmup_fraction)->default_value(g.warmup_fraction), "warm-up fraction of the steps")(
      "grad-clip", po::value(&g.grad_clip)->default_value(g.grad_clip), "max gradient norm (0: off)")(
      "minibatches", po::value(&g.n_minibatches)->default_value(g.n_minibatches), "optimizer steps per rollout batch")(
      "micro-batch", po::value(&g.micro_batch)->default_value(g.micro_batch), "sequences per forward/backward (memory only)")(
      "epochs", po::value(&g.epochs)->default_value(g.epochs), "passes over the training prompts")(
      "max-steps", po::value(&g.max_steps)->default_value(g.max_steps), "stop after this many steps (0: all epochs)");
}

/// Applies the objective preset, then the options given one by one, and parses the reward (after
/// parsing); errors name the bad value.
inline void finish_grpo_options(GrpoCli& o, std::string const& rule, std::uint64_t seed) {
  auto& g = o.grpo;
  g.apply_objective(train::objective_from_string(o.objective));
  if (o.loss != "objective") g.loss = train::policy_loss_from_string(o.loss);
  if (o.advantage != "objective") g.advantage = train::advantage_from_string(o.advantage);
  if (o.aggregation != "objective") g.aggregation = train::aggregation_from_string(o.aggregation);
  if (o.clip_low) g.clip_low = *o.clip_low;
  if (o.clip_high) g.clip_high = *o.clip_high;
  if (o.dual_clip) g.dual_clip = *o.dual_clip;
  if (o.dynamic_sampling == "on") g.dynamic_sampling = true;
  else if (o.dynamic_sampling == "off") g.dynamic_sampling = false;
  else TINYLORA_CHECK(o.dynamic_sampling == "objective", "--dynamic-sampling must be on or off (got '", o.dynamic_sampling, "')");
  TINYLORA_CHECK(g.clip_low >= 0 && g.clip_low < 1 && g.clip_high >= 0 && g.dual_clip >= 0, "--clip-low must lie in [0, 1), --clip-high and --dual-clip >= 0");
  g.reward = train::Reward::parse(o.reward, data::extract_rule_from_string(rule));
  g.reward.validate(g.max_new_tokens);
  g.seed = seed;
}

/// The settings in force (after finish_grpo_options), so that two spellings of one run are one identity.
inline std::string grpo_identity(GrpoCli const& o) {
  auto const& g = o.grpo;
  return " prompts=" + std::to_string(g.prompts_per_step) + " group=" + std::to_string(g.group_size) + " T=" + std::to_string(g.temperature) +
         " max_new=" + std::to_string(g.max_new_tokens) + " " + g.describe_objective() + " warmup=" + std::to_string(g.warmup_fraction) +
         " grad_clip=" + std::to_string(g.grad_clip) + " minibatches=" + std::to_string(g.n_minibatches) + " epochs=" + std::to_string(g.epochs) +
         " max_steps=" + std::to_string(g.max_steps) + " instruction=" + g.format.instruction +
         (g.measure_kl ? " measure_kl" : "");
}

}  // namespace tinylora::cli
