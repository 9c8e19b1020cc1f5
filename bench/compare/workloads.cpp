// bench/compare/workloads.cpp: tinylora's side of the side-by-side benchmark (bench/compare/README.md).
// `prepare` tokenizes the W1/W3 inputs once with tinylora's own tokenizer and writes them to JSON, so
// the Python peers consume exactly the same token ids; `run` measures one workload once in this
// process (an untimed warm-up call, then one timed call) and prints one JSON line.
//   compare_workloads prepare --model M.gguf --data test.jsonl --out build/compare/inputs.json
//   compare_workloads run --workload w1_fp32 --inputs build/compare/inputs.json --round 1
#include <omp.h>
#include <sys/resource.h>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "tinylora/adapters/tiny_lora.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/config.hpp"
#include "tinylora/core/sha256.hpp"
#include "tinylora/data/qa.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/model/generate.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/text/load.hpp"

using namespace tinylora;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
// ---- the configuration both sides share: one line per policy axis --------------------------------
using Kind = adapters::TinyLora<adapters::Paper>;
using Tie = tying::Tiling;
using Backend = backend::Cpu;
inline constexpr Index kBudget = 13;  // trainable scalars of W2 and W4 (the paper's 13 parameters)

struct Options {
  std::string mode, model, data, out, inputs, workload;
  std::size_t n_loss = 16, n_train = 4, n_prompts = 8, max_length = 512;
  Index n_samples = 4, max_new_tokens = 128;
  int round = 0;
  std::uint64_t seed = 1;
};

/// One example of the inputs file: token ids and the supervised mask (W1, W2).
struct Example {
  std::vector<std::int32_t> tokens;     // (n_seq)
  std::vector<std::uint8_t> supervised; // (n_seq)
};

double seconds_of(auto&& f) {
  auto const a = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - a).count();
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is KiB on Linux
}

// ---- prepare: the shared inputs file ------------------------------------------------------------
void prepare(Options const& o) {
  auto const tok = text::load_tokenizer(o.model);
  auto const config = io::GgufFile::open(o.model);
  std::int32_t const eos = config.get_or<std::int32_t>("tokenizer.ggml.eos_token_id", -1);
  std::size_t const n_rows = std::max(o.n_loss, o.n_prompts);
  auto const qa = data::load_qa_jsonl(o.data, {.limit = n_rows});
  TINYLORA_CHECK(qa.size() == n_rows, "compare_workloads prepare: '", o.data, "' holds ", qa.size(), " examples (expected at least ",
                 n_rows, "). Hint: pass GSM8K's test.jsonl with --data.");
  data::PromptFormat const format;
  Json loss = Json::array(), prompts = Json::array();
  for (std::size_t i = 0; i < o.n_loss; ++i) {
    auto const s = data::make_supervised(tok, format, qa[i], eos, o.max_length);
    loss.push_back({{"prompt", data::render_prompt(format, qa[i].question)},
                    {"tokens", s.tokens},
                    {"supervised", s.supervised},
                    {"prompt_length", std::min(s.prompt_length, s.tokens.size())}});
  }
  for (std::size_t i = 0; i < o.n_prompts; ++i) {
    std::string const text = data::render_prompt(format, qa[i].question);
    prompts.push_back({{"text", text}, {"tokens", tok.encode(text, true)}});
  }
  Json const j = {{"format_version", 1},
                  {"model", o.model},
                  {"model_sha256", sha256_file(o.model)},
                  {"data", o.data},
                  {"data_sha256", sha256_file(o.data)},
                  {"eos", eos},
                  {"max_length", o.max_length},
                  {"n_train", o.n_train},
                  {"budget", kBudget},
                  {"generation", {{"n_samples", o.n_samples}, {"max_new_tokens", o.max_new_tokens}, {"temperature", 1.0}, {"seed", o.seed}}},
                  {"loss_examples", loss},
                  {"prompts", prompts}};
  std::ofstream(o.out) << j.dump() << "\n";
  TINYLORA_CHECK(std::ifstream(o.out).good(), "compare_workloads prepare: cannot write '", o.out, "'");
  std::fprintf(stderr, "compare_workloads: wrote %s (%zu loss examples, %zu prompts)\n", o.out.c_str(), o.n_loss, o.n_prompts);
}

// ---- run: one workload, one measurement ---------------------------------------------------------
std::vector<Example> examples_of(Json const& inputs, std::size_t limit) {
  std::vector<Example> out;
  for (auto const& e : inputs.at("loss_examples")) {
    if (out.size() == limit) break;
    out.push_back({e.at("tokens").get<std::vector<std::int32_t>>(), e.at("supervised").get<std::vector<std::uint8_t>>()});
  }
  return out;
}

