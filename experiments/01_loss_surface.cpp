// 01_loss_surface: the loss-surface report's 2-D scan on a real model. TinyLoRA with budget b = 2
// (tiling: theta_1 drives the first half of the modules by depth, theta_2 the second), a grid over
// [vmin, vmax]^2, and at every point the SFT loss of eq. 6 over a fixed slice of GSM8K (prompt masked,
// answer + EOS supervised). Resumes per grid point. Writes theta1, theta2, the loss grid, its
// done-mask, the best point and which modules each axis drives to HDF5.
//   build/release/experiments/01_loss_surface --grid 20 --limit 128 --data train.jsonl   (the report)
#include <cmath>
#include <cstdio>
#include <iostream>

#include "common/cli.hpp"
#include "common/model_path.hpp"
#include "common/recipe_main.hpp"
#include "tinylora/core/sha256.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/model/adapter_record.hpp"
#include "tinylora/text/load.hpp"
#include "tinylora/tinylora.hpp"
#include "tinylora/train/loss_surface.hpp"

using namespace tinylora;
// ---- the ablation block: one line per policy axis; --recipe picks one of the list (default: the first)
using Tie = tying::Tiling;
using Precision = precision::Fp32;
using Optimizer = optim::AdamW;    // part of the recipe's name only: a scan trains nothing
using Backend = backend::Default;  // backend::Cpu; backend::Cuda under the cuda preset (backend/default.hpp)
template <class Convention>
using Scan = Recipe<adapters::TinyLora<Convention>, Tie, Precision, Optimizer, Backend>;
using Recipes = TypeList<Scan<adapters::Reference>, Scan<adapters::Paper>, Scan<adapters::Peft>, Scan<adapters::Fork>>;

struct Options {
  std::string model = cli::default_model_path(), data = "data/gsm8k/train_first128.jsonl";
  std::string question_field = "question", answer_field = "answer";
  std::string out = "results/01_loss_surface.h5", center, direction1, direction2;
  std::size_t limit = 128, offset = 0, max_length = 512;
  Index budget = 2, grid = 20, batch = 4;
  double vmin = -0.05, vmax = 0.05;
  std::uint64_t seed = 1;
};

template <class R>
void run(Options const& o) {
  auto net = model::Decoder<typename R::backend, typename R::precision>::load(o.model);  // a GGUF file or a Hugging Face folder
  auto const tok = text::load_tokenizer(o.model);
  auto spec = model::AdapterSpec::of_budget(o.budget);
  spec.options.seed = o.seed;
  model::AdaptedModel<R> adapted(net, spec);
  auto const& plan = adapted.plan();
  Index const b = adapted.count();
  std::printf("%s on %s: %td modules, budget %td -> %s\n", R::describe().c_str(), o.model.c_str(), adapted.adapter_set().n_modules(),
              o.budget, plan.describe().c_str());

  data::QaOptions qo{o.question_field, o.answer_field, o.offset, o.limit, false, o.seed};
  auto const qa = data::load_qa_jsonl(o.data, qo);
  std::vector<data::SupervisedExample> examples;
  for (auto const& ex : qa) examples.push_back(data::make_supervised(tok, {}, ex, net.config().eos, o.max_length));

  train::SurfacePlan surface{train::linspace(o.vmin, o.vmax, o.grid), train::linspace(o.vmin, o.vmax, o.grid),
                             o.center.empty() ? std::vector<float>(static_cast<std::size_t>(b), 0.0f) : cli::parse_floats(o.center, "center"),
                             o.direction1.empty() ? std::vector<float>(static_cast<std::size_t>(b), 0.0f) : cli::parse_floats(o.direction1, "direction1"),
                             o.direction2.empty() ? std::vector<float>(static_cast<std::size_t>(b), 0.0f) : cli::parse_floats(o.direction2, "direction2")};
  if (o.direction1.empty()) surface.d1[0] = 1.0f;
  if (o.direction2.empty()) surface.d2[std::min<std::size_t>(1, surface.d2.size() - 1)] = 1.0f;
  TINYLORA_CHECK(surface.center.size() == static_cast<std::size_t>(b) && surface.d1.size() == static_cast<std::size_t>(b) &&
                     surface.d2.size() == static_cast<std::size_t>(b),
                 "01_loss_surface: --center/--direction1/--direction2 need ", b, " comma-separated values (theta's size)");

  std::filesystem::create_directories(std::filesystem::absolute(o.out).parent_path());
  auto file = io::ResultFile::open_or_create_resumable(o.out);
  std::string const model_sha = cli::model_fingerprint(o.model);
  std::string const identity = "model=" + model_sha + " data=" + sha256_file(o.data) + " recipe=" +
                               R::describe_adapter() + " grid=" + std::to_string(o.grid) + " range=" + std::to_string(o.vmin) + ":" +
                               std::to_string(o.vmax) + " budget=" + std::to_string(b) + " limit=" + std::to_string(o.limit) +
                               " offset=" + std::to_string(o.offset) + " max_length=" + std::to_string(o.max_length) +
                               " seed=" + std::to_string(o.seed) + " center=" + o.center + " d1=" + o.direction1 + " d2=" + o.direction2;
  if (file.has_attr("/", "run_identity")) {
    TINYLORA_CHECK(file.get_attr<std::string>("/", "run_identity") == identity, "01_loss_surface: '", o.out,
                   "' holds a scan made with other options or files; give another --out to start a new one");
  } else {
    file.set_attr("/", "run_identity", identity);
    file.set_attr("/", "experiment", "01_loss_surface");
    cli::record_platform(file);
    file.set_attr("/", "recipe", R::describe());
    file.set_attr("/", "model", o.model);
    file.set_attr("/", "model_sha256", model_sha);
    file.set_attr("/", "data", o.data);
    file.set_attr("/", "data_sha256", sha256_file(o.data));
    file.set_attr("/", "seed", static_cast<std::int64_t>(o.seed));
    file.set_attr("/", "budget", static_cast<std::int64_t>(b));
    file.set_attr("/", "tie", plan.tie.describe());
    file.set_attr("/", "batch_size", static_cast<std::int64_t>(o.batch));
    file.set_attr("/", "max_length", static_cast<std::int64_t>(o.max_length));
    file.set_attr("/", "n_examples", static_cast<std::int64_t>(examples.size()));
    file.write("theta1", surface.t1);
    file.write("theta2", surface.t2);
    file.write("center", surface.center);
    file.write("direction1", surface.d1);
    file.write("direction2", surface.d2);
    for (Index g = 0; g < adapted.adapter_set().n_groups(); ++g)
      file.write_strings("groups/" + std::to_string(g), adapted.group_modules(g));
  }
  model::record_or_check_adapter(file, adapted, model_sha);
  auto grid = file.resumable("loss", {static_cast<std::size_t>(o.grid), static_cast<std::size_t>(o.grid)});
  train::scan_surface(surface, grid, [&](std::vector<float> const& th) { adapted.set_theta(th); },
                      [&] { return train::dataset_loss(net, examples, o.batch).mean(); });
  auto const values = grid.values();
  std::size_t best = 0;
  for (std::size_t k = 0; k < values.size(); ++k)
    if (values.data()[k] < values.data()[best]) best = k;
  Index const bi = static_cast<Index>(best) / o.grid, bj = static_cast<Index>(best) % o.grid;
  file.set_attr("/", "best_i", static_cast<std::int64_t>(bi));
  file.set_attr("/", "best_j", static_cast<std::int64_t>(bj));
  file.set_attr("/", "best_theta1", surface.t1[static_cast<std::size_t>(bi)]);
  file.set_attr("/", "best_theta2", surface.t2[static_cast<std::size_t>(bj)]);
  file.set_attr("/", "best_loss", values.data()[best]);
  std::printf("best point (%td, %td): theta = (%+.5f, %+.5f), loss %.6f; loss range [%.6f, %.6f]\nwrote %s\n", bi, bj,
              surface.t1[static_cast<std::size_t>(bi)], surface.t2[static_cast<std::size_t>(bj)], values.data()[best],
              values.data()[best], *std::max_element(values.begin(), values.end()), o.out.c_str());
}

