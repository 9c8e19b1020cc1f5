// 03_train_grpo: TinyLoRA trained with GRPO as the paper ran it (REFERENCE.md section 4): G = 4
// samples per prompt at temperature 1, exact-match reward, group-normalized advantages, token-level
// PPO loss with clip (0.2, 0.4) and dual clip 3, two mini-batches per rollout batch, 5% warm-up,
// gradient clip 1, AdamW on b scalars. The untrained baseline and the trained model are evaluated
// (greedy pass@1) on a held-out split. Per-step metrics and theta go to HDF5; checkpoints after
// every step let a killed run resume and write the same file.
//   build/release/experiments/03_train_grpo --prompts 8 --max-new-tokens 128 --lr 1e-4 --out results/grpo.h5
#include <cstdio>

#include "common/grpo_options.hpp"
#include "common/recipe_main.hpp"
#include "common/train_setup.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/tinylora.hpp"
#include "tinylora/train/grpo.hpp"

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
int train_grpo(int argc, char** argv) {
  auto run = cli::TrainRunOptions::with_out("results/03_train_grpo.h5");
  cli::GrpoCli grpo;
  auto& g = grpo.grpo;
  namespace po = cli::po;
  po::options_description desc("options (GRPO defaults: the paper's GSM8K run; size --prompts and --max-new-tokens to the machine)");
  cli::add_train_run_options(desc, run);
  cli::add_grpo_options(desc, grpo);
  desc.add_options()("lr", po::value(&g.lr)->default_value(g.lr), "learning rate")(
      "out", po::value(&run.out)->default_value(run.out), "HDF5 result file (resumed if present)");
  if (!cli::parse(argc, argv, desc, "03_train_grpo: GRPO on TinyLoRA's few scalars, with baseline and trained evaluation")) return 0;
  cli::finish_grpo_options(grpo, run.rule, run.seed);

  auto net = model::Decoder<typename Experiment::backend, typename Experiment::precision>::load(run.model);
  auto const tok = text::load_tokenizer(run.model);
  grpo.grpo.format = train::prompt_format_for(tok, run.instruction);
  model::AdaptedModel<Experiment> policy(net, cli::adapter_spec(run));
  auto const train_set = cli::load_train(run);
  auto const eval_set = cli::load_eval(run);
  std::printf("%s: b = %td (%s), %zu training prompts, %zu held-out\n", Experiment::describe().c_str(), policy.count(),
              policy.plan().tie.describe().c_str(), train_set.size(), eval_set.size());

  std::string const identity = "03_train_grpo " + cli::train_run_identity(run) + " recipe=" + Experiment::describe() +
                               cli::grpo_identity(grpo) + " lr=" + std::to_string(g.lr);
  auto file = cli::open_run_file(run, "03_train_grpo", identity, policy);
  file.set_attr("/", "lr", static_cast<double>(g.lr));

  // The baseline is the same model with the adapter switched off, measured once.
  train::GrpoTrainer<Experiment> trainer(policy, tok, train_set, train::chat_stop_ids(tok, net.config()), g);
  return cli::baseline_train_evaluate(file, net, policy, trainer, tok, eval_set, run, identity, static_cast<double>(g.lr));
}

int main(int argc, char** argv) {
  return cli::recipe_main<Recipes>("03_train_grpo", argc, argv, [&]<class R>(int n, char** args) { return train_grpo<R>(n, args); });
}