/// All examples packed as one batch (both sides run the whole batch in one call).
std::pair<model::PackedBatch, std::vector<std::uint8_t>> pack(std::vector<Example> const& examples) {
  model::PackedBatch batch;
  std::vector<std::uint8_t> mask;  // (n_tokens)
  for (auto const& e : examples) {
    batch.add(e.tokens);
    mask.insert(mask.end(), e.supervised.begin(), e.supervised.end());
  }
  return {std::move(batch), std::move(mask)};
}

template <class P>
Json loss_workload(std::string const& model, Json const& inputs) {
  auto net = model::Decoder<Backend, P>::load(model);
  auto const [batch, mask] = pack(examples_of(inputs, inputs.at("loss_examples").size()));
  (void)net.loss(batch, mask);  // warm-up
  model::LossResult loss;
  double const s = seconds_of([&] { loss = net.loss(batch, mask); });
  return {{"seconds", s}, {"tokens", batch.n_tokens()}, {"tokens_per_s", static_cast<double>(batch.n_tokens()) / s},
          {"loss", loss.mean()}, {"supervised_tokens", loss.n_tokens}, {"precision", std::string(P::name)}};
}

Json train_step_workload(std::string const& model, Json const& inputs) {
  auto net = model::Decoder<Backend, precision::Fp32>::load(model);
  auto const modules = model::target_modules(net.config(), {});
  model::AdaptedModel<Recipe<Kind, Tie, precision::Fp32, optim::AdamW, Backend>> adapted(net, model::AdapterSpec::of_budget(kBudget));
  auto const& plan = adapted.plan();
  TINYLORA_CHECK(adapted.count() == kBudget, "compare_workloads w2: the plan has ", adapted.count(), " trainable scalars (expected ", kBudget, ")");
  adapted.set_theta(std::vector<float>(static_cast<std::size_t>(kBudget), 0.01f));
  auto const [batch, mask] = pack(examples_of(inputs, inputs.at("n_train").get<std::size_t>()));
  (void)adapted.loss_and_gradient(batch, mask);  // warm-up
  model::LossResult loss;
  std::vector<float> grad;
  double const s = seconds_of([&] { std::tie(loss, grad) = adapted.loss_and_gradient(batch, mask); });
  double norm = 0;
  for (float g : grad) norm += double{g} * g;
  return {{"seconds", s}, {"tokens", batch.n_tokens()}, {"tokens_per_s", static_cast<double>(batch.n_tokens()) / s},
          {"loss", loss.mean()}, {"grad_norm", std::sqrt(norm)}, {"trainable", adapted.count()}, {"modules", modules.size()},
          {"groups", plan.n_groups}, {"tie", plan.tie.describe()}, {"precision", "fp32"}};
}

Json generate_workload(std::string const& model, Json const& inputs) {
  auto net = model::Decoder<Backend, precision::Fp32>::load(model);
  std::vector<std::vector<std::int32_t>> prompts;
  for (auto const& p : inputs.at("prompts")) prompts.push_back(p.at("tokens").get<std::vector<std::int32_t>>());
  auto const& g = inputs.at("generation");
  model::GenerationOptions options;  // no stop ids: every sequence runs to max_new_tokens
  options.max_new_tokens = g.at("max_new_tokens").get<Index>();
  options.n_samples = g.at("n_samples").get<Index>();
  options.sampling = {.greedy = false, .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = g.at("seed").get<std::uint64_t>()};
  (void)model::generate(net, prompts, options);  // warm-up
  options.sampling.seed += 1;
  std::vector<model::Completion> out;
  double const s = seconds_of([&] { out = model::generate(net, prompts, options); });
  Index generated = 0;
  for (auto const& c : out) generated += static_cast<Index>(c.tokens.size());
  TINYLORA_CHECK(generated == static_cast<Index>(prompts.size()) * options.n_samples * options.max_new_tokens,
                 "compare_workloads w3: generated ", generated, " tokens (expected every sequence to reach max_new_tokens)");
  return {{"seconds", s}, {"generated_tokens", generated}, {"tokens_per_s", static_cast<double>(generated) / s},
          {"sequences", out.size()}, {"precision", "fp32 (dequantized Q4_1)"}};
}

