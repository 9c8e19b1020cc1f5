// tinylora/model/adapted.hpp: a loaded decoder with an adapter injected at its target modules:
// the recipe's AdapterSet over the model's real module order (so tie groups follow depth), theta as
// one flat vector, and a switch back to the base model. PEFT-style target selection: module types
// ("q_proj", ...), "all-linear", or a regex over module names, optionally restricted to some layers.
#pragma once

#include <algorithm>
#include <array>
#include <optional>
#include <regex>
#include <string>
#include <type_traits>
#include <vector>

#include "tinylora/adapters/adapter_set.hpp"
#include "tinylora/adapters/plan.hpp"
#include "tinylora/model/decoder.hpp"
#include "tinylora/model/shapes.hpp"
#include "tinylora/recipe.hpp"

namespace tinylora::model {

/// Which linears to adapt (PEFT's target_modules / layers_to_transform).
struct Targets {
  std::vector<std::string> types = default_target_types();  // or {"all-linear"}
  std::string regex;                                         // if non-empty, full-match over module names instead
  std::vector<int> layers;                                   // empty: every layer

  bool selects(ModuleInfo const& m) const {
    if (!layers.empty() && std::find(layers.begin(), layers.end(), m.layer) == layers.end()) return false;
    if (!regex.empty()) return std::regex_match(m.name, std::regex(regex));
    for (auto const& t : types)
      if (t == "all-linear" || t == m.type) return true;
    return false;
  }
};

/// The model's adaptable modules in depth order, filtered by the targets.
inline ModuleList target_modules(ModelConfig const& c, Targets const& targets) {
  ModuleList out;
  for (auto const& m : decoder_modules(c.shape()))
    if (targets.selects(m)) out.push_back(m);
  TINYLORA_CHECK(!out.empty(), "target_modules(): no module matches the targets (types ", targets.types.size(),
                 ", regex '", targets.regex, "'). Hint: use names like q_proj, v_proj, all-linear.");
  return out;
}

/// The run-time half of a recipe: the adapter's hyper-parameters, the budget b and the targets.
/// With the recipe's types it decides the adapter exactly (the planner is deterministic), which is
/// why result files record it (model/adapter_record.hpp).
struct AdapterSpec {
  adapters::AdapterOptions options;
  Index budget = 13;
  Targets targets;

  /// Default options, budget b, the given targets (default: the seven projections of every block).
  static AdapterSpec of_budget(Index b, Targets t = {}) {
    AdapterSpec spec;
    spec.budget = b;
    spec.targets = std::move(t);
    return spec;
  }
};

/// The model with recipe R's adapter plugged in. R = Recipe<Adapter, Tie, Precision, Optimizer,
/// Backend>; the optimizer does not change the adapted function (the trainers use it).
template <IsRecipe R>
class AdaptedModel final : public LinearAdapters {
 public:
  using recipe = R;
  using A = typename R::adapter;
  using T = typename R::tie;
  using P = typename R::precision;
  using B = typename R::backend;
  using Set = adapters::AdapterSet<A, T, P, B>;
  using Plan = adapters::AdapterPlan<A, T>;

  /// The factory: the kind and tie setting the budget planner picks for `spec` on this model's
  /// targets, built from the model's frozen weights (each module's SVD runs here) and plugged in,
  /// with theta at the kind's initial value. The model must outlive this object.
  AdaptedModel(Decoder<B, P>& model, AdapterSpec const& spec)
      : AdaptedModel(model, adapters::plan_adapter<A, T>(spec.options, target_modules(model.config(), spec.targets), spec.budget),
                     spec.targets) {
    spec_ = spec;
    set_.set_theta(set_.initial_theta());  // the kind's init (TinyLoRA Paper: v = 0; LoRA: A random, B = 0)
  }

