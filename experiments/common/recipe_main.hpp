// experiments/common/recipe_main.hpp: an experiment's main over the recipes of its `using` block.
// An experiment lists one recipe or several (`using Recipes = TypeList<...>`); its body is a
// template over the recipe, instantiated for each. `--recipe NAME` picks one at run time (default:
// the first), `--list-recipes` prints them. The recipe-matrix build (TINYLORA_RECIPE_MATRIX, see
// experiments/CMakeLists.txt) adds the star around the first recipe (every adapter kind, tie
// strategy, precision and optimizer of tinylora/policies.hpp, one axis at a time), which CTest
// runs one by one, so every policy model runs in every experiment.
#pragma once

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/cli.hpp"
#include "tinylora/policies.hpp"
#include "tinylora/recipe.hpp"

namespace tinylora::cli {

template <class Recipes>
struct RecipeMatrix;
template <class First, class... Rest>
struct RecipeMatrix<TypeList<First, Rest...>> {
#ifdef TINYLORA_RECIPE_MATRIX
  using type = ConcatUnique<TypeList<First, Rest...>, recipes::Star<First, policies::AdapterKinds, policies::TieStrategies,
                                                                    policies::PrecisionPolicies, policies::Optimizers>>;
#else
  using type = TypeList<First, Rest...>;
#endif
};

struct NoRecordedRecipe {
  std::optional<std::string> operator()(std::vector<char*> const&) const { return std::nullopt; }
};

/// Runs body.template operator()<R>(argc, argv) for the recipe chosen by --recipe (removed from
/// argv before the experiment parses it), inside guarded_main. `recorded(args)` may name the
/// recipe instead (by Recipe::describe_adapter(): 05_evaluate --run reads it from a run file).
template <class Recipes, class Body, class Recorded = NoRecordedRecipe>
int recipe_main(char const* program, int argc, char** argv, Body&& body, Recorded recorded = {}) {
  takes_recipe_option() = true;
  using List = typename RecipeMatrix<Recipes>::type;
  return guarded_main(program, [&]() -> int {
    std::vector<char*> args(argv, argv + argc);
    std::string chosen;
    for (std::size_t i = 1; i < args.size(); ++i) {
      if (std::strcmp(args[i], "--list-recipes") == 0) {
        for (auto const& n : recipes::names(List{})) std::printf("%s\n", n.c_str());
        return 0;
      }
      bool const joined = std::strncmp(args[i], "--recipe=", 9) == 0;
      if (joined || std::strcmp(args[i], "--recipe") == 0) {
        TINYLORA_CHECK(joined || i + 1 < args.size(), "--recipe needs a value. Hint: --list-recipes prints them.");
        chosen = joined ? std::string(args[i] + 9) : std::string(args[i + 1]);
        args.erase(args.begin() + static_cast<std::ptrdiff_t>(i), args.begin() + static_cast<std::ptrdiff_t>(i) + (joined ? 1 : 2));
        break;
      }
    }
    std::optional<std::string> const from_file = recorded(args);
    TINYLORA_CHECK(!(from_file && !chosen.empty()), "--recipe and a run file's recorded recipe ('", from_file.value_or(""),
                   "') cannot both choose. Hint: leave --recipe out.");
    bool const adapter_only = from_file.has_value();
    if (from_file) chosen = *from_file;
    if (chosen.empty()) chosen = recipes::names(List{}).front();
    int rc = 0;
    bool const found = recipes::dispatch(
        List{}, chosen, [&]<class R>() { rc = body.template operator()<R>(static_cast<int>(args.size()), args.data()); }, adapter_only);
    if (!found) {
      std::string known;
      for (auto const& n : recipes::names(List{})) known += "\n  " + n;
      fail("unknown recipe '", chosen, "'; this build has:", known,
           "\nHint: add it to the experiment's `using Recipes` block, or build the recipe matrix (TINYLORA_RECIPE_MATRIX).");
    }
    return rc;
  });
}

}  // namespace tinylora::cli
