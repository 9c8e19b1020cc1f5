// 05_evaluate: greedy pass@1 accuracy on a question/answer set, the paper's metric, and with
// --samples G also pass@1 and pass@G of G completions sampled at --temperature. Always the
// untrained baseline (no adapter); then the adapted model, either
//   --run FILE   the adapter a training run (02, 03, 04) trained: rebuilt from the run file's /adapter
//                record (recipe, options, budget, targets; model/adapter_record.hpp) and checked
//                against it module by module, with the run's trained theta; a model whose content hash
//                differs from the run's is refused;
//   --theta V    a theta given by hand, on the adapter of --recipe (default: the training experiments'
//                recipe) planned with --budget and --seed (defaults: the training experiments' too).
// Both are printed side by side. Writes groups "baseline" and "trained" (accuracy, per-example
// correctness, optionally the completions) to HDF5; a rerun with the same options skips the groups
// already done.
//   build/release/experiments/05_evaluate --run results/03_train_grpo.h5 --limit 64 --keep-completions
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/cli.hpp"
#include "common/model_path.hpp"
#include "common/recipe_main.hpp"
#include "tinylora/core/sha256.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/model/adapter_record.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/tinylora.hpp"
#include "tinylora/train/evaluate.hpp"

using namespace tinylora;
// ---- the ablation block: the recipes this build evaluates; --recipe picks one for --theta (default:
// the first, the training experiments' recipe), --run picks the one the run file records. A run of a
// recipe not listed here is refused with its name: add it to the list.
using Tie = tying::Tiling;
using Precision = precision::Fp32;
using Optimizer = optim::AdamW;    // does not change the adapted function
using Backend = backend::Default;  // backend::Cpu; backend::Cuda under the cuda preset (backend/default.hpp)
template <class Convention>
using Evaluated = Recipe<adapters::TinyLora<Convention>, Tie, Precision, Optimizer, Backend>;
using Recipes = TypeList<Evaluated<adapters::Paper>, Evaluated<adapters::Reference>, Evaluated<adapters::Peft>, Evaluated<adapters::Fork>>;

struct Options {
  // Defaults: the task ladder's calibrated level (data/ladder/README.md: the level where the base
  // model's greedy pass@1 lies in 15-60 %), scored on the last number; the paper's: --rule paper-fork.
  std::string model = cli::default_model_path(), data = "data/ladder/L1_test.jsonl";
  std::string question_field = "question", answer_field = "answer", rule = "last-number";
  std::string theta, run, out = "results/05_evaluate.h5";
  std::string instruction = data::kDefaultInstruction;
  std::size_t limit = 0, offset = 0;
  Index max_new_tokens = 256, batch = 16, budget = 13, samples = 0;
  float temperature = 1.0f;
  std::uint64_t seed = 0, sample_seed = 0;
  bool keep_completions = false;
};

/// The result in `group`: read back when the file already holds it complete, else evaluated and written.
template <class Net>
train::EvalResult measure(io::ResultFile& file, std::string const& group, Net const& net, text::Tokenizer const& tok,
                          std::vector<data::QaExample> const& qa, train::EvalOptions const& eo) {
  if (file.has_attr(group, "accuracy")) {
    train::EvalResult r;
    r.n = file.get_attr<std::int64_t>(group, "n");
    r.n_correct = file.get_attr<std::int64_t>(group, "n_correct");
    r.mean_tokens = file.get_attr<double>(group, "mean_tokens");
    r.seconds = file.get_attr<double>(group, "seconds");
    r.correct = file.read_vector<std::uint8_t>(group + "/correct");
    if (file.has(group + "/correct_samples")) {
      r.samples = file.get_attr<std::int64_t>(group, "samples");
      r.correct_samples = file.read_vector<std::int32_t>(group + "/correct_samples");
      r.sample_mean_tokens = file.get_attr<double>(group, "sample_mean_tokens");
    }
    std::printf("%s: already in the result file (resuming)\n", group.c_str());
    return r;
  }
  std::printf("%s: %zu examples, batch %td, up to %td new tokens\n", group.c_str(), qa.size(), eo.batch_size, eo.max_new_tokens);
  auto r = train::evaluate(net, tok, qa, eo);
  train::write_eval(file, group, r);
  return r;
}