Json init_workload(std::string const& model) {
  auto net = model::Decoder<Backend, precision::Fp32>::load(model);
  using Adapted = model::AdaptedModel<Recipe<Kind, Tie, precision::Fp32, optim::AdamW, Backend>>;
  auto const modules = model::target_modules(net.config(), {});
  {  // warm-up: the same construction on one module (layer 0's q_proj), as peers.py does
    model::Targets const one{.types = {"q_proj"}, .regex = {}, .layers = {0}};
    Adapted warm(net, model::AdapterSpec::of_budget(1, one));
  }
  Index count = 0, rank = 0;
  double const s = seconds_of([&] {
    Adapted adapted(net, model::AdapterSpec::of_budget(kBudget));
    count = adapted.count();
    rank = adapted.plan().kind.r;
  });
  return {{"seconds", s}, {"modules", modules.size()}, {"trainable", count}, {"rank", rank}, {"precision", "fp32"}};
}

void run(Options const& o) {
  std::ifstream in(o.inputs);
  TINYLORA_CHECK(in.good(), "compare_workloads run: cannot open '", o.inputs, "'. Hint: run `compare_workloads prepare` first.");
  Json const inputs = Json::parse(in);
  std::string const model = o.model.empty() ? inputs.at("model").get<std::string>() : o.model;
  Json result;
  if (o.workload == "w1_fp32") result = loss_workload<precision::Fp32>(model, inputs);
  else if (o.workload == "w1_bf16") result = loss_workload<precision::Bf16>(model, inputs);
  else if (o.workload == "w2") result = train_step_workload(model, inputs);
  else if (o.workload == "w3") result = generate_workload(model, inputs);
  else if (o.workload == "w4") result = init_workload(model);
  else fail("compare_workloads run: unknown workload '", o.workload, "' (expected w1_fp32, w1_bf16, w2, w3 or w4)");
  result["system"] = "tinylora";
  result["workload"] = o.workload;
  result["round"] = o.round;
  result["threads"] = omp_get_max_threads();
  result["peak_rss_mib"] = peak_rss_mib();
  for (auto const& [key, value] : backend::cpu::blas_kernel().attributes()) result[key] = value;
  result["versions"] = {{"tinylora", TINYLORA_VERSION_STRING}, {"compiler", __VERSION__},
                        {"eigen", std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                      std::to_string(EIGEN_MINOR_VERSION)}};
  std::cout << result.dump() << std::endl;
}

int main(int argc, char** argv) {
  try {
    Options o;
    namespace po = boost::program_options;
    po::options_description desc("compare_workloads (prepare | run) [options]");
    desc.add_options()("help", "this text")("model", po::value(&o.model), "GGUF model (run: default the one in --inputs)")(
        "data", po::value(&o.data), "prepare: GSM8K test JSONL")("out", po::value(&o.out), "prepare: inputs JSON to write")(
        "n-loss", po::value(&o.n_loss)->default_value(o.n_loss), "prepare: W1 examples")(
        "n-train", po::value(&o.n_train)->default_value(o.n_train), "prepare: W2 examples (the first of the W1 ones)")(
        "n-prompts", po::value(&o.n_prompts)->default_value(o.n_prompts), "prepare: W3 prompts")(
        "n-samples", po::value(&o.n_samples)->default_value(o.n_samples), "prepare: W3 samples per prompt")(
        "max-new-tokens", po::value(&o.max_new_tokens)->default_value(o.max_new_tokens), "prepare: W3 tokens per sample")(
        "max-length", po::value(&o.max_length)->default_value(o.max_length), "prepare: W1 truncation (tokens)")(
        "seed", po::value(&o.seed)->default_value(o.seed), "prepare: W3 sampling seed")(
        "inputs", po::value(&o.inputs), "run: the inputs JSON of prepare")(
        "workload", po::value(&o.workload), "run: w1_fp32 | w1_bf16 | w2 | w3 | w4")(
        "round", po::value(&o.round)->default_value(o.round), "run: round number, echoed in the JSON line");
    po::positional_options_description pos;
    pos.add("mode", 1);
    desc.add_options()("mode", po::value(&o.mode), "prepare | run");
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
    po::notify(vm);
    if (vm.count("help") != 0 || o.mode.empty()) {
      std::cout << desc << "\n";
      return o.mode.empty() && vm.count("help") == 0 ? 2 : 0;
    }
    if (o.mode == "prepare") {
      TINYLORA_CHECK(!o.model.empty() && !o.data.empty() && !o.out.empty(), "compare_workloads prepare: needs --model, --data and --out");
      prepare(o);
    } else if (o.mode == "run") {
      TINYLORA_CHECK(!o.inputs.empty() && !o.workload.empty(), "compare_workloads run: needs --inputs and --workload");
      run(o);
    } else {
      fail("compare_workloads: unknown mode '", o.mode, "' (expected prepare or run)");
    }
    return 0;
  } catch (std::exception const& e) {
    std::cerr << "compare_workloads: error: " << e.what() << "\n";
    return 1;
  }
}
