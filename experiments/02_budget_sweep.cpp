// 02_budget_sweep: GRPO at budget b = 13 over a learning-rate grid (the paper's sweep, default
// {1e-7, 5e-7, 1e-6, 5e-6, 1e-5, 1e-4, 2e-4}). Each cell starts from theta = 0, trains, and is scored
// by greedy pass@1 on a validation slice cut from the TRAINING file (after the training examples);
// the best cell (ties on validation broken by the training reward of its last quarter of steps,
// train::select_on_validation) and the untrained baseline are then evaluated once on the held-out test
// split. The test split never chooses anything. Resumes per cell, and within a cell per step.
//   build/release/experiments/02_budget_sweep --prompts 8 --max-new-tokens 128 --max-steps 20 --out results/sweep.h5
#include <cstdio>
#include <numeric>
#include <vector>

#include "common/grpo_options.hpp"
#include "common/recipe_main.hpp"
#include "common/train_setup.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/tinylora.hpp"

using namespace tinylora;
// ---- the ablation block: one line per policy axis ------------------------------------------------
using Adapter = adapters::TinyLora<adapters::Paper>;
using Tie = tying::Tiling;
using Precision = precision::Fp32;
using Optimizer = optim::AdamW;
using Backend = backend::Default;  // backend::Cpu; backend::Cuda under the cuda preset (backend/default.hpp)
// The second recipe is the larger adapter of the RL result (scripts/rl-result): LoRA-XS, r x r per module.
using Recipes = TypeList<Recipe<Adapter, Tie, Precision, Optimizer, Backend>,
                         Recipe<adapters::LoraXs, Tie, Precision, Optimizer, Backend>>;  // --recipe picks one

