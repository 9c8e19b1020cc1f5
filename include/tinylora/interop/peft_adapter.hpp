// tinylora/interop/peft_adapter.hpp: TinyLoRA adapters in Hugging Face PEFT's folder format (TinyLoraConfig,
// save_projection=True): export an AdaptedModel so that PEFT reproduces it exactly, and import a PEFT
// adapter into an AdaptedModel with PEFT's own factors, projections, tie groups and v.
//
// Folder layout (what PEFT's save_pretrained writes for TinyLoRA, peft 0.21):
//   adapter_config.json        {"peft_type": "TINYLORA", "r": 2, "u": 1, "weight_tying": 0.0,
//                               "target_modules": ["q_proj", ...] or one full-match regex string,
//                               "layers_to_transform": null | [layer, ...], "save_projection": true,
//                               "projection_seed": 42, "task_type": "CAUSAL_LM", ...}
//   adapter_model.safetensors  for every adapted module m (its model name, "model.layers.0.self_attn.q_proj"):
//     base_model.model.<m>.tinylora_A   (r, d_in)   A = sqrt(S) V^T   (our R factor)
//     base_model.model.<m>.tinylora_B   (d_out, r)  B = U sqrt(S)     (our L factor)
//     base_model.model.<m>.tinylora_P   (u, r, r)   the fixed projections
//   and for every tie group g = 0 .. G-1:
//     base_model.tinylora_v.<g>         (u)         the trainable vector
// PEFT computes y = W x + B (sum_k v_k P_k) A x (no scale). Modules are indexed in model order among
// the targets (N of them); G = max(1, round(N (1 - weight_tying))), module i drives group
// min(i // max(1, N // G), G - 1): tying::PeftRatio. P cannot be regenerated outside PyTorch (PEFT
// draws it from torch.Generator(projection_seed + i)), so only save_projection=True adapters import.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>
#include <xtensor/xtensor.hpp>

#include "tinylora/adapters/tiny_lora.hpp"
#include "tinylora/config.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/io/durable_file.hpp"
#include "tinylora/io/safetensors.hpp"
#include "tinylora/io/safetensors_writer.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/model/shapes.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/precision/types.hpp"
#include "tinylora/tying/strategies.hpp"

namespace tinylora::interop {

using io::SafetensorsDtype;
using io::SafetensorsFile;
using io::SafetensorsWriter;
using io::safetensors_shape_string;

// ---- adapter_config.json -------------------------------------------------------------------

/// The part of PEFT's TinyLoraConfig that decides which modules are adapted and how they are tied.
struct PeftAdapterConfig {
  Index r = 2;
  Index u = 1;
  double weight_tying = 0.0;
  /// PEFT's list form: a module is a target when its name equals an entry or ends with "." + entry
  /// ("all-linear" = every projection). Ignored when target_regex is set.
  std::vector<std::string> target_modules{"q_proj", "v_proj"};  // PEFT's default for llama/qwen2/mistral
  std::optional<std::string> target_regex;  // PEFT's string form: full match over module names
  std::vector<int> layers_to_transform;     // empty: every layer (applies to the list form only, as in PEFT)
  std::int64_t projection_seed = 42;        // recorded; P itself is always read from the file
  bool save_projection = true;
  double tinylora_dropout = 0.0;            // recorded; dropout only acts in PEFT's training mode
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";      // empty: null (a plain PeftModel)

  /// PEFT's check_target_module_exists for one of our modules.
  bool selects(ModuleInfo const& m) const {
    if (target_regex) return std::regex_match(m.name, std::regex(*target_regex));
    bool found = false;
    for (auto const& t : target_modules) {
      if (t == m.name) return true;  // an exact name skips the layer filter, as in PEFT
      if (t == "all-linear" || (m.name.size() > t.size() && m.name.ends_with("." + t))) found = true;
    }
    if (found && !layers_to_transform.empty())
      found = std::find(layers_to_transform.begin(), layers_to_transform.end(), m.layer) != layers_to_transform.end();
    return found;
  }

