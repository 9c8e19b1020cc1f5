// tinylora/adapters/plan.hpp: the budget planner for every adapter kind. A target number of
// trainable scalars b becomes a kind setting (A::candidates: TinyLoRA's u) and a tie setting
// (T::candidates: n_tie, weight_tying, ...). The count of a plan is the AdapterSet's own:
//   count = sum over tie groups g of a.slots(first module of g)
// (TinyLoRA: G u; LoRA-XS: G r^2; LoRA: sum_g r (d_in + d_out); Full: sum_g d_out d_in), so it is
// right for kinds whose slots depend on the module's shape, where G x slots would not be. A tie
// setting that puts modules needing different slot counts in one group is skipped. The plan kept
// is the one closest to b; ties go to fewer parameters, then to the earlier kind candidate (smaller
// u), then to the earlier tie candidate (fewer ties).
#pragma once

#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "tinylora/adapters/concepts.hpp"
#include "tinylora/adapters/options.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/tying/strategies.hpp"

namespace tinylora::adapters {

template <class A, tying::TieStrategy T>
struct AdapterPlan {
  A kind{};                    // the adapter kind, configured (TinyLoRA: u chosen)
  T tie{};                     // the tie setting
  std::vector<Index> group_of; // (N) module -> tie group
  Index n_groups = 0;
  Index count = 0;             // trainable scalars the AdapterSet will create

  std::string describe() const {
    return detail::concat(A::name, " ", kind.describe(), " / ", T::name, " ", tie.describe(), ": ", n_groups, " groups, ", count,
                          " trainable scalars");
  }
};

/// The trainable count of (kind, tie) over `modules`, or -1 when a tie group mixes slot counts.
template <class A, tying::TieStrategy T>
Index plan_count(A const& kind, std::vector<Index> const& group_of, Index n_groups, std::span<ModuleInfo const> modules) {
  std::vector<Index> slots(static_cast<std::size_t>(n_groups), -1);  // (G)
  for (std::size_t i = 0; i < modules.size(); ++i) {
    Index const need = kind.slots(modules[i]);
    Index& have = slots[static_cast<std::size_t>(group_of[i])];
    if (have < 0) have = need;
    else if (have != need) return -1;
  }
  Index count = 0;
  for (Index s : slots) count += s;
  return count;
}

template <class A, tying::TieStrategy T>
AdapterPlan<A, T> plan_adapter(AdapterOptions const& options, std::span<ModuleInfo const> modules, Index b) {
  options.validate();
  TINYLORA_CHECK(!modules.empty(), "plan_adapter(): the module list is empty. Hint: check the target module names.");
  TINYLORA_CHECK(b >= 1, "plan_adapter(): the budget b must be >= 1 (got ", b, ")");
  bool found = false;
  AdapterPlan<A, T> best;
  for (A const& kind : A::candidates(options)) {
    for (T const& t : T::candidates(modules)) {
      std::vector<Index> group_of = t.assign(modules);
      Index const G = tying::count_groups(group_of);
      Index const count = plan_count<A, T>(kind, group_of, G, modules);
      if (count < 0) continue;
      Index const dist = std::abs(count - b), best_dist = std::abs(best.count - b);
      if (!found || dist < best_dist || (dist == best_dist && count < best.count)) {
        best = {kind, t, std::move(group_of), G, count};
        found = true;
      }
    }
  }
  TINYLORA_CHECK(found, "plan_adapter(): no setting of ", T::name, " ties these ", modules.size(), " modules so that every group's ",
                 A::name, " modules need the same number of slots. Hint: use tying::Untied or tying::Structured.");
  return best;
}

}  // namespace tinylora::adapters
