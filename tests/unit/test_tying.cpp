// Tie strategies and the budget planner: REFERENCE.md section 3 for N = 196 (Qwen2.5-7B), PEFT's
// weight_tying table, and planner counts equal to the scalars an AdapterSet actually creates.
#include <doctest/doctest.h>

#include <vector>

#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/core/type_list.hpp"
#include "tinylora/precision/policies.hpp"
#include "tinylora/adapters/plan.hpp"
#include "tinylora/model/shapes.hpp"

using namespace tinylora;
using namespace tinylora::tying;

namespace {
ModuleList qwen7b() { return decoder_modules(shapes::kQwen25_7B); }
/// TinyLoRA's plan with u searched in {1, 2, 4}.
template <class T>
adapters::AdapterPlan<adapters::TinyLora<>, T> plan_budget(ModuleList const& modules, Index b) {
  adapters::AdapterOptions o;
  o.u_choices = {1, 2, 4};
  return adapters::plan_adapter<adapters::TinyLora<>, T>(o, modules, b);
}
}  // namespace

TEST_CASE("module lists of the paper's models have the published sizes") {
  CHECK(decoder_modules(shapes::kQwen25_7B).size() == 196);
  CHECK(decoder_modules(shapes::kQwen25_3B).size() == 252);
  CHECK(decoder_modules(shapes::kLlama3_8B).size() == 224);
  CHECK(decoder_modules(shapes::kSmolLM2_135M).size() == 210);
  auto const m = decoder_modules(shapes::kSmolLM2_135M);
  CHECK(m[1].type == "k_proj");
  CHECK(m[1].d_out == 192);
  CHECK(m[6].d_in == 1536);  // down_proj
}

TEST_CASE("tiling: consecutive tiles by depth") {
  auto const g = Tiling{16}.assign(qwen7b());
  CHECK(count_groups(g) == 13);  // 12 tiles of 16 + one of 4
  CHECK(g[0] == 0);
  CHECK(g[15] == 0);
  CHECK(g[16] == 1);
  CHECK(g[191] == 11);
  CHECK(g[192] == 12);
  CHECK(g[195] == 12);
}

TEST_CASE("structured: same-type modules share, chunked by depth") {
  auto const modules = qwen7b();
  auto const g = Structured{14}.assign(modules);
  CHECK(count_groups(g) == 14);  // 7 types x ceil(28 / 14)
  for (std::size_t i = 0; i < modules.size(); ++i)
    for (std::size_t j = 0; j < modules.size(); ++j)
      if (g[i] == g[j]) CHECK(modules[i].type == modules[j].type);
  CHECK(g[0] == 0);       // q_proj layer 0
  CHECK(g[7 * 13] == 0);  // q_proj layer 13
  CHECK(g[7 * 14] == 1);  // q_proj layer 14
  CHECK(g[1] == 2);       // k_proj layer 0: types numbered in order of first appearance
}

TEST_CASE("PEFT weight_tying: groups = max(1, round(N (1 - wt))), size = N // groups, last group absorbs the rest") {
  auto const modules = qwen7b();
  struct Row {
    double wt;
    Index groups;
    Index size;
  };
  // Hand-computed for N = 196 (Python's round: halves to even).
  std::vector<Row> const table{{0.0, 196, 1}, {0.5, 98, 2}, {0.9, 20, 9},  {0.95, 10, 19}, {0.99, 2, 98},
                               {1.0, 1, 196}, {0.25, 147, 1}, {0.75, 49, 4}, {0.9375, 12, 16}};
  for (auto const& row : table) {
    INFO("weight_tying " << row.wt);
    auto const g = PeftRatio{row.wt}.assign(modules);
    CHECK(count_groups(g) == row.groups);
    for (Index i = 0; i < 196; ++i) CHECK(g[static_cast<std::size_t>(i)] == std::min(i / row.size, row.groups - 1));
  }
  CHECK(round_half_even(12.25) == 12);
  CHECK(round_half_even(12.5) == 12);
  CHECK(round_half_even(13.5) == 14);
  CHECK(round_half_even(0.5) == 0);
}