template <class Experiment>
int sweep(int argc, char** argv) {
  auto run = cli::TrainRunOptions::with_out("results/02_budget_sweep.h5");
  run.limit = 256;
  cli::GrpoCli grpo;
  std::string lrs = "1e-7,5e-7,1e-6,5e-6,1e-5,1e-4,2e-4";
  namespace po = cli::po;
  po::options_description desc("options (GRPO defaults: the paper's GSM8K run; size --prompts and --max-new-tokens to the machine)");
  cli::add_train_run_options(desc, run);
  cli::add_grpo_options(desc, grpo);
  desc.add_options()("lrs", po::value(&lrs)->default_value(lrs), "learning rates, comma-separated")(
      "out", po::value(&run.out)->default_value(run.out), "HDF5 result file (resumed if present)");
  if (!cli::parse(argc, argv, desc, "02_budget_sweep: GRPO learning-rate sweep at a fixed budget, selected on validation")) return 0;
  cli::finish_grpo_options(grpo, run.rule, run.seed);
  auto const grid = cli::parse_floats(lrs, "lrs");
  TINYLORA_CHECK(!grid.empty() && run.limit > 0 && run.val_limit > 0, "02_budget_sweep: need at least one learning rate, --limit > 0 and --val-limit > 0");

  auto net = model::Decoder<typename Experiment::backend, typename Experiment::precision>::load(run.model);
  auto const tok = text::load_tokenizer(run.model);
  grpo.grpo.format = train::prompt_format_for(tok, run.instruction);
  model::AdaptedModel<Experiment> policy(net, cli::adapter_spec(run));
  auto const train_set = cli::load_train(run);
  auto const val_set = cli::load_validation(run);
  auto const test_set = cli::load_eval(run);
  std::printf("%s: b = %td (%s), %zu training prompts, %zu validation, %zu test; %zu learning rates\n", Experiment::describe().c_str(),
              policy.count(), policy.plan().tie.describe().c_str(), train_set.size(), val_set.size(), test_set.size(), grid.size());

  std::string const identity = "02_budget_sweep " + cli::train_run_identity(run) + " recipe=" + Experiment::describe() +
                               cli::grpo_identity(grpo) + " lrs=" + lrs + " val_limit=" + std::to_string(run.val_limit);
  auto file = cli::open_run_file(run, "02_budget_sweep", identity, policy);
  if (!file.has("lrs")) file.write("lrs", std::vector<double>(grid.begin(), grid.end()));
  auto val_accuracy = file.resumable("val_accuracy", {grid.size()});
  auto theta = file.resumable("theta_final", {grid.size(), static_cast<std::size_t>(policy.count())});

  std::vector<float> const initial = policy.adapter_set().initial_theta();  // every cell starts here
  for (std::size_t c = 0; c < grid.size(); ++c) {
    if (val_accuracy.done(c)) {
      std::printf("cell %zu (lr %g): validation accuracy %.4f (from the result file)\n", c, static_cast<double>(grid[c]), val_accuracy.values().data()[c]);
      continue;
    }
    std::string const cell = "cells/" + std::to_string(c) + "/";
    std::printf("== cell %zu of %zu: lr %g\n", c + 1, grid.size(), static_cast<double>(grid[c]));
    policy.set_theta(initial);
    auto options = grpo.grpo;
    options.lr = grid[c];
    train::GrpoTrainer<Experiment> trainer(policy, tok, train_set, train::chat_stop_ids(tok, net.config()), options);
    train::TrainLog log(file, trainer.total_steps(), policy.count(), cell);
    train::run_steps(trainer, log,
                     cli::with_validation({.checkpoint_dir = cli::checkpoint_dir(run) / ("cell-" + std::to_string(c)),
                                           .checkpoint_every = run.checkpoint_every,
                                           .keep_last = static_cast<std::size_t>(run.keep_last),
                                           .run_identity = identity + " cell=" + std::to_string(c),
                                           .die_at_step = c == 0 ? run.die_at_step : -1},
                                          file, cell + "eval/validation", trainer.total_steps(), net, tok, val_set, run));
    // With --val-every the probe after the last step has measured this already: read back, not redone.
    double const acc = cli::evaluate_once(file, cell + "eval/validation", net, tok, val_set, run);
    auto const th = trainer.theta();
    for (std::size_t k = 0; k < th.size(); ++k) theta.store(c * th.size() + k, th[k]);
    val_accuracy.store(c, acc);
  }
  // The table, the best cell on validation, and its test accuracy beside the baseline's.
  auto const acc = val_accuracy.values();
  std::vector<double> validation(acc.data(), acc.data() + grid.size()), late_reward;  // (cells) each
  for (std::size_t c = 0; c < grid.size(); ++c) {
    auto const reward = file.template read_vector<double>("cells/" + std::to_string(c) + "/metrics/reward_mean");  // (steps)
    std::size_t const tail = std::max<std::size_t>(1, reward.size() / 4);
    late_reward.push_back(std::accumulate(reward.end() - static_cast<std::ptrdiff_t>(tail), reward.end(), 0.0) / static_cast<double>(tail));
  }
  std::size_t const best = train::select_on_validation(validation, late_reward);
  std::printf("\n%-12s %-18s %s\n", "lr", "validation pass@1", "training reward, last quarter (breaks ties)");
  for (std::size_t c = 0; c < grid.size(); ++c)
    std::printf("%-12g %-18.4f %.4f%s\n", static_cast<double>(grid[c]), validation[c], late_reward[c], c == best ? "  <- selected" : "");
  if (!file.has("late_train_reward")) file.write("late_train_reward", late_reward);
  file.set_attr("/", "best_cell", static_cast<std::int64_t>(best));
  file.set_attr("/", "best_lr", static_cast<double>(grid[best]));
  policy.set_enabled(false);
  double const baseline = cli::baseline_once(file, net, tok, test_set, run);
  policy.set_enabled(true);
  auto const all_theta = theta.values();
  std::vector<float> best_theta(static_cast<std::size_t>(policy.count()));
  for (std::size_t k = 0; k < best_theta.size(); ++k) best_theta[k] = static_cast<float>(all_theta.data()[best * best_theta.size() + k]);
  policy.set_theta(best_theta);
  double const trained = cli::evaluate_once(file, "eval/best", net, tok, test_set, run);
  std::printf("best lr %g (validation %.4f): test accuracy baseline %.4f -> trained %.4f (%+.4f)\nwrote %s\n", static_cast<double>(grid[best]),
              acc.data()[best], baseline, trained, trained - baseline, run.out.c_str());
  return 0;
}

int main(int argc, char** argv) {
  return cli::recipe_main<Recipes>("02_budget_sweep", argc, argv, [&]<class R>(int n, char** args) { return sweep<R>(n, args); });
}
