// 05_evaluate: greedy pass@1 accuracy on a question/answer set, the paper's metric. Always the
// untrained baseline (no adapter); with --theta also the TinyLoRA-adapted model (the adapter rebuilt
// as 01 builds it: plan_budget + TinyLora + tiling, with the same --budget/--convention/--seed), both
// printed side by side. Writes groups "baseline" and "trained" (accuracy, per-example correctness,
// optionally the completions) to HDF5; a rerun with the same options skips the groups already done.
//   build/release/experiments/05_evaluate --limit 64 --theta 0.012,-0.004 --keep-completions
#include <cstdio>
#include <filesystem>
#include <memory>

#include "common/cli.hpp"
#include "common/model_path.hpp"
#include "tinylora/core/sha256.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/tinylora.hpp"
#include "tinylora/train/evaluate.hpp"

using namespace tinylora;
// ---- the ablation block: one line per policy axis (the convention is chosen at run time) --------
using Conventions = TypeList<adapters::Reference, adapters::Paper, adapters::Peft, adapters::Fork>;
using Tie = tying::Tiling;
using Precision = precision::Fp32;
using Backend = backend::Default;  // backend::Cpu; backend::Cuda under the cuda preset (backend/default.hpp)

struct Options {
  std::string model = cli::default_model_path(), data = "data/arith/test.jsonl";
  std::string question_field = "question", answer_field = "answer", rule = "paper-fork", convention = "reference";
  std::string theta, out = "results/05_evaluate.h5";
  std::size_t limit = 0, offset = 0;
  Index max_new_tokens = 256, batch = 16, budget = 2;
  std::uint64_t seed = 1;
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
}