template <class R>
int scan(int argc, char** argv) {
  Options o;
  namespace po = cli::po;
  po::options_description desc("options (defaults: the report's setting on the shipped GSM8K slice)");
  desc.add_options()("model", po::value(&o.model)->default_value(o.model), "GGUF model file or Hugging Face folder")(
      "data", po::value(&o.data)->default_value(o.data), "JSONL question/answer file")(
      "question-field", po::value(&o.question_field)->default_value(o.question_field), "JSON field of the question")(
      "answer-field", po::value(&o.answer_field)->default_value(o.answer_field), "JSON field of the answer")(
      "limit", po::value(&o.limit)->default_value(o.limit), "examples scanned (0: all)")(
      "offset", po::value(&o.offset)->default_value(o.offset), "examples skipped first")(
      "budget", po::value(&o.budget)->default_value(o.budget), "trainable scalars b: the planner picks the recipe's tie setting closest to it")(
      "grid", po::value(&o.grid)->default_value(o.grid), "points per axis")(
      "vmin", po::value(&o.vmin)->default_value(o.vmin), "lowest coordinate")(
      "vmax", po::value(&o.vmax)->default_value(o.vmax), "highest coordinate")(
      "batch", po::value(&o.batch)->default_value(o.batch), "sequences per forward pass")(
      "max-length", po::value(&o.max_length)->default_value(o.max_length), "tokens per example (prompt + answer)")(
      "seed", po::value(&o.seed)->default_value(o.seed), "seed of the projections P")(
      "center", po::value(&o.center), "theta at the grid's origin, b comma-separated values (default 0)")(
      "direction1", po::value(&o.direction1), "first axis direction, b values (default e_1)")(
      "direction2", po::value(&o.direction2), "second axis direction, b values (default e_2)")(
      "out", po::value(&o.out)->default_value(o.out), "HDF5 result file (resumed if present)");
  if (!cli::parse(argc, argv, desc, "01_loss_surface: the 2-D TinyLoRA loss surface of the loss-surface report")) return 0;
  TINYLORA_CHECK(o.grid >= 1 && o.batch >= 1 && o.budget >= 1 && o.vmin <= o.vmax, "01_loss_surface: need grid, batch, budget >= 1 and vmin <= vmax");
  run<R>(o);
  return 0;
}

int main(int argc, char** argv) {
  return cli::recipe_main<Recipes>("01_loss_surface", argc, argv, [&]<class R>(int n, char** args) { return scan<R>(n, args); });
}