  /// The modules PEFT adapts in a model of this shape, in model order (PEFT's module index order).
  ModuleList select_modules(model::ModelConfig const& c) const {
    ModuleList out;
    for (auto const& m : decoder_modules(c.shape()))
      if (selects(m)) out.push_back(m);
    TINYLORA_CHECK(!out.empty(), "PeftAdapterConfig::select_modules(): target_modules ", describe_targets(),
                   " selects no module of this ", c.architecture, " model (", c.n_layers,
                   " layers). Hint: use projection names like q_proj, v_proj, down_proj or all-linear.");
    return out;
  }

  /// model::Targets that pick exactly select_modules(c): by types and layers when that is exact,
  /// else by a regex listing the module names.
  model::Targets targets_for(model::ModelConfig const& c) const { return targets_of(c, select_modules(c)); }

  /// model::Targets that pick exactly `chosen` (a model-order subset of the model's modules).
  static model::Targets targets_of(model::ModelConfig const& c, ModuleList const& chosen) {
    model::Targets t;
    t.types.clear();
    std::set<int> layers;
    for (auto const& type : default_target_types())
      for (auto const& m : chosen)
        if (m.type == type) {
          t.types.push_back(type);
          break;
        }
    for (auto const& m : chosen) layers.insert(m.layer);
    if (static_cast<int>(layers.size()) != c.n_layers) t.layers.assign(layers.begin(), layers.end());
    if (same_names(model::target_modules(c, t), chosen)) return t;
    return model::Targets{{}, names_regex(chosen), {}};
  }

  nlohmann::json to_json() const {
    nlohmann::json j;
    j["base_model_name_or_path"] = base_model_name_or_path;
    j["bias"] = "none";
    j["fan_in_fan_out"] = false;
    j["inference_mode"] = true;
    j["init_v_bound"] = 0.02;
    j["init_weights"] = true;
    j["layers_pattern"] = nullptr;
    j["layers_to_transform"] = layers_to_transform.empty() ? nlohmann::json(nullptr) : nlohmann::json(layers_to_transform);
    j["modules_to_save"] = nullptr;
    j["peft_type"] = "TINYLORA";
    j["projection_seed"] = projection_seed;
    j["r"] = r;
    j["revision"] = nullptr;
    j["save_projection"] = save_projection;
    j["target_modules"] = target_regex ? nlohmann::json(*target_regex) : nlohmann::json(target_modules);
    j["task_type"] = task_type.empty() ? nlohmann::json(nullptr) : nlohmann::json(task_type);
    j["tinylora_dropout"] = tinylora_dropout;
    j["u"] = u;
    j["weight_tying"] = weight_tying;
    return j;
  }

