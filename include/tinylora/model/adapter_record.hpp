// tinylora/model/adapter_record.hpp: what a result file records of the adapter a run trained, so
// that another program rebuilds exactly that adapter (05_evaluate --run) and refuses a mismatch.
// Group "/adapter" holds the recipe, the AdapterSpec it was planned from (every AdapterOptions field,
// the budget, the targets), the plan it gave (the kind's and tie's settings, the group count and
// trainable count), the module list and each module's tie group, and the model's content hash.
// Rebuilding re-runs the planner on the recorded spec and checks every recorded value against the
// new adapter, so a different planner, model or module order is an error, not another adapter.
//
// | name                                  | kind            | meaning                                              |
// |---------------------------------------|-----------------|------------------------------------------------------|
// | attr recipe / recipe_adapter          | string          | Recipe::describe() / describe_adapter()              |
// | attr kind / kind_setting              | string          | A::name / plan.kind.describe() ("r=2 u=1 ...")       |
// | attr tie / tie_setting                | string          | T::name / plan.tie.describe() ("n_tie=17")           |
// | attr n_groups, count, budget          | int64           | tie groups, trainable scalars b, the budget asked for|
// | attr r, u_choices                     | int64, int64[]  | AdapterOptions::r (0: kind default), u_choices       |
// | attr alpha                            | string          | exact float, or "default"                            |
// | attr seed                             | string          | decimal uint64                                       |
// | attr svd                              | string          | exact, randomized, krylov or automatic               |
// | attr target_types, target_regex       | string          | Targets (types comma-joined)                         |
// | attr target_layers                    | int64[]         | Targets::layers (empty: all)                         |
// | attr model_sha256                     | string          | the model's content hash (cli::model_fingerprint)    |
// | dataset modules                       | string (N)      | adapted module names, model order                    |
// | dataset group_of                      | int64 (N)       | tie group of each module                             |
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tinylora/core/error.hpp"
#include "tinylora/core/format.hpp"
#include "tinylora/io/hdf5.hpp"
#include "tinylora/model/adapted.hpp"

namespace tinylora::model {

/// An adapter as a result file recorded it.
struct AdapterRecord {
  std::string recipe, recipe_adapter, kind_setting, tie_setting, model_sha256;
  AdapterSpec spec;
  Index n_groups = 0, count = 0;
  std::vector<std::string> modules;  // (N)
  std::vector<std::int64_t> group_of;  // (N)
};

namespace detail {
inline std::string join(std::vector<std::string> const& parts) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? "," : "") + parts[i];
  return out;
}
inline std::vector<std::string> split_commas(std::string const& s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  std::size_t start = 0;
  for (std::size_t k = s.find(','); k != std::string::npos; k = s.find(',', start)) {
    out.push_back(s.substr(start, k - start));
    start = k + 1;
  }
  out.push_back(s.substr(start));
  return out;
}
}  // namespace detail

/// The record of `adapted` (built from `spec`, on a model whose content hash is model_sha256).
template <IsRecipe R>
AdapterRecord adapter_record(AdaptedModel<R> const& adapted, std::string const& model_sha256) {
  AdapterRecord rec;
  auto const& plan = adapted.plan();
  rec.recipe = R::describe();
  rec.recipe_adapter = R::describe_adapter();
  rec.kind_setting = plan.kind.describe();
  rec.tie_setting = plan.tie.describe();
  rec.model_sha256 = model_sha256;
  rec.spec = adapted.spec();
  rec.n_groups = plan.n_groups;
  rec.count = plan.count;
  for (auto const& m : adapted.adapter_set().modules()) rec.modules.push_back(m.name);
  rec.group_of.assign(plan.group_of.begin(), plan.group_of.end());
  return rec;
}

inline void write_adapter_record(io::ResultFile& file, AdapterRecord const& rec, std::string const& group = "adapter") {
  file.create_group(group);
  auto const& o = rec.spec.options;
  file.set_attr(group, "recipe", rec.recipe);
  file.set_attr(group, "recipe_adapter", rec.recipe_adapter);
  file.set_attr(group, "kind", rec.recipe_adapter.substr(0, rec.recipe_adapter.find('/')));
  file.set_attr(group, "kind_setting", rec.kind_setting);
  file.set_attr(group, "tie_setting", rec.tie_setting);
  file.set_attr(group, "n_groups", static_cast<std::int64_t>(rec.n_groups));
  file.set_attr(group, "count", static_cast<std::int64_t>(rec.count));
  file.set_attr(group, "budget", static_cast<std::int64_t>(rec.spec.budget));
  file.set_attr(group, "r", static_cast<std::int64_t>(o.r));
  file.set_attr(group, "u_choices", std::vector<std::int64_t>(o.u_choices.begin(), o.u_choices.end()));
  file.set_attr(group, "alpha", o.has_alpha() ? exact(o.alpha) : std::string("default"));
  file.set_attr(group, "seed", std::to_string(o.seed));
  file.set_attr(group, "svd", adapters::svd_method_name(o.svd));
  file.set_attr(group, "target_types", detail::join(rec.spec.targets.types));
  file.set_attr(group, "target_regex", rec.spec.targets.regex);
  file.set_attr(group, "target_layers", std::vector<std::int64_t>(rec.spec.targets.layers.begin(), rec.spec.targets.layers.end()));
  file.set_attr(group, "model_sha256", rec.model_sha256);
  file.write_strings(group + "/modules", rec.modules);
  file.write(group + "/group_of", rec.group_of);
}