void report(char const* name, train::EvalResult const& r) {
  std::printf("%-9s %td/%td correct = %6.2f%%, mean %.1f tokens, %.1f s\n", name, r.n_correct, r.n, 100.0 * r.accuracy(), r.mean_tokens,
              r.seconds);
  if (r.samples > 0)
    std::printf("%-9s sampled: pass@1 %6.2f%%, pass@%td %6.2f%% (%td samples each, mean %.1f tokens)\n", name, 100.0 * r.pass_at(1), r.samples,
                100.0 * r.pass_at(r.samples), r.samples, r.sample_mean_tokens);
}

/// The theta a training run ended with: 03/04's theta_final, or 02's best cell's row of theta_final.
std::vector<float> trained_theta(io::ResultFile const& run) {
  TINYLORA_CHECK(run.has("theta_final"), "05_evaluate: '", run.path().string(),
                 "' has no theta_final: its training has not finished. Hint: resume the training run first.");
  if (run.has_attr("/", "best_cell")) {  // 02_budget_sweep: (cells, b), the cell chosen on validation
    auto const all = run.read<double, 2>("theta_final");
    auto const c = static_cast<std::size_t>(run.get_attr<std::int64_t>("/", "best_cell"));
    std::vector<float> theta(all.shape()[1]);
    for (std::size_t k = 0; k < theta.size(); ++k) theta[k] = static_cast<float>(all(c, k));
    return theta;
  }
  return run.read_vector<float>("theta_final");
}