  /// Parses and checks PEFT's adapter_config.json; `source` names the file in messages.
  static PeftAdapterConfig from_json(nlohmann::json const& j, std::string const& source) {
    auto bad = [&](auto const&... what) {
      fail("PeftAdapterConfig::from_json(): '", source, "': ", what...,
           ". Hint: adapter_config.json must be a TinyLoraConfig written by PEFT's save_pretrained "
           "(or export_peft_adapter).");
    };
    if (!j.is_object()) bad("the file is not a JSON object (got ", j.type_name(), ")");
    auto const has = [&](char const* key) { return j.contains(key) && !j.at(key).is_null(); };
    if (!has("peft_type") || !j.at("peft_type").is_string())
      bad("\"peft_type\" is missing or not a string (expected \"TINYLORA\")");
    if (j.at("peft_type") != "TINYLORA")
      bad("peft_type is '", j.at("peft_type").get<std::string>(), "' (expected 'TINYLORA'): only TinyLoRA adapters import");
    PeftAdapterConfig c;
    auto positive = [&](char const* key) -> Index {
      if (!has(key)) bad("\"", key, "\" is missing (expected a positive integer)");
      auto const& v = j.at(key);
      if (!v.is_number_integer() || v.get<std::int64_t>() <= 0) bad("\"", key, "\" must be a positive integer (got ", v.dump(), ")");
      return static_cast<Index>(v.get<std::int64_t>());
    };
    c.r = positive("r");
    c.u = positive("u");
    if (has("weight_tying")) {
      auto const& v = j.at("weight_tying");
      if (!v.is_number() || v.get<double>() < 0.0 || v.get<double>() > 1.0)
        bad("\"weight_tying\" must be a number in [0, 1] (got ", v.dump(), ")");
      c.weight_tying = v.get<double>();
    }
    if (has("target_modules")) {
      auto const& v = j.at("target_modules");
      if (v.is_string()) {
        if (v.get<std::string>() == "all-linear") c.target_modules = {"all-linear"};
        else c.target_regex = v.get<std::string>();
      } else if (v.is_array() && !v.empty() && std::all_of(v.begin(), v.end(), [](auto const& e) { return e.is_string(); })) {
        c.target_modules = v.get<std::vector<std::string>>();
      } else {
        bad("\"target_modules\" must be a non-empty list of module names or one regex string (got ", v.dump(), ")");
      }
    }
    if (c.target_regex) {
      try {
        std::regex const check(*c.target_regex);
      } catch (std::regex_error const& e) {
        bad("target_modules regex '", *c.target_regex, "' does not compile (", e.what(), ")");
      }
    }
    if (has("layers_to_transform")) {
      auto const& v = j.at("layers_to_transform");
      if (v.is_number_integer()) c.layers_to_transform = {v.get<int>()};
      else if (v.is_array() && std::all_of(v.begin(), v.end(), [](auto const& e) { return e.is_number_integer(); }))
        c.layers_to_transform = v.get<std::vector<int>>();
      else bad("\"layers_to_transform\" must be an integer or a list of integers (got ", v.dump(), ")");
    }
    if (has("layers_pattern")) {
      auto const& v = j.at("layers_pattern");
      bool const ok = (v.is_string() && (v == "layers" || v == "")) ||
                      (v.is_array() && (v.empty() || (v.size() == 1 && v[0] == "layers")));
      if (!ok) bad("layers_pattern ", v.dump(), " is not supported (expected null or \"layers\", the decoder's block list)");
    }
    if (has("fan_in_fan_out") && (!j.at("fan_in_fan_out").is_boolean() || j.at("fan_in_fan_out").get<bool>()))
      bad("fan_in_fan_out is ", j.at("fan_in_fan_out").dump(), " (expected false: Llama-family weights are (d_out, d_in))");
    if (has("bias") && j.at("bias") != "none")
      bad("bias is ", j.at("bias").dump(), " (expected \"none\": tinylora adapts no biases)");
    if (has("modules_to_save") && !(j.at("modules_to_save").is_array() && j.at("modules_to_save").empty()))
      bad("modules_to_save is ", j.at("modules_to_save").dump(), " (expected null: tinylora trains no whole modules)");
    if (has("save_projection")) {
      if (!j.at("save_projection").is_boolean()) bad("\"save_projection\" must be true or false (got ", j.at("save_projection").dump(), ")");
      c.save_projection = j.at("save_projection").get<bool>();
    }
    if (has("projection_seed")) {
      if (!j.at("projection_seed").is_number_integer()) bad("\"projection_seed\" must be an integer (got ", j.at("projection_seed").dump(), ")");
      c.projection_seed = j.at("projection_seed").get<std::int64_t>();
    }
    if (has("tinylora_dropout")) {
      if (!j.at("tinylora_dropout").is_number()) bad("\"tinylora_dropout\" must be a number (got ", j.at("tinylora_dropout").dump(), ")");
      c.tinylora_dropout = j.at("tinylora_dropout").get<double>();
    }
    if (has("base_model_name_or_path") && j.at("base_model_name_or_path").is_string())
      c.base_model_name_or_path = j.at("base_model_name_or_path").get<std::string>();
    c.task_type = has("task_type") && j.at("task_type").is_string() ? j.at("task_type").get<std::string>() : "";
    return c;
  }