  /// An explicit kind and tie setting (tests, imports of adapters made elsewhere); theta starts at 0.
  AdaptedModel(Decoder<B, P>& model, A adapter, T strategy, Targets const& targets = {})
      : AdaptedModel(model, explicit_plan(model, adapter, strategy, targets), targets) {}

  /// Built from a plan (the factory's, or one checked against a result file).
  AdaptedModel(Decoder<B, P>& model, Plan const& plan, Targets const& targets)
      : model_(model), set_(make_set(model, plan.kind, plan.tie, targets)), plan_(plan) {
    spec_.targets = targets;
    TINYLORA_CHECK(set_.count() == plan_.count, "AdaptedModel: the plan counts ", plan_.count, " trainable scalars but the adapter has ",
                   set_.count(), " (a planner bug; please report it)");
    module_of_.assign(static_cast<std::size_t>(model.config().n_layers), {});
    for (auto& row : module_of_) row.fill(-1);
    auto const& mods = set_.modules();
    for (std::size_t i = 0; i < mods.size(); ++i) {
      auto const& types = default_target_types();
      auto const p = std::find(types.begin(), types.end(), mods[i].type) - types.begin();
      module_of_[static_cast<std::size_t>(mods[i].layer)][static_cast<std::size_t>(p)] = static_cast<Index>(i);
    }
    model_.set_adapters(this);
  }
  ~AdaptedModel() override {
    if (model_.adapters() == this) model_.set_adapters(nullptr);
  }
  AdaptedModel(AdaptedModel const&) = delete;
  AdaptedModel& operator=(AdaptedModel const&) = delete;

  void apply(int layer, Proj proj, ConstMatrixView<float> X, MatrixView<float> Y) const override {
    if (!enabled_ || merged_) return;
    Index const i = module_of_[static_cast<std::size_t>(layer)][static_cast<std::size_t>(proj)];
    if (i >= 0) set_.module(i).apply(X, Y);
  }

  void backward(int layer, Proj proj, ConstMatrixView<float> X, ConstMatrixView<float> dY, MatrixView<float> dX) override {
    TINYLORA_CHECK(!merged_, "AdaptedModel::backward(): the adapter is merged into the weights. Hint: unmerge() before training.");
    if (!enabled_) return;
    Index const i = module_of_[static_cast<std::size_t>(layer)][static_cast<std::size_t>(proj)];
    if (i >= 0) set_.module(i).backward(X, dY, dX);
  }

  /// The masked loss and its gradient w.r.t. theta (dL/dtheta, one value per trainable scalar).
  std::pair<LossResult, std::vector<float>> loss_and_gradient(PackedBatch const& batch, std::span<std::uint8_t const> supervised) {
    set_.zero_grad();
    LossResult const loss = model_.loss_and_backward(batch, supervised);
    return {loss, set_.gradient()};
  }

  /// Any objective J of the supervised tokens' log-probs under softmax(z / T) (see
  /// Decoder::objective_and_backward): returns the log-probs and dJ/dtheta.
  template <class Objective>
  std::pair<std::vector<float>, std::vector<float>> objective_and_gradient(PackedBatch const& batch, std::span<std::uint8_t const> supervised,
                                                                           float temperature, Objective&& objective) {
    set_.zero_grad();
    auto logp = model_.objective_and_backward(batch, supervised, temperature, std::forward<Objective>(objective));
    return {std::move(logp), set_.gradient()};
  }

  /// W += Delta W in every adapted module (rounded to the weight storage type), and the fused path
  /// turns off: the model alone now computes the adapted function (inference, export).
  void merge() {
    TINYLORA_CHECK(!merged_, "AdaptedModel::merge(): already merged");
    for_each_weight([](auto const& module, auto W) { module.merge(W); });
    merged_ = true;
  }
  /// W -= Delta W: back to the frozen base weights (exactly in fp32 up to rounding of W + Delta W).
  void unmerge() {
    TINYLORA_CHECK(merged_, "AdaptedModel::unmerge(): not merged");
    for_each_weight([](auto const& module, auto W) { module.unmerge(W); });
    merged_ = false;
  }
  bool merged() const { return merged_; }