template <class C>
void run(Options const& o, data::ExtractRule rule) {
  auto net = model::Decoder<Backend, Precision>::load(o.model);  // a GGUF file or a Hugging Face folder
  auto const tok = text::load_tokenizer(o.model);
  train::EvalOptions eo;
  eo.batch_size = o.batch;
  eo.max_new_tokens = o.max_new_tokens;
  eo.rule = rule;
  eo.keep_completions = o.keep_completions;
  eo.progress = true;
  eo.format = train::prompt_format_for(tok);
  auto const qa = data::load_qa_jsonl(o.data, {o.question_field, o.answer_field, o.offset, o.limit, false, 0});

  // The adapter is built (and theta checked) before any generation, then switched off for the baseline.
  using Kind = adapters::TinyLora<C>;
  std::unique_ptr<model::AdaptedModel<Kind, Tie, Precision, Backend>> adapted;
  std::vector<float> theta;
  if (!o.theta.empty()) {
    theta = cli::parse_floats(o.theta);
    auto const plan = tying::plan_budget<Tie>(model::target_modules(net.config(), {}), o.budget, {1});
    adapted = std::make_unique<model::AdaptedModel<Kind, Tie, Precision, Backend>>(net, Kind{.r = 2, .u = plan.u, .seed = o.seed},
                                                                                   plan.strategy);
    TINYLORA_CHECK(static_cast<Index>(theta.size()) == adapted->count(), "05_evaluate: --theta has ", theta.size(),
                   " values but the adapter (budget ", o.budget, ", ", plan.strategy.describe(), ") has ", adapted->count(),
                   " trainable scalars. Hint: pass the --budget, --convention and --seed the theta was trained with.");
    adapted->set_theta(theta);
    adapted->set_enabled(false);
    std::printf("adapter: %s, %s, theta has %td scalars\n", std::string(Kind::name).c_str(), plan.strategy.describe().c_str(),
                adapted->count());
  }

  std::filesystem::create_directories(std::filesystem::absolute(o.out).parent_path());
  auto file = io::ResultFile::open_or_create_resumable(o.out);
  std::string const model_sha = std::filesystem::is_directory(o.model) ? "folder" : sha256_file(o.model);
  std::string const identity = "model=" + model_sha + " data=" + sha256_file(o.data) + " fields=" + o.question_field + "," +
                               o.answer_field + " offset=" + std::to_string(o.offset) + " limit=" + std::to_string(o.limit) +
                               " max_new_tokens=" + std::to_string(o.max_new_tokens) + " rule=" + o.rule + " theta=" + o.theta +
                               " budget=" + std::to_string(o.budget) + " convention=" + std::string(C::name) +
                               " seed=" + std::to_string(o.seed) + " keep=" + std::to_string(o.keep_completions);
  if (file.has_attr("/", "run_identity")) {
    TINYLORA_CHECK(file.get_attr<std::string>("/", "run_identity") == identity, "05_evaluate: '", o.out,
                   "' holds an evaluation made with other options or files; give another --out to start a new one");
  } else {
    file.set_attr("/", "run_identity", identity);
    file.set_attr("/", "experiment", "05_evaluate");
    cli::record_platform(file);
    file.set_attr("/", "recipe", std::string(Kind::name) + "/" + std::string(Tie::name) + "/" + std::string(Precision::name) + "/-/" +
                                      std::string(Backend::name));
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
    if (adapted) file.write("theta", theta);
  }

  auto const base = measure(file, "baseline", net, tok, qa, eo);
  report("baseline", base);
  if (!adapted) {
    std::printf("accuracy: baseline %.2f%% (%td/%td)  trained - (no --theta given)\nwrote %s\n", 100.0 * base.accuracy(),
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

int main(int argc, char** argv) {
  return cli::guarded_main("05_evaluate", [&] {
    Options o;
    namespace po = cli::po;
    po::options_description desc("options (defaults: the whole arithmetic test split, the paper's answer rule)");
    desc.add_options()("model", po::value(&o.model)->default_value(o.model), "GGUF model file or Hugging Face folder")(
        "data", po::value(&o.data)->default_value(o.data), "JSONL question/answer file")(
        "question-field", po::value(&o.question_field)->default_value(o.question_field), "JSON field of the question")(
        "answer-field", po::value(&o.answer_field)->default_value(o.answer_field), "JSON field of the answer ('#### <number>' last)")(
        "offset", po::value(&o.offset)->default_value(o.offset), "examples skipped first")(
        "limit", po::value(&o.limit)->default_value(o.limit), "examples evaluated (0: all)")(
        "max-new-tokens", po::value(&o.max_new_tokens)->default_value(o.max_new_tokens), "generation length limit")(
        "batch", po::value(&o.batch)->default_value(o.batch), "prompts generated together")(
        "rule", po::value(&o.rule)->default_value(o.rule), "answer extraction: paper-fork | reference | boxed | last-number")(
        "theta", po::value(&o.theta), "trained theta, comma-separated (adds the 'trained' evaluation)")(
        "budget", po::value(&o.budget)->default_value(o.budget), "trainable scalars b of the adapter theta belongs to (tiling, u = 1)")(
        "convention", po::value(&o.convention)->default_value(o.convention), "reference | paper | peft | fork")(
        "seed", po::value(&o.seed)->default_value(o.seed), "seed of the projections P")(
        "keep-completions", po::bool_switch(&o.keep_completions), "store every completion, prediction and reference")(
        "out", po::value(&o.out)->default_value(o.out), "HDF5 result file (resumed if present)");
    if (!cli::parse(argc, argv, desc, "05_evaluate: greedy pass@1 accuracy, untrained baseline and trained TinyLoRA")) return 0;
    data::ExtractRule const rule = data::extract_rule_from_string(o.rule);
    TINYLORA_CHECK(o.batch >= 1 && o.max_new_tokens >= 1 && o.budget >= 1, "05_evaluate: need --batch, --max-new-tokens and --budget >= 1");
    bool matched = false;
    for_each_type(Conventions{}, [&]<class C>() {
      if (o.convention == C::name) matched = true, run<C>(o, rule);
    });
    TINYLORA_CHECK(matched, "05_evaluate: unknown convention '", o.convention, "' (expected reference, paper, peft or fork)");
    return 0;
  });
}