  std::string describe_targets() const {
    if (target_regex) return "'" + *target_regex + "'";
    std::string s = "[";
    for (std::size_t i = 0; i < target_modules.size(); ++i) s += (i ? ", " : "") + target_modules[i];
    return s + "]";
  }

  /// A full-match regex naming exactly these modules (dots escaped), for Python's re and std::regex.
  static std::string names_regex(ModuleList const& modules) {
    std::string s;
    for (auto const& m : modules) {
      if (!s.empty()) s += '|';
      for (char ch : m.name) {
        if (std::strchr(".^$|()[]{}*+?\\", ch) != nullptr) s += '\\';
        s += ch;
      }
    }
    return s;
  }

  static bool same_names(ModuleList const& a, ModuleList const& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                      [](ModuleInfo const& x, ModuleInfo const& y) { return x.name == y.name; });
  }
};

/// Reads `dir`/adapter_config.json.
inline PeftAdapterConfig read_peft_adapter_config(std::filesystem::path const& dir) {
  auto const path = dir / "adapter_config.json";
  std::ifstream in(path, std::ios::binary);
  TINYLORA_CHECK(in.good(), "read_peft_adapter_config(): cannot open '", path.string(),
                 "'. Hint: a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors "
                 "(save_pretrained writes both).");
  std::string const text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json const j = io::detail::parse_json_strict(text, "read_peft_adapter_config()", "'" + path.string() + "'",
                                                     "adapter_config.json must be the JSON PEFT's save_pretrained writes.");
  return PeftAdapterConfig::from_json(j, path.string());
}

// ---- export --------------------------------------------------------------------------------

/// What export_peft_adapter records beyond the adapter itself.
struct PeftExportInfo {
  std::string base_model_name_or_path;  // the base model PEFT's AutoPeftModel would load
  std::string task_type = "CAUSAL_LM";  // PeftModelForCausalLM; empty writes null
  std::int64_t projection_seed = 42;    // recorded only: P is saved (save_projection = true)
};

namespace detail {

/// A host float copy of a backend matrix view of any storage type, through one GEMM with the
/// identity (exact: every product is x * 1 or x * 0). Equivalent to: out(i, j) = float(view(i, j)).
template <class B, class W>
HostMatrix download_matrix(ConstMatrixView<W> view) {
  Index const k = view.cols;
  std::vector<float> eye(static_cast<std::size_t>(k * k), 0.0f);  // (k, k)
  for (Index i = 0; i < k; ++i) eye[static_cast<std::size_t>(i * k + i)] = 1.0f;
  auto I = B::upload(std::span<float const>(eye));  // (k, k)
  auto out = B::template zeros<float>(view.rows * k);  // (rows, k)
  B::gemm(Op::N, Op::N, 1.0f, view, ConstMatrixView<float>{B::data(I), k, k}, 0.0f,
          MatrixView<float>{B::data(out), view.rows, k});
  auto const host = B::download(out);
  return Eigen::Map<HostMatrix const>(host.data(), view.rows, k);
}

/// The weight_tying whose PEFT groups equal `groups` (module -> group) over N modules, if any.
inline std::optional<double> peft_weight_tying_for(std::vector<Index> const& groups, ModuleList const& modules,
                                                   std::optional<double> preferred) {
  auto const matches = [&](double wt) { return tying::PeftRatio{wt}.assign(modules) == groups; };
  if (preferred && matches(*preferred)) return preferred;
  Index const n = static_cast<Index>(modules.size());
  Index const G = groups.empty() ? 0 : *std::max_element(groups.begin(), groups.end()) + 1;
  double const wt = 1.0 - static_cast<double>(G) / static_cast<double>(n);
  if (G >= 1 && matches(wt)) return wt;
  return std::nullopt;
}

}  // namespace detail

/// Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors so that PEFT's
/// PeftModel.from_pretrained(base, dir) computes exactly this adapter: PEFT's A, B are our R, L
/// factors, P our projections, v our theta per group (all F32). Requires scale s = 1 (the Peft and
/// Paper conventions; PEFT has no scale) and tie groups PEFT's weight_tying can express; the
/// targets are written as projection types (+ layers_to_transform) when exact, else as a regex of
/// module names. Returns the config it wrote.
template <class Rc>
  requires adapters::IsTinyLora<typename Rc::adapter>