  /// theta: one flat vector, group by group (rounded to P::theta_type when set).
  void set_theta(std::span<float const> theta) {
    TINYLORA_CHECK(!merged_, "AdaptedModel::set_theta(): the adapter is merged into the weights. Hint: unmerge() first.");
    set_.set_theta(theta);
  }
  std::vector<float> const& theta() const { return set_.theta(); }
  Index count() const { return set_.count(); }
  /// Off: the base model (KL baselines, untrained evaluation); on: the adapted one.
  void set_enabled(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }

  Set& adapter_set() { return set_; }
  Set const& adapter_set() const { return set_; }
  /// The kind, tie setting, group of each module and count this adapter was built from.
  Plan const& plan() const { return plan_; }
  /// The spec it was planned from (explicit constructions: the targets only).
  AdapterSpec const& spec() const { return spec_; }
  Decoder<B, P>& model() { return model_; }
  Decoder<B, P> const& model() const { return model_; }

  /// Names of the modules tie group g drives, in model order.
  std::vector<std::string> group_modules(Index g) const {
    std::vector<std::string> out;
    for (Index i : set_.members(g)) out.push_back(set_.modules()[static_cast<std::size_t>(i)].name);
    return out;
  }

 private:
  template <class F>
  void for_each_weight(F&& f) {
    auto const& types = default_target_types();
    for (Index i = 0; i < set_.n_modules(); ++i) {
      auto const& m = set_.modules()[static_cast<std::size_t>(i)];
      auto const p = std::find(types.begin(), types.end(), m.type) - types.begin();
      f(set_.module(i), model_.weights().layers[static_cast<std::size_t>(m.layer)].proj[static_cast<std::size_t>(p)].view());
    }
  }

  static Set make_set(Decoder<B, P> const& model, A adapter, T strategy, Targets const& targets) {
    ModuleList const modules = target_modules(model.config(), targets);
    if constexpr (std::is_same_v<typename P::weight_type, float> &&
                  std::is_same_v<typename B::template Buffer<float>, std::vector<float>>) {
      // fp32 weights in host memory: the adapters read them in place (no 0.4 GB of copies)
      std::vector<ConstMatrixView<float>> views;
      auto const& types = default_target_types();
      for (auto const& m : modules) {
        auto const p = std::find(types.begin(), types.end(), m.type) - types.begin();
        views.push_back(model.weights().layers[static_cast<std::size_t>(m.layer)].proj[static_cast<std::size_t>(p)].view());
      }
      return Set(adapter, strategy, modules, views);
    }
    std::vector<HostMatrix> weights;
    weights.reserve(modules.size());
    auto const& types = default_target_types();
    for (auto const& m : modules) {
      auto const p = static_cast<Proj>(std::find(types.begin(), types.end(), m.type) - types.begin());
      weights.push_back(model.weight_matrix(m.layer, p));
    }
    std::vector<ConstMatrixView<float>> views;
    for (auto const& w : weights) views.push_back(view_of(w));
    return Set(adapter, strategy, modules, views);
  }

  static Plan explicit_plan(Decoder<B, P> const& model, A const& adapter, T const& strategy, Targets const& targets) {
    ModuleList const modules = target_modules(model.config(), targets);
    Plan plan{adapter, strategy, strategy.assign(modules), 0, 0};
    plan.n_groups = tying::count_groups(plan.group_of);
    plan.count = adapters::plan_count<A, T>(adapter, plan.group_of, plan.n_groups, modules);  // -1: AdapterSet says why
    return plan;
  }

  Decoder<B, P>& model_;
  Set set_;
  Plan plan_;
  AdapterSpec spec_;
  std::vector<std::array<Index, kProjCount>> module_of_;  // (layer, proj) -> module index or -1
  bool enabled_ = true;
  bool merged_ = false;
};

}  // namespace tinylora::model
