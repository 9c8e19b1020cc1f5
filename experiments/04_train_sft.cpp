// 04_train_sft: TinyLoRA trained by supervised fine-tuning on reference solutions (the
// loss-surface report's eq. 6: prompt masked, answer + EOS supervised, token mean per batch).
// The paper's contrast with GRPO: at 13 parameters SFT moves GSM8K far less, and needs 100-1000x
// larger updates. The untrained baseline and the trained model are evaluated (greedy pass@1) on a
// held-out split; per-step loss, gradient norm, learning rate and theta go to HDF5; checkpoints
// after every step let a killed run resume and write the same file.
//   build/release/experiments/04_train_sft --batch 8 --epochs 1 --lr 1e-3 --out results/sft.h5
#include <cstdio>

#include "common/recipe_main.hpp"
#include "common/train_setup.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/tinylora.hpp"
#include "tinylora/train/sft.hpp"

using namespace tinylora;
// ---- the ablation block: one line per policy axis ------------------------------------------------
using Adapter = adapters::TinyLora<adapters::Paper>;
using Tie = tying::Tiling;
using Precision = precision::Fp32;
using Optimizer = optim::AdamW;
using Backend = backend::Default;  // backend::Cpu; backend::Cuda under the cuda preset (backend/default.hpp)
using Recipes = TypeList<Recipe<Adapter, Tie, Precision, Optimizer, Backend>>;  // more: --recipe picks one

template <class Experiment>
int train_sft(int argc, char** argv) {
  auto run = cli::TrainRunOptions::with_out("results/04_train_sft.h5");
  train::SftOptions s;
  std::size_t max_length = 512;
  namespace po = cli::po;
  po::options_description desc("options");
  cli::add_train_run_options(desc, run);
  desc.add_options()("batch", po::value(&s.batch_size)->default_value(s.batch_size), "examples per optimizer step")(
      "micro-batch", po::value(&s.micro_batch)->default_value(s.micro_batch), "examples per forward/backward (memory only)")(
      "epochs", po::value(&s.epochs)->default_value(s.epochs), "passes over the training examples")(
      "max-steps", po::value(&s.max_steps)->default_value(s.max_steps), "stop after this many steps (0: all epochs)")(
      "lr", po::value(&s.lr)->default_value(s.lr), "learning rate")(
      "warmup", po::value(&s.warmup_fraction)->default_value(s.warmup_fraction), "warm-up fraction of the steps")(
      "grad-clip", po::value(&s.grad_clip)->default_value(s.grad_clip), "max gradient norm (0: off)")(
      "max-length", po::value(&max_length)->default_value(max_length), "tokens per example (prompt + answer)")(
      "out", po::value(&run.out)->default_value(run.out), "HDF5 result file (resumed if present)");
  if (!cli::parse(argc, argv, desc, "04_train_sft: supervised fine-tuning of TinyLoRA's few scalars, with baseline and trained evaluation"))
    return 0;
  s.seed = run.seed;

  auto net = model::Decoder<typename Experiment::backend, typename Experiment::precision>::load(run.model);
  auto const tok = text::load_tokenizer(run.model);
  model::AdaptedModel<Experiment> policy(net, cli::adapter_spec(run));
  auto const train_set = cli::load_train(run);
  auto const eval_set = cli::load_eval(run);
  std::vector<data::SupervisedExample> examples;
  std::size_t dropped = 0;  // examples whose answer does not fit max_length at all teach nothing
  for (auto const& ex : train_set) {
    auto s_ex = data::make_supervised(tok, train::prompt_format_for(tok, run.instruction), ex, net.config().eos, max_length);
    if (s_ex.tokens.size() > s_ex.prompt_length) examples.push_back(std::move(s_ex));
    else ++dropped;
  }
  if (dropped > 0) std::printf("note: %zu examples dropped: their prompt fills --max-length %zu\n", dropped, max_length);
  std::printf("%s: b = %td (%s), %zu training examples, %zu held-out\n", Experiment::describe().c_str(), policy.count(),
              policy.plan().tie.describe().c_str(), examples.size(), eval_set.size());

  std::string const identity = "04_train_sft " + cli::train_run_identity(run) + " recipe=" + Experiment::describe() +
                               " batch=" + std::to_string(s.batch_size) + " epochs=" + std::to_string(s.epochs) +
                               " max_steps=" + std::to_string(s.max_steps) + " lr=" + std::to_string(s.lr) +
                               " warmup=" + std::to_string(s.warmup_fraction) + " grad_clip=" + std::to_string(s.grad_clip) +
                               " max_length=" + std::to_string(max_length);
  auto file = cli::open_run_file(run, "04_train_sft", identity, policy);
  file.set_attr("/", "lr", static_cast<double>(s.lr));

  // The baseline is the same model with the adapter switched off, measured once.
  train::SftTrainer<Experiment> trainer(policy, examples, s);
  return cli::baseline_train_evaluate(file, net, policy, trainer, tok, eval_set, run, identity, static_cast<double>(s.lr));
}

int main(int argc, char** argv) {
  return cli::recipe_main<Recipes>("04_train_sft", argc, argv, [&]<class R>(int n, char** args) { return train_sft<R>(n, args); });
}