TEST_CASE("budget planner reproduces REFERENCE.md section 3 for N = 196") {
  auto const modules = qwen7b();
  auto const b13 = plan_budget<Tiling>(modules, 13);
  CHECK(b13.kind.u == 1);
  CHECK(b13.tie.n_tie == 16);
  CHECK(b13.count == 13);
  auto const b2 = plan_budget<Tiling>(modules, 2);
  CHECK(b2.kind.u == 1);
  CHECK(b2.tie.n_tie == 98);
  auto const g2 = b2.tie.assign(modules);
  CHECK(modules[static_cast<std::size_t>(std::find(g2.begin(), g2.end(), 1) - g2.begin())].layer == 14);  // theta_2 drives layers 14-27
  auto const b49 = plan_budget<Tiling>(modules, 49);
  CHECK(b49.kind.u == 1);
  CHECK(b49.tie.n_tie == 4);
  auto const b196 = plan_budget<Tiling>(modules, 196);
  CHECK(b196.kind.u == 1);
  CHECK(b196.tie.n_tie == 1);
  // Structured: 7 types x ceil(28 / n_tie) groups; 13 is unreachable, 14 is nearest (ties go to fewer).
  auto const s13 = plan_budget<Structured>(modules, 13);
  CHECK(s13.count == 14);
  CHECK(s13.n_groups * s13.kind.u == 14);
  CHECK(plan_budget<All>(modules, 4).count == 4);
  CHECK(plan_budget<Untied>(modules, 200).count == 196);
  CHECK(plan_budget<PeftRatio>(modules, 13).count == 13);
}

TEST_CASE("planner counts equal the trainable scalars an AdapterSet creates") {
  auto const seed = test::seed(3);
  // N = 196 modules tagged like Qwen2.5-7B but with tiny shapes so the SVDs are cheap.
  auto modules = qwen7b();
  for (auto& m : modules) {
    m.d_out = 4 + (m.type == "k_proj" || m.type == "v_proj" ? 0 : 2);
    m.d_in = 6;
  }
  std::vector<HostMatrix> W;
  for (std::size_t i = 0; i < modules.size(); ++i) {
    auto const v = test::normal_vector(static_cast<std::size_t>(modules[i].d_out * modules[i].d_in), seed, i);
    W.push_back(Eigen::Map<HostMatrix const>(v.data(), modules[i].d_out, modules[i].d_in));
  }
  std::vector<ConstMatrixView<float>> views;
  for (auto const& w : W) views.push_back(view_of(w));
  for (Index b : {1, 2, 7, 13, 49, 120, 196}) {
    for_each_type<Tiling, Structured, All, PeftRatio, Untied>([&]<class T>() {
      INFO("b = " << b << ", tie " << T::name);
      auto const plan = plan_budget<T>(modules, b);
      adapters::AdapterSet<adapters::TinyLora<>, T, precision::Fp32, backend::Cpu> set(plan.kind, plan.tie, modules,
                                                                                         views);
      CHECK(set.count() == plan.count);
      CHECK(set.n_groups() == plan.n_groups);
      CHECK(static_cast<Index>(set.initial_theta().size()) == plan.count);
    });
  }
}

TEST_CASE("bad tie settings are rejected with a message") {
  auto const modules = qwen7b();
  CHECK_THROWS_WITH_AS(Tiling{0}.assign(modules), doctest::Contains("n_tie must be >= 1"), Error);
  CHECK_THROWS_WITH_AS(PeftRatio{1.5}.assign(modules), doctest::Contains("weight_tying must be in [0, 1]"), Error);
  CHECK_THROWS_WITH_AS(plan_budget<Tiling>(ModuleList{}, 13), doctest::Contains("module list is empty"), Error);
  CHECK_THROWS_WITH_AS(plan_budget<Tiling>(modules, 0), doctest::Contains("must be >= 1"), Error);
}