PeftAdapterConfig export_peft_adapter(std::filesystem::path const& dir, model::AdaptedModel<Rc> const& adapted,
                                      PeftExportInfo const& info = {}) {
  using T = typename Rc::tie;
  using B = typename Rc::backend;
  auto const& set = adapted.adapter_set();
  auto const& kind = set.adapter();
  auto const& c = adapted.model().config();
  TINYLORA_CHECK(kind.scale() == 1.0f, "export_peft_adapter(): the adapter's scale is ", kind.scale(),
                 " (expected 1: PEFT computes B (sum_k v_k P_k) A with no scale). Hint: train with the Peft or "
                 "Paper convention (or Reference with alpha = u).");
  ModuleList const& modules = set.modules();

  // Targets: the types present (and the layers, when not all), else the exact names.
  PeftAdapterConfig cfg;
  cfg.r = kind.r;
  cfg.u = kind.u;
  cfg.projection_seed = info.projection_seed;
  cfg.base_model_name_or_path = info.base_model_name_or_path;
  cfg.task_type = info.task_type;
  model::Targets const t = PeftAdapterConfig::targets_of(c, modules);
  if (t.regex.empty()) {
    cfg.target_modules = t.types;
    std::sort(cfg.target_modules.begin(), cfg.target_modules.end());
    cfg.layers_to_transform = t.layers;
  } else {
    cfg.target_regex = t.regex;
  }
  TINYLORA_CHECK(PeftAdapterConfig::same_names(cfg.select_modules(c), modules),
                 "export_peft_adapter(): internal error: target_modules ", cfg.describe_targets(),
                 " does not select the adapted modules");

  // Tie groups: PEFT's weight_tying formula must reproduce ours exactly.
  std::vector<Index> groups(modules.size());
  for (std::size_t i = 0; i < groups.size(); ++i) groups[i] = set.group_of(static_cast<Index>(i));
  std::optional<double> preferred;
  if constexpr (std::is_same_v<T, tying::PeftRatio>) preferred = set.strategy().weight_tying;
  auto const wt = detail::peft_weight_tying_for(groups, modules, preferred);
  if (!wt) {
    fail("export_peft_adapter(): the tie groups of strategy '", T::name, "' (", set.strategy().describe(), ", ",
         set.n_groups(), " groups over ", modules.size(),
         " modules) cannot be written as PEFT's weight_tying (expected G groups of N // G consecutive modules, "
         "the remainder in the last). Hint: train with tying::PeftRatio, or tile with n_tie dividing N.");
  }
  cfg.weight_tying = *wt;

  SafetensorsWriter w;
  w.add_metadata("format", "pt");
  w.add_metadata("generator", std::string("tinylora ") + kVersion);
  for (Index i = 0; i < set.n_modules(); ++i) {
    auto const& m = modules[static_cast<std::size_t>(i)];
    auto const& module = set.module(i);
    std::string const key = "base_model.model." + m.name + ".tinylora_";
    HostMatrix const L = detail::download_matrix<B>(module.core().L());  // (d_out, r)
    HostMatrix const R = detail::download_matrix<B>(module.core().R());  // (r, d_in)
    auto const& proj = module.projection();                             // (u, r, r)
    w.add(key + "A", {R.rows(), R.cols()}, std::span<float const>(R.data(), static_cast<std::size_t>(R.size())));
    w.add(key + "B", {L.rows(), L.cols()}, std::span<float const>(L.data(), static_cast<std::size_t>(L.size())));
    w.add(key + "P", {kind.u, kind.r, kind.r}, std::span<float const>(proj.data(), proj.size()));
  }
  auto const& theta = adapted.theta();
  for (Index g = 0; g < set.n_groups(); ++g) {
    auto const [lo, hi] = set.slots(g);
    w.add("base_model.tinylora_v." + std::to_string(g), {hi - lo},
          std::span<float const>(theta).subspan(static_cast<std::size_t>(lo), static_cast<std::size_t>(hi - lo)));
  }
  std::filesystem::create_directories(dir);
  w.write(dir / "adapter_model.safetensors");
  io::write_atomically(dir / "adapter_config.json", cfg.to_json().dump(2) + "\n", "export_peft_adapter()");
  return cfg;
}