template <class R>
void run(Options const& o, data::ExtractRule rule) {
  auto net = model::Decoder<typename R::backend, typename R::precision>::load(o.model);  // a GGUF file or a Hugging Face folder
  auto const tok = text::load_tokenizer(o.model);
  train::EvalOptions eo;
  eo.batch_size = o.batch;
  eo.max_new_tokens = o.max_new_tokens;
  eo.rule = rule;
  eo.keep_completions = o.keep_completions;
  eo.progress = true;
  eo.format = train::prompt_format_for(tok, o.instruction);
  eo.samples = o.samples;
  eo.temperature = o.temperature;
  eo.seed = o.sample_seed;

  // The adapter is built (and theta checked) before any generation, then switched off for the baseline.
  std::string const model_sha = cli::model_fingerprint(o.model);
  std::unique_ptr<model::AdaptedModel<R>> adapted;
  std::vector<float> theta;
  std::string adapter_identity;
  if (!o.run.empty()) {
    auto const run_file = io::ResultFile::open(o.run, io::ResultFile::Mode::ReadOnly);
    auto const recorded = model::read_adapter_record(run_file);
    TINYLORA_CHECK(recorded.model_sha256 == model_sha, "05_evaluate: '", o.run, "' was trained on a model with content hash ",
                   recorded.model_sha256, ", but --model '", o.model, "' has ", model_sha,
                   ". Hint: pass the --model the run was trained with.");
    theta = trained_theta(run_file);
    adapted = std::make_unique<model::AdaptedModel<R>>(net, recorded.spec);
    model::check_same_adapter(recorded, model::adapter_record(*adapted, model_sha), "05_evaluate --run");
    TINYLORA_CHECK(static_cast<Index>(theta.size()) == adapted->count(), "05_evaluate: '", o.run, "' holds ", theta.size(),
                   " trained values for an adapter of ", adapted->count(), " trainable scalars");
    adapter_identity = " run=" + sha256_file(o.run);
    std::printf("adapter of run %s (recipe %s, trained by %s at %s): %s\n", o.run.c_str(), recorded.recipe.c_str(),
                run_file.has_attr("/", "experiment") ? run_file.get_attr<std::string>("/", "experiment").c_str() : "?",
                run_file.has_attr("/", "git_revision") ? run_file.get_attr<std::string>("/", "git_revision").c_str() : "?",
                adapted->plan().describe().c_str());
  } else if (!o.theta.empty()) {
    theta = cli::parse_floats(o.theta, "theta");
    auto spec = model::AdapterSpec::of_budget(o.budget);
    spec.options.seed = o.seed;
    adapted = std::make_unique<model::AdaptedModel<R>>(net, spec);
    TINYLORA_CHECK(static_cast<Index>(theta.size()) == adapted->count(), "05_evaluate: --theta has ", theta.size(),
                   " values but the adapter (budget ", o.budget, ", ", adapted->plan().tie.describe(), ") has ", adapted->count(),
                   " trainable scalars. Hint: pass the --budget, --recipe and --seed the theta was trained with, or --run with its run file.");
    adapter_identity = " theta=" + o.theta + " budget=" + std::to_string(o.budget) + " seed=" + std::to_string(o.seed);
    std::printf("adapter: %s\n", adapted->plan().describe().c_str());
  }
  // The data are read once the adapter is known to fit the model.
  auto const qa = data::load_qa_jsonl(o.data, {o.question_field, o.answer_field, o.offset, o.limit, false, 0});
  if (adapted) {
    adapted->set_theta(theta);
    adapted->set_enabled(false);
  }

  std::filesystem::create_directories(std::filesystem::absolute(o.out).parent_path());
  auto file = io::ResultFile::open_or_create_resumable(o.out);
  std::string const identity = "model=" + model_sha + " data=" + sha256_file(o.data) + " fields=" + o.question_field + "," +
                               o.answer_field + " offset=" + std::to_string(o.offset) + " limit=" + std::to_string(o.limit) +
                               " max_new_tokens=" + std::to_string(o.max_new_tokens) + " rule=" + o.rule + " recipe=" + R::describe_adapter() +
                               adapter_identity + " keep=" + std::to_string(o.keep_completions) +
                               " instruction=" + o.instruction +
                               (o.samples > 0 ? " samples=" + std::to_string(o.samples) + " T=" + exact(o.temperature) + " sample_seed=" + std::to_string(o.sample_seed) : "");
  if (file.has_attr("/", "run_identity")) {
    TINYLORA_CHECK(file.get_attr<std::string>("/", "run_identity") == identity, "05_evaluate: '", o.out,
                   "' holds an evaluation made with other options or files; give another --out to start a new one");
  } else {
    file.set_attr("/", "run_identity", identity);
    file.set_attr("/", "experiment", "05_evaluate");
    cli::record_platform(file);
    file.set_attr("/", "recipe", R::describe());
    if (!o.run.empty()) file.set_attr("/", "run", o.run);
    file.set_attr("/", "model", o.model);
    file.set_attr("/", "model_sha256", model_sha);
    file.set_attr("/", "data", o.data);
    file.set_attr("/", "data_sha256", sha256_file(o.data));
    file.set_attr("/", "offset", static_cast<std::int64_t>(o.offset));
    file.set_attr("/", "limit", static_cast<std::int64_t>(o.limit));
    file.set_attr("/", "n_examples", static_cast<std::int64_t>(qa.size()));
    file.set_attr("/", "max_new_tokens", static_cast<std::int64_t>(o.max_new_tokens));
    file.set_attr("/", "batch_size", static_cast<std::int64_t>(o.batch));
    file.set_attr("/", "rule", o.rule);
    file.set_attr("/", "system_prompt", eo.format.chat.default_system().value_or(""));
    file.set_attr("/", "instruction", eo.format.instruction);
    file.set_attr("/", "seed", static_cast<std::int64_t>(o.seed));
    file.set_attr("/", "budget", static_cast<std::int64_t>(o.budget));
    file.set_attr("/", "samples", static_cast<std::int64_t>(o.samples));
    file.set_attr("/", "temperature", static_cast<double>(o.temperature));
    file.set_attr("/", "sample_seed", static_cast<std::int64_t>(o.sample_seed));
    if (adapted) {
      file.write("theta", theta);
      model::write_adapter_record(file, model::adapter_record(*adapted, model_sha));
    }
  }

  auto const base = measure(file, "baseline", net, tok, qa, eo);
  report("baseline", base);
  if (!adapted) {
    std::printf("accuracy: baseline %.2f%% (%td/%td)  trained - (no --run or --theta given)\nwrote %s\n", 100.0 * base.accuracy(),
                base.n_correct, base.n, o.out.c_str());
    return;
  }
  adapted->set_enabled(true);
  auto const trained = measure(file, "trained", net, tok, qa, eo);
  report("trained", trained);
  Index gained = 0, lost = 0;  // examples the adapter turned right / wrong
  for (std::size_t i = 0; i < base.correct.size(); ++i) {
    if (trained.correct[i] && !base.correct[i]) ++gained;
    if (base.correct[i] && !trained.correct[i]) ++lost;
  }
  std::printf("accuracy: baseline %.2f%% (%td/%td)  trained %.2f%% (%td/%td)  change %+.2f points (%td gained, %td lost)\nwrote %s\n",
              100.0 * base.accuracy(), base.n_correct, base.n, 100.0 * trained.accuracy(), trained.n_correct, trained.n,
              100.0 * (trained.accuracy() - base.accuracy()), gained, lost, o.out.c_str());
}

