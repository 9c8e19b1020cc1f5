// PEFT adapter folders (interop/peft_adapter.hpp): import PEFT's own saved TinyLoRA adapters and match
// PEFT's logits; export -> import gives back the same theta, factors, projections, groups and
// logits; PEFT loads tinylora's export and reproduces its logits (fixture written by PEFT from the
// committed export, tests/reference/make_fixtures.py --only export); bad folders fail clearly.
//
// Regenerating the export fixture (only when the recipe below or the SVD changes):
//   TINYLORA_WRITE_EXPORT_FIXTURE=1 <build>/tests/test_peft_adapter   writes fixtures/exported_peft_adapter/
//   python3 tests/reference/make_fixtures.py --only export            PEFT loads it, writes its logits
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include "../fixture_batch.hpp"
#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/interop/peft_adapter.hpp"
#include "tinylora/io/safetensors_writer.hpp"
#include "tinylora/io/safetensors.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/precision/policies.hpp"

using namespace tinylora;
using Cpu = backend::Cpu;
using Fp32 = precision::Fp32;
using Model = model::Decoder<Cpu, Fp32>;
using PeftKind = adapters::TinyLora<adapters::Peft>;

namespace {
std::filesystem::path fixtures() { return test::source_dir() / "tests/reference/fixtures"; }

std::vector<float> read_vector(io::SafetensorsFile const& f, std::string const& prefix, Index n_groups) {
  std::vector<float> out;
  for (Index g = 0; g < n_groups; ++g) {
    auto const v = f.read<float>(prefix + std::to_string(g));
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

template <class Adapted>
HostMatrix factor_L(Adapted const& a, Index i) {
  return interop::detail::download_matrix<Cpu>(a.adapter_set().module(i).core().L());
}
template <class Adapted>
HostMatrix factor_R(Adapted const& a, Index i) {
  return interop::detail::download_matrix<Cpu>(a.adapter_set().module(i).core().R());
}

/// Every module's factors, projections and group, and theta, are identical.
template <class A1, class A2>
void check_same_adapter(A1 const& a, A2 const& b) {
  auto const& sa = a.adapter_set();
  auto const& sb = b.adapter_set();
  REQUIRE(sa.n_modules() == sb.n_modules());
  CHECK(sa.n_groups() == sb.n_groups());
  CHECK(a.theta() == b.theta());
  for (Index i = 0; i < sa.n_modules(); ++i) {
    INFO("module " << sa.modules()[static_cast<std::size_t>(i)].name);
    CHECK(sa.modules()[static_cast<std::size_t>(i)].name == sb.modules()[static_cast<std::size_t>(i)].name);
    CHECK(sa.group_of(i) == sb.group_of(i));
    CHECK(factor_L(a, i) == factor_L(b, i));
    CHECK(factor_R(a, i) == factor_R(b, i));
    CHECK(sa.module(i).projection() == sb.module(i).projection());
  }
}

/// max |got - want| over all elements.
double max_abs_difference(HostMatrix const& got, HostMatrix const& want) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  return double((got - want).cwiseAbs().maxCoeff());
}

void write_text(std::filesystem::path const& path, std::string const& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

/// Copies `from` into `to` (a fresh folder).
void copy_folder(std::filesystem::path const& from, std::filesystem::path const& to) {
  std::filesystem::remove_all(to);
  std::filesystem::create_directories(to);
  for (auto const& e : std::filesystem::directory_iterator(from)) std::filesystem::copy(e.path(), to / e.path().filename());
}

/// Rewrites `dir`/adapter_model.safetensors through SafetensorsWriter, letting `edit` drop
/// (return false) or change (name, shape, values) of each tensor.
template <class Edit>
void rewrite_tensors(std::filesystem::path const& dir, Edit edit) {
  auto const path = dir / "adapter_model.safetensors";
  io::SafetensorsWriter w;
  {
    auto const f = io::SafetensorsFile::open(path);
    for (auto const& t : f.tensors()) {
      std::string name = t.name;
      auto shape = t.shape;
      auto values = f.read<float>(t.name);
      if (edit(name, shape, values)) w.add(name, shape, values);
    }
  }
  w.write(path);
}

nlohmann::json read_json(std::filesystem::path const& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// The recipe of the committed export fixture: tiny Llama, five projection types (N = 10 modules),
// TinyLoRA (Peft convention, r = 2, u = 2, our own SVD and projections), two tiles of 5 modules
// (PEFT: weight_tying = 0.8), theta = 0.3 N(0, 1) from seed 2026.
constexpr std::uint64_t kExportSeed = 2026;
using ExportAdapted = model::AdaptedModel<Recipe<PeftKind, tying::Tiling, Fp32, optim::AdamW, Cpu>>;

std::unique_ptr<ExportAdapted> export_recipe(Model& net) {
  PeftKind kind;
  kind.u = 2;
  kind.seed = kExportSeed;
  kind.svd = linalg::SvdMethod::Exact;
  model::Targets targets;
  targets.types = {"q_proj", "v_proj", "o_proj", "up_proj", "down_proj"};
  auto adapted = std::make_unique<ExportAdapted>(net, kind, tying::Tiling{5}, targets);
  adapted->set_theta(test::normal_vector(static_cast<std::size_t>(adapted->count()), kExportSeed, 1, 0.3f));
  return adapted;
}
}  // namespace

TEST_CASE("import PEFT's saved TinyLoRA adapters: logits and loss match PEFT's (tiny Llama and Qwen2)") {
  struct Case {
    char const* model;
    char const* name;
    Index u;
    Index n_groups;
  };
  for (Case const c : {Case{"tiny_llama", "u1_wt0p0", 1, 14}, Case{"tiny_llama", "u4_wt0p5", 4, 7},
                       Case{"tiny_llama", "u2_wt1p0", 2, 1}, Case{"tiny_qwen2", "u3_wt0p0", 3, 14},
                       Case{"tiny_qwen2", "u2_wt0p75", 2, 4}}) {
    std::string const model_name = c.model, case_name = c.name;
    INFO("model " << model_name << ", case " << case_name);
    auto net = Model::load_hf(fixtures() / c.model);
    auto const adapted = interop::import_peft_adapter(fixtures() / c.model / (std::string("peft_tinylora_") + c.name), net);
    auto const f = io::SafetensorsFile::open(fixtures() / (std::string("model_") + c.model + "_tinylora_" + c.name + ".safetensors"));
    CHECK(adapted->adapter_set().adapter().u == c.u);
    CHECK(adapted->adapter_set().n_modules() == 14);
    REQUIRE(adapted->adapter_set().n_groups() == c.n_groups);
    CHECK(adapted->theta() == read_vector(f, "v.", c.n_groups));
    auto const [batch, supervised, where] = test::pack_fixture_batch(f);
    double const worst = test::worst_relative_logit_difference(net.logits(batch), f.read<float>("logits"), where);
    MESSAGE(model_name << " " << case_name << ": worst logit difference (relative to the row's largest) " << worst);
    CHECK(worst <= 1e-4);
    CHECK(net.loss(batch, supervised).mean() == doctest::Approx(f.read<float>("loss")[0]).epsilon(1e-4));
  }
}

TEST_CASE("export -> import round trip: same theta, factors, projections, groups and logits") {
  auto const seed = test::seed(314);
  auto net = Model::load_hf(fixtures() / "tiny_llama");
  auto const f = io::SafetensorsFile::open(fixtures() / "model_tiny_llama.safetensors");
  auto const [batch, supervised, where] = test::pack_fixture_batch(f);

  SUBCASE("PeftRatio over every projection: weight_tying written as given") {
    PeftKind kind;
    kind.u = 3;
    kind.seed = seed;
    model::AdaptedModel<Recipe<PeftKind, tying::PeftRatio, Fp32, optim::AdamW, Cpu>> a(net, kind, tying::PeftRatio{0.6});
    a.set_theta(test::normal_vector(static_cast<std::size_t>(a.count()), seed, 2, 0.5f));
    HostMatrix const want = net.logits(batch);
    auto const dir = test::scratch_dir("peft_export_ratio");
    auto const cfg = interop::export_peft_adapter(dir, a, {.base_model_name_or_path = "tests/reference/fixtures/tiny_llama"});
    CHECK(cfg.weight_tying == 0.6);
    CHECK(cfg.target_modules == std::vector<std::string>{"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"});
    CHECK(cfg.layers_to_transform.empty());
    auto const j = read_json(dir / "adapter_config.json");
    CHECK(j.at("peft_type") == "TINYLORA");
    CHECK(j.at("u") == 3);
    CHECK(j.at("save_projection") == true);
    CHECK(j.at("base_model_name_or_path") == "tests/reference/fixtures/tiny_llama");
    Model net2 = Model::load_hf(fixtures() / "tiny_llama");
    auto const b = interop::import_peft_adapter(dir, net2);
    check_same_adapter(a, *b);
    CHECK(max_abs_difference(net2.logits(batch), want) == 0.0);
  }
  SUBCASE("Tiling over some layers' projections, Paper convention: types + layers_to_transform") {
    adapters::TinyLora<adapters::Paper> kind;
    kind.u = 2;
    kind.seed = seed;
    model::Targets targets;
    targets.types = {"q_proj", "v_proj", "down_proj"};
    targets.layers = {1};
    model::AdaptedModel<Recipe<adapters::TinyLora<adapters::Paper>, tying::All, Fp32, optim::AdamW, Cpu>> a(net, kind, tying::All{}, targets);
    a.set_theta(test::normal_vector(static_cast<std::size_t>(a.count()), seed, 3, 0.5f));
    HostMatrix const want = net.logits(batch);
    auto const dir = test::scratch_dir("peft_export_layers");
    auto const cfg = interop::export_peft_adapter(dir, a);
    CHECK(cfg.layers_to_transform == std::vector<int>{1});
    CHECK(cfg.target_modules == std::vector<std::string>{"down_proj", "q_proj", "v_proj"});
    CHECK(tying::PeftRatio{cfg.weight_tying}.n_groups(3) == 1);
    Model net2 = Model::load_hf(fixtures() / "tiny_llama");
    auto const b = interop::import_peft_adapter(dir, net2);  // Peft convention, same factors: same function
    check_same_adapter(a, *b);
    CHECK(max_abs_difference(net2.logits(batch), want) == 0.0);
  }
  SUBCASE("a regex over module names: written as PEFT's regex form") {
    PeftKind kind;
    kind.u = 1;
    kind.seed = seed;
    model::Targets targets;
    targets.regex = R"(model\.layers\.0\.self_attn\.q_proj|model\.layers\.1\.mlp\.up_proj)";
    model::AdaptedModel<Recipe<PeftKind, tying::Untied, Fp32, optim::AdamW, Cpu>> a(net, kind, tying::Untied{}, targets);
    a.set_theta(test::normal_vector(static_cast<std::size_t>(a.count()), seed, 4, 0.5f));
    HostMatrix const want = net.logits(batch);
    auto const dir = test::scratch_dir("peft_export_regex");
    auto const cfg = interop::export_peft_adapter(dir, a);
    REQUIRE(cfg.target_regex.has_value());
    CHECK(*cfg.target_regex == R"(model\.layers\.0\.self_attn\.q_proj|model\.layers\.1\.mlp\.up_proj)");
    CHECK(cfg.weight_tying == 0.0);
    Model net2 = Model::load_hf(fixtures() / "tiny_llama");
    auto const b = interop::import_peft_adapter(dir, net2);
    check_same_adapter(a, *b);
    CHECK(max_abs_difference(net2.logits(batch), want) == 0.0);
  }
}

TEST_CASE("export refuses what PEFT cannot express: a tiling PEFT's weight_tying cannot produce, a scale != 1") {
  auto net = Model::load_hf(fixtures() / "tiny_llama");
  auto const dir = test::scratch_dir("peft_export_refused");
  {
    // 14 modules in tiles of 4: 4 + 4 + 4 + 2; PEFT with 4 groups ties 3 + 3 + 3 + 5.
    model::AdaptedModel<Recipe<PeftKind, tying::Tiling, Fp32, optim::AdamW, Cpu>> a(net, PeftKind{}, tying::Tiling{4});
    CHECK_THROWS_WITH_AS(interop::export_peft_adapter(dir, a),
                         doctest::Contains("tie groups of strategy 'tiling' (n_tie=4, 4 groups over 14 modules) cannot be "
                                           "written as PEFT's weight_tying"),
                         Error);
  }
  {
    // Tiles of 7 are PEFT's 2 groups: exported with weight_tying = 1 - 2/14.
    model::AdaptedModel<Recipe<PeftKind, tying::Tiling, Fp32, optim::AdamW, Cpu>> a(net, PeftKind{}, tying::Tiling{7});
    auto const cfg = interop::export_peft_adapter(dir, a);
    CHECK(cfg.weight_tying == doctest::Approx(1.0 - 2.0 / 14.0));
  }
  {
    adapters::TinyLora<adapters::Reference> kind;  // scale alpha / u = 1/2
    kind.u = 2;
    model::AdaptedModel<Recipe<adapters::TinyLora<adapters::Reference>, tying::All, Fp32, optim::AdamW, Cpu>> a(net, kind, tying::All{});
    CHECK_THROWS_WITH_AS(interop::export_peft_adapter(dir, a), doctest::Contains("the adapter's scale is 0.5 (expected 1"), Error);
  }
}

TEST_CASE("PEFT loads tinylora's exported adapter and reproduces tinylora's logits") {
  auto net = Model::load_hf(fixtures() / "tiny_llama");
  auto const adapted = export_recipe(net);
  auto const committed = fixtures() / "exported_peft_adapter";
  interop::PeftExportInfo const info{.base_model_name_or_path = "tests/reference/fixtures/tiny_llama"};
  if (char const* env = std::getenv("TINYLORA_WRITE_EXPORT_FIXTURE"); env != nullptr && std::string(env) == "1") {
    interop::export_peft_adapter(committed, *adapted, info);
    MESSAGE("wrote " << committed.string() << "; now run: python3 tests/reference/make_fixtures.py --only export");
    return;
  }
  // The committed folder is what this recipe exports today (up to SVD rounding).
  auto const fresh = test::scratch_dir("peft_export_fresh");
  auto const cfg = interop::export_peft_adapter(fresh, *adapted, info);
  CHECK(cfg.weight_tying == doctest::Approx(0.8));
  {
    INFO("if this fails, the recipe or export_peft_adapter's config changed: regenerate the fixture (top of this file)");
    CHECK(read_json(fresh / "adapter_config.json") == read_json(committed / "adapter_config.json"));
  }
  {
    auto const a = io::SafetensorsFile::open(fresh / "adapter_model.safetensors");
    auto const b = io::SafetensorsFile::open(committed / "adapter_model.safetensors");
    REQUIRE(a.tensors().size() == b.tensors().size());
    for (auto const& t : a.tensors()) {
      INFO("tensor " << t.name << " (if this fails, the recipe or the SVD changed: regenerate the fixture, see the top of this file)");
      auto const x = a.read<float>(t.name);
      auto const y = b.read<float>(t.name, t.shape);
      double scale = 0;
      for (float v : y) scale = std::max(scale, double(std::abs(v)));
      TINYLORA_CHECK_CLOSE(x, y, 0.0, 1e-5 * scale);
    }
  }
  auto const f = io::SafetensorsFile::open(fixtures() / "model_tiny_llama_exported_peft.safetensors");
  auto const [batch, supervised, where] = test::pack_fixture_batch(f);
  auto const want = f.read<float>("logits");  // (n_batch, n_seq, V): PEFT with the committed adapter
  double const worst = test::worst_relative_logit_difference(net.logits(batch), want, where);
  MESSAGE("tinylora (this recipe) vs PEFT (loading its export): worst logit difference " << worst);
  CHECK(worst <= 1e-4);
  CHECK(net.loss(batch, supervised).mean() == doctest::Approx(f.read<float>("loss")[0]).epsilon(1e-4));
  // And the committed folder imported back into tinylora.
  Model net2 = Model::load_hf(fixtures() / "tiny_llama");
  auto const imported = interop::import_peft_adapter(committed, net2);
  CHECK(imported->adapter_set().n_groups() == 2);
  double const worst_imported = test::worst_relative_logit_difference(net2.logits(batch), want, where);
  MESSAGE("tinylora (imported export) vs PEFT: worst logit difference " << worst_imported);
  CHECK(worst_imported <= 1e-4);
  // The adapter matters: without it the logits are far from PEFT's.
  imported->set_enabled(false);
  CHECK(test::worst_relative_logit_difference(net2.logits(batch), want, where) > 1e-2);
}

TEST_CASE("malformed adapter folders fail with clear messages") {
  auto const source = fixtures() / "tiny_llama/peft_tinylora_u2_wt1p0";  // u = 2, one group
  auto const dir = test::scratch_dir("peft_import_bad");
  auto net = Model::load_hf(fixtures() / "tiny_llama");
  auto const import = [&] { return interop::import_peft_adapter(dir, net); };
  auto const config = read_json(source / "adapter_config.json");
  auto const with_config = [&](auto change) {
    copy_folder(source, dir);
    auto j = config;
    change(j);
    write_text(dir / "adapter_config.json", j.dump(2));
  };

  SUBCASE("no adapter_config.json") {
    copy_folder(source, dir);
    std::filesystem::remove(dir / "adapter_config.json");
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("read_peft_adapter_config(): cannot open"), Error);
  }
  SUBCASE("not JSON") {
    copy_folder(source, dir);
    write_text(dir / "adapter_config.json", "{\"r\": 2,");
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("is not valid JSON"), Error);
  }
  SUBCASE("another PEFT method") {
    with_config([](auto& j) { j["peft_type"] = "LORA"; });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("peft_type is 'LORA' (expected 'TINYLORA')"), Error);
  }
  SUBCASE("r is not a positive integer") {
    with_config([](auto& j) { j["r"] = 0; });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("\"r\" must be a positive integer (got 0)"), Error);
  }
  SUBCASE("u is missing") {
    with_config([](auto& j) { j.erase("u"); });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("\"u\" is missing"), Error);
  }
  SUBCASE("weight_tying out of range") {
    with_config([](auto& j) { j["weight_tying"] = 1.5; });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("\"weight_tying\" must be a number in [0, 1] (got 1.5)"), Error);
  }
  SUBCASE("targets that match no projection") {
    with_config([](auto& j) { j["target_modules"] = {"lm_head"}; });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("target_modules [lm_head] selects no module"), Error);
  }
  SUBCASE("fan_in_fan_out") {
    with_config([](auto& j) { j["fan_in_fan_out"] = true; });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("fan_in_fan_out is true (expected false"), Error);
  }
  SUBCASE("u disagrees with the tensors") {
    with_config([](auto& j) { j["u"] = 3; });
    CHECK_THROWS_WITH_AS(import(),
                         doctest::Contains("tensor 'base_model.model.model.layers.0.self_attn.q_proj.tinylora_P' in"), Error);
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("has shape (2, 2, 2) (expected (3, 2, 2)"), Error);
  }
  SUBCASE("weight_tying disagrees with the tensors: a missing group") {
    with_config([](auto& j) { j["weight_tying"] = 0.5; });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("has no tensor 'base_model.tinylora_v.1'"), Error);
  }
  SUBCASE("a missing factor") {
    copy_folder(source, dir);
    rewrite_tensors(dir, [](std::string const& name, auto&, auto&) { return !name.ends_with("layers.1.mlp.up_proj.tinylora_B"); });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("has no tensor 'base_model.model.model.layers.1.mlp.up_proj.tinylora_B' "
                                                     "(expected B = U sqrt(S), (d_out, r) of module"),
                         Error);
  }
  SUBCASE("projections not saved (save_projection=False)") {
    with_config([](auto& j) { j["save_projection"] = false; });
    rewrite_tensors(dir, [](std::string const& name, auto&, auto&) { return !name.ends_with(".tinylora_P"); });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("TinyLoraConfig(save_projection=True)"), Error);
  }
  SUBCASE("a transposed factor") {
    copy_folder(source, dir);
    rewrite_tensors(dir, [](std::string const& name, auto& shape, auto&) {
      if (name.ends_with("layers.0.self_attn.k_proj.tinylora_A")) std::swap(shape[0], shape[1]);
      return true;
    });
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("k_proj.tinylora_A' in"), Error);
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("has shape (64, 2) (expected (2, 64): A = sqrt(S) V^T"), Error);
  }
  SUBCASE("a tensor nothing uses") {
    copy_folder(source, dir);
    io::SafetensorsWriter w;
    {
      auto const f = io::SafetensorsFile::open(source / "adapter_model.safetensors");
      for (auto const& t : f.tensors()) w.add(t.name, t.shape, f.read<float>(t.name));
    }
    w.add("base_model.model.lm_head.tinylora_A", {2, 64}, std::vector<float>(128, 0.0f));
    w.write(dir / "adapter_model.safetensors");
    CHECK_THROWS_WITH_AS(import(), doctest::Contains("holds tensor 'base_model.model.lm_head.tinylora_A', which no module or "
                                                     "group of this adapter uses"),
                         Error);
  }
}