// ---- import --------------------------------------------------------------------------------

/// The AdaptedModel a PEFT TinyLoRA adapter imports into.
template <class P, class B>
using PeftAdaptedModel = model::AdaptedModel<Recipe<adapters::TinyLora<adapters::Peft>, tying::PeftRatio, P, optim::AdamW, B>>;

struct PeftImportOptions {
  /// The SVD the AdaptedModel computes at construction; its factors are then replaced by the
  /// adapter's, so the cheapest method is the default.
  linalg::SvdMethod svd = linalg::SvdMethod::Randomized;
};

/// Loads `dir`/adapter_model.safetensors into an AdaptedModel built for `cfg` (same modules, r, u
/// and tie groups): every module's factors (L = B, R = A) and projections P, and theta from the
/// groups' v. Every expected tensor must be present with its exact shape, and no other may be.
template <class Rc>
  requires adapters::IsTinyLora<typename Rc::adapter>
void load_peft_adapter_weights(std::filesystem::path const& dir, PeftAdapterConfig const& cfg, model::AdaptedModel<Rc>& adapted) {
  auto& set = adapted.adapter_set();
  auto const& kind = set.adapter();
  ModuleList const& modules = set.modules();
  auto const& c = adapted.model().config();
  TINYLORA_CHECK(kind.r == cfg.r && kind.u == cfg.u && kind.scale() == 1.0f, "load_peft_adapter_weights(): the adapter "
                 "has r = ", kind.r, ", u = ", kind.u, ", scale ", kind.scale(), " (expected r = ", cfg.r, ", u = ", cfg.u,
                 " and scale 1 from adapter_config.json). Hint: build it with import_peft_adapter().");
  TINYLORA_CHECK(PeftAdapterConfig::same_names(cfg.select_modules(c), modules), "load_peft_adapter_weights(): the "
                 "AdaptedModel adapts ", modules.size(), " modules, not the ", cfg.select_modules(c).size(),
                 " that target_modules ", cfg.describe_targets(), " selects. Hint: build it with import_peft_adapter().");
  auto const peft_groups = tying::PeftRatio{cfg.weight_tying}.assign(modules);
  for (Index i = 0; i < set.n_modules(); ++i)
    TINYLORA_CHECK(set.group_of(i) == peft_groups[static_cast<std::size_t>(i)], "load_peft_adapter_weights(): module '",
                   modules[static_cast<std::size_t>(i)].name, "' is in group ", set.group_of(i), " (expected ",
                   peft_groups[static_cast<std::size_t>(i)], " from weight_tying = ", cfg.weight_tying,
                   "). Hint: use tying::PeftRatio{weight_tying}.");

  auto const path = dir / "adapter_model.safetensors";
  TINYLORA_CHECK(std::filesystem::exists(path), "load_peft_adapter_weights(): '", path.string(),
                 "' does not exist. Hint: a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors.");
  auto const f = SafetensorsFile::open(path);
  std::set<std::string> expected;
  auto const read = [&](std::string const& key, std::vector<std::int64_t> const& shape, std::string const& what) {
    expected.insert(key);
    if (!f.has(key)) {
      if (key.ends_with(".tinylora_P")) {
        fail("load_peft_adapter_weights(): '", path.string(), "' has no tensor '", key, "' (expected the projections P (u, r, r) "
             "of every module; adapter_config.json has save_projection = ", cfg.save_projection ? "true" : "false",
             "). Hint: PEFT draws P from torch.Generator(projection_seed + module index), which tinylora cannot "
             "reproduce: save the adapter with TinyLoraConfig(save_projection=True).");
      }
      fail("load_peft_adapter_weights(): '", path.string(), "' has no tensor '", key, "' (expected ", what,
           "; the file has ", f.tensors().size(), " tensors). Hint: the adapter was saved for another base model "
           "(its config names '", cfg.base_model_name_or_path, "') or the file is incomplete.");
    }
    auto const& t = f.tensor(key);
    if (t.shape != shape) {
      fail("load_peft_adapter_weights(): tensor '", key, "' in '", path.string(), "' has shape ",
           safetensors_shape_string(t.shape), " (expected ", safetensors_shape_string(shape), ": ", what,
           "). Hint: the adapter belongs to another base model (its config names '", cfg.base_model_name_or_path,
           "'), or adapter_config.json's r and u disagree with the tensors.");
    }
    return f.read<float>(key);
  };

  Index const r = cfg.r, u = cfg.u;
  for (Index i = 0; i < set.n_modules(); ++i) {
    auto const& m = modules[static_cast<std::size_t>(i)];
    std::string const key = "base_model.model." + m.name + ".tinylora_";
    auto const A = read(key + "A", {r, m.d_in}, "A = sqrt(S) V^T, (r, d_in) of module '" + m.name + "'");
    auto const Bf = read(key + "B", {m.d_out, r}, "B = U sqrt(S), (d_out, r) of module '" + m.name + "'");
    auto const Pv = read(key + "P", {u, r, r}, "P, (u, r, r) of module '" + m.name + "'");
    set.module(i).set_factors(Eigen::Map<HostMatrix const>(Bf.data(), m.d_out, r),
                              Eigen::Map<HostMatrix const>(A.data(), r, m.d_in));
    xt::xtensor<float, 3> proj({static_cast<std::size_t>(u), static_cast<std::size_t>(r), static_cast<std::size_t>(r)});
    std::copy(Pv.begin(), Pv.end(), proj.begin());
    set.module(i).set_projection(proj);
  }
  std::vector<float> theta;
  for (Index g = 0; g < set.n_groups(); ++g) {
    auto const v = read("base_model.tinylora_v." + std::to_string(g), {u}, "v of tie group " + std::to_string(g) + " of " +
                        std::to_string(set.n_groups()) + ", (u)");
    theta.insert(theta.end(), v.begin(), v.end());
  }
  for (auto const& t : f.tensors()) {
    if (expected.count(t.name) == 0) {
      fail("load_peft_adapter_weights(): '", path.string(), "' holds tensor '", t.name, "', which no module or group of "
           "this adapter uses (expected ", expected.size(), " tensors: A, B, P for the ", modules.size(),
           " modules target_modules ", cfg.describe_targets(), " selects and v for ", set.n_groups(),
           " groups). Hint: the adapter adapts modules tinylora does not (lm_head, embeddings), has more tie groups "
           "than weight_tying = ", cfg.weight_tying, " gives, or was saved for another base model.");
    }
  }
  adapted.set_theta(theta);
}

/// Imports the PEFT TinyLoRA adapter in `dir` onto `model`: reads adapter_config.json (r, u,
/// target_modules, layers_to_transform, weight_tying), builds the AdaptedModel with the Peft
/// convention and PEFT's tie groups (tying::PeftRatio), and loads A, B, P and v. The model must
/// outlive the result.
template <class B, class P>
std::unique_ptr<PeftAdaptedModel<P, B>> import_peft_adapter(std::filesystem::path const& dir, model::Decoder<B, P>& model,
                                                           PeftImportOptions const& options = {}) {
  PeftAdapterConfig const cfg = read_peft_adapter_config(dir);
  adapters::TinyLora<adapters::Peft> kind;
  kind.r = cfg.r;
  kind.u = cfg.u;
  kind.svd = options.svd;
  auto adapted = std::make_unique<PeftAdaptedModel<P, B>>(model, kind, tying::PeftRatio{cfg.weight_tying},
                                                          cfg.targets_for(model.config()));
  load_peft_adapter_weights(dir, cfg, *adapted);
  return adapted;
}

}  // namespace tinylora::interop