template <class R>
int evaluate_main(int argc, char** argv) {
  Options o;
  namespace po = cli::po;
  po::options_description desc("options (defaults: the calibrated ladder level L1's test split, scored on the last number)");
  desc.add_options()("model", po::value(&o.model)->default_value(o.model), "GGUF model file or Hugging Face folder")(
      "data", po::value(&o.data)->default_value(o.data), "JSONL question/answer file")(
      "question-field", po::value(&o.question_field)->default_value(o.question_field), "JSON field of the question")(
      "answer-field", po::value(&o.answer_field)->default_value(o.answer_field), "JSON field of the answer ('#### <number>' last)")(
      "offset", po::value(&o.offset)->default_value(o.offset), "examples skipped first")(
      "limit", po::value(&o.limit)->default_value(o.limit), "examples evaluated (0: all)")(
      "max-new-tokens", po::value(&o.max_new_tokens)->default_value(o.max_new_tokens), "generation length limit")(
      "batch", po::value(&o.batch)->default_value(o.batch), "prompts generated together")(
      "rule", po::value(&o.rule)->default_value(o.rule), "answer extraction: paper-fork | reference | boxed | last-number")(
      "run", po::value(&o.run), "a training run's HDF5 file: evaluate the adapter and theta it trained (adds 'trained')")(
      "theta", po::value(&o.theta), "a theta by hand, comma-separated, on --recipe's adapter (adds 'trained')")(
      "budget", po::value(&o.budget)->default_value(o.budget), "with --theta: trainable scalars b of the adapter theta belongs to")(
      "seed", po::value(&o.seed)->default_value(o.seed), "with --theta: seed of the projections P")(
      "keep-completions", po::bool_switch(&o.keep_completions), "store every completion, prediction and reference")(
      "instruction", po::value(&o.instruction)->default_value(o.instruction), "appended to every question after a blank line (\"\": none)")(
      "samples", po::value(&o.samples)->default_value(o.samples), "also G completions sampled per question, for pass@1 and pass@G (0: greedy only)")(
      "temperature", po::value(&o.temperature)->default_value(o.temperature), "with --samples: sampling temperature")(
      "sample-seed", po::value(&o.sample_seed)->default_value(o.sample_seed), "with --samples: seed of the draws")(
      "out", po::value(&o.out)->default_value(o.out), "HDF5 result file (resumed if present)");
  if (!cli::parse(argc, argv, desc, "05_evaluate: greedy pass@1 accuracy, untrained baseline and trained TinyLoRA")) return 0;
  data::ExtractRule const rule = data::extract_rule_from_string(o.rule);
  TINYLORA_CHECK(o.batch >= 1 && o.max_new_tokens >= 1 && o.budget >= 1, "05_evaluate: need --batch, --max-new-tokens and --budget >= 1");
  TINYLORA_CHECK(o.samples >= 0 && (o.samples == 0 || o.temperature > 0), "05_evaluate: --samples must be >= 0 and --temperature > 0");
  TINYLORA_CHECK(o.run.empty() || o.theta.empty(), "05_evaluate: give --run or --theta, not both");
  run<R>(o, rule);
  return 0;
}

/// With --run, the recipe is the one the run file records (its adapter part: the optimizer does
/// not change the adapted function).
std::optional<std::string> recorded_recipe(std::vector<char*> const& args) {
  for (std::size_t i = 1; i < args.size(); ++i) {
    std::string const a = args[i];
    std::string path;
    if (a == "--run" && i + 1 < args.size()) path = args[i + 1];
    else if (a.rfind("--run=", 0) == 0) path = a.substr(6);
    if (!path.empty()) {
      auto const file = io::ResultFile::open(path, io::ResultFile::Mode::ReadOnly);
      return model::read_adapter_record(file).recipe_adapter;
    }
  }
  return std::nullopt;
}

int main(int argc, char** argv) {
  return cli::recipe_main<Recipes>("05_evaluate", argc, argv, [&]<class R>(int n, char** args) { return evaluate_main<R>(n, args); },
                                   recorded_recipe);
}