inline bool has_adapter_record(io::ResultFile const& file, std::string const& group = "adapter") {
  return file.has_attr(group, "recipe");
}

inline AdapterRecord read_adapter_record(io::ResultFile const& file, std::string const& group = "adapter") {
  TINYLORA_CHECK(has_adapter_record(file, group), "read_adapter_record(): '", file.path().string(), "' has no '", group,
                 "' record of the adapter. Hint: it was written by a build older than this one, or by an experiment that trains nothing.");
  AdapterRecord rec;
  rec.recipe = file.get_attr<std::string>(group, "recipe");
  rec.recipe_adapter = file.get_attr<std::string>(group, "recipe_adapter");
  rec.kind_setting = file.get_attr<std::string>(group, "kind_setting");
  rec.tie_setting = file.get_attr<std::string>(group, "tie_setting");
  rec.n_groups = file.get_attr<std::int64_t>(group, "n_groups");
  rec.count = file.get_attr<std::int64_t>(group, "count");
  rec.model_sha256 = file.get_attr<std::string>(group, "model_sha256");
  auto& o = rec.spec.options;
  rec.spec.budget = file.get_attr<std::int64_t>(group, "budget");
  o.r = file.get_attr<std::int64_t>(group, "r");
  auto const u = file.get_attr<std::vector<std::int64_t>>(group, "u_choices");
  o.u_choices.assign(u.begin(), u.end());
  std::string const alpha = file.get_attr<std::string>(group, "alpha");
  if (alpha != "default") o.alpha = std::stof(alpha);
  o.seed = std::stoull(file.get_attr<std::string>(group, "seed"));
  o.svd = adapters::svd_method_from_name(file.get_attr<std::string>(group, "svd"));
  rec.spec.targets.types = detail::split_commas(file.get_attr<std::string>(group, "target_types"));
  rec.spec.targets.regex = file.get_attr<std::string>(group, "target_regex");
  auto const layers = file.get_attr<std::vector<std::int64_t>>(group, "target_layers");
  for (auto l : layers) rec.spec.targets.layers.push_back(static_cast<int>(l));
  rec.modules = file.read_strings(group + "/modules");
  rec.group_of = file.read_vector<std::int64_t>(group + "/group_of");
  return rec;
}

/// Throws, naming the first difference, unless `rebuilt` is the adapter `recorded` describes.
inline void check_same_adapter(AdapterRecord const& recorded, AdapterRecord const& rebuilt, std::string const& where) {
  auto const differ = [&](char const* what, auto const& a, auto const& b) {
    fail(where, ": the rebuilt adapter's ", what, " is '", b, "' but the run recorded '", a,
         "'. Hint: evaluate with the model and the build the run was trained with.");
  };
  if (recorded.model_sha256 != rebuilt.model_sha256) {
    fail(where, ": the model's content hash is ", rebuilt.model_sha256, " but the run was trained on a model with hash ",
         recorded.model_sha256, ". Hint: pass the --model the run was trained with.");
  }
  if (recorded.recipe_adapter != rebuilt.recipe_adapter) differ("recipe", recorded.recipe_adapter, rebuilt.recipe_adapter);
  if (recorded.kind_setting != rebuilt.kind_setting) differ("kind setting", recorded.kind_setting, rebuilt.kind_setting);
  if (recorded.tie_setting != rebuilt.tie_setting) differ("tie setting", recorded.tie_setting, rebuilt.tie_setting);
  if (recorded.count != rebuilt.count) differ("trainable count", recorded.count, rebuilt.count);
  if (recorded.n_groups != rebuilt.n_groups) differ("group count", recorded.n_groups, rebuilt.n_groups);
  if (recorded.modules != rebuilt.modules) differ("module list", detail::join(recorded.modules), detail::join(rebuilt.modules));
  if (recorded.group_of != rebuilt.group_of) differ("tie assignment", "(recorded)", "(another)");
}

/// Writes the record on a fresh run; on a resumed one, checks that this run builds the same adapter.
template <IsRecipe R>
void record_or_check_adapter(io::ResultFile& file, AdaptedModel<R> const& adapted, std::string const& model_sha256) {
  AdapterRecord const rec = adapter_record(adapted, model_sha256);
  if (has_adapter_record(file)) check_same_adapter(read_adapter_record(file), rec, "record_or_check_adapter()");
  else write_adapter_record(file, rec);
}

}  // namespace tinylora::model
