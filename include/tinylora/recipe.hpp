// tinylora/recipe.hpp: an experiment's five policies bundled at compile time, the checks that
// reject combinations that cannot work (each with a sentence), and the recipe lists the recipe
// matrix and run-file dispatch are built from.
//   using Paper13 = Recipe<adapters::TinyLora<>, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>;
// A Recipe is the type AdaptedModel, the trainers and the experiments take.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tinylora/adapters/concepts.hpp"
#include "tinylora/backend/concepts.hpp"
#include "tinylora/core/type_list.hpp"
#include "tinylora/optim/concepts.hpp"
#include "tinylora/precision/concepts.hpp"
#include "tinylora/tying/concepts.hpp"

namespace tinylora {

/// True when the five policies form a recipe that can run: each satisfies its axis' concept, and an
/// adapter whose slot count depends on the module's shape is only tied among modules of one type.
template <class A, class T, class P, class O, class B>
inline constexpr bool recipe_allowed = [] {
  if constexpr (backend::Backend<B> && precision::PrecisionPolicy<P> && tying::TieStrategy<T> && optim::Optimizer<O>) {
    if constexpr (adapters::AdapterKind<A, B, P>) return !(A::slots_depend_on_shape && T::mixes_module_types);
    else return false;
  } else {
    return false;
  }
}();

template <class A, class T, class P, class O, class B>
struct Recipe {
  static_assert(backend::Backend<B>, "Recipe: the fifth policy must satisfy backend::Backend (e.g. backend::Cpu)");
  static_assert(precision::PrecisionPolicy<P>,
                "Recipe: the third policy must satisfy precision::PrecisionPolicy (e.g. precision::Fp32)");
  static_assert(tying::TieStrategy<T>, "Recipe: the second policy must satisfy tying::TieStrategy (e.g. tying::Tiling)");
  static_assert(optim::Optimizer<O>, "Recipe: the fourth policy must satisfy optim::Optimizer (e.g. optim::AdamW)");
  static_assert(adapters::AdapterKind<A, B, P>,
                "Recipe: the first policy must satisfy adapters::AdapterKind (e.g. adapters::TinyLora<>)");
  static_assert(!(A::slots_depend_on_shape && T::mixes_module_types),
                "Recipe: this adapter's trainable slots depend on each module's shape, so it can only be tied among "
                "modules of one type: use tying::Untied or tying::Structured");

  using adapter = A;
  using tie = T;
  using precision = P;
  using optimizer = O;
  using backend = B;

  /// "adapter/tie/precision/optimizer/backend", recorded in result files.
  static std::string describe() {
    return std::string(A::name) + "/" + std::string(T::name) + "/" + std::string(P::name) + "/" + std::string(O::name) + "/" +
           std::string(B::name);
  }
  /// The part that decides the adapted function (the optimizer only decides how theta was found).
  static std::string describe_adapter() {
    return std::string(A::name) + "/" + std::string(T::name) + "/" + std::string(P::name) + "/" + std::string(B::name);
  }
};

template <class R>
concept IsRecipe = requires {
  typename R::adapter;
  typename R::tie;
  typename R::precision;
  typename R::optimizer;
  typename R::backend;
} && std::is_same_v<R, Recipe<typename R::adapter, typename R::tie, typename R::precision, typename R::optimizer, typename R::backend>>;

namespace recipes {

namespace detail {
template <class List>
struct FirstOr;  // the first type of a list, or void
template <>
struct FirstOr<TypeList<>> {
  using type = void;
};
template <class T, class... Ts>
struct FirstOr<TypeList<T, Ts...>> {
  using type = T;
};

template <class... Ls>
struct Join {
  using type = TypeList<>;
};
template <class L, class... Ls>
struct Join<L, Ls...> {
  using type = ConcatUnique<L, typename Join<Ls...>::type>;
};

/// The ties of `Ties` an adapter A may use with R's other policies.
template <class R, class A, class Ties>
struct AllowedTies;
template <class R, class A, class... Ts>
struct AllowedTies<R, A, TypeList<Ts...>> {
  using type = typename Join<std::conditional_t<
      recipe_allowed<A, Ts, typename R::precision, typename R::optimizer, typename R::backend>, TypeList<Ts>, TypeList<>>...>::type;
};

template <class R, class Adapters, class Ties>
struct VaryAdapter;
template <class R, class... As, class Ties>
struct VaryAdapter<R, TypeList<As...>, Ties> {
  template <class A>
  using tie_for = std::conditional_t<recipe_allowed<A, typename R::tie, typename R::precision, typename R::optimizer, typename R::backend>,
                                     typename R::tie, typename FirstOr<typename AllowedTies<R, A, Ties>::type>::type>;
  template <class A, class T>
  using one = std::conditional_t<std::is_void_v<T>, TypeList<>,
                                 TypeList<Recipe<A, std::conditional_t<std::is_void_v<T>, typename R::tie, T>, typename R::precision,
                                                 typename R::optimizer, typename R::backend>>>;
  using type = typename Join<one<As, tie_for<As>>...>::type;
};
template <class R, class Ties>
struct VaryTie;
template <class R, class... Ts>
struct VaryTie<R, TypeList<Ts...>> {
  using type = typename Join<std::conditional_t<
      recipe_allowed<typename R::adapter, Ts, typename R::precision, typename R::optimizer, typename R::backend>,
      TypeList<Recipe<typename R::adapter, Ts, typename R::precision, typename R::optimizer, typename R::backend>>, TypeList<>>...>::type;
};
template <class R, class Ps>
struct VaryPrecision;
template <class R, class... Ps>
struct VaryPrecision<R, TypeList<Ps...>> {
  using type = typename Join<std::conditional_t<
      recipe_allowed<typename R::adapter, typename R::tie, Ps, typename R::optimizer, typename R::backend>,
      TypeList<Recipe<typename R::adapter, typename R::tie, Ps, typename R::optimizer, typename R::backend>>, TypeList<>>...>::type;
};
template <class R, class Os>
struct VaryOptimizer;
template <class R, class... Os>
struct VaryOptimizer<R, TypeList<Os...>> {
  using type = typename Join<std::conditional_t<
      recipe_allowed<typename R::adapter, typename R::tie, typename R::precision, Os, typename R::backend>,
      TypeList<Recipe<typename R::adapter, typename R::tie, typename R::precision, Os, typename R::backend>>, TypeList<>>...>::type;
};
}  // namespace detail

/// The star around recipe R: R itself, then R with each model of one axis changed (every adapter
/// kind, every tie strategy, every precision, every optimizer), without duplicates. An adapter kind
/// that R's tie strategy rejects (LoRA, Full with Tiling) takes the first strategy of `Ties` it
/// accepts; a tie, precision or optimizer that R's adapter rejects is left out. Each policy model
/// of each list appears in at least one recipe, at the cost of one axis' size each, not their product.
template <IsRecipe R, class Adapters, class Ties, class Precisions, class Optimizers>
using Star = typename detail::Join<TypeList<R>, typename detail::VaryAdapter<R, Adapters, Ties>::type,
                                   typename detail::VaryTie<R, Ties>::type, typename detail::VaryPrecision<R, Precisions>::type,
                                   typename detail::VaryOptimizer<R, Optimizers>::type>::type;

namespace detail {
// Recursion, not a fold over lambdas: nvcc's front end cannot expand a pack inside a lambda in a fold.
template <class F>
bool dispatch_in(TypeList<>, std::string_view, F&, bool) {
  return false;
}
template <class R, class... Rs, class F>
bool dispatch_in(TypeList<R, Rs...>, std::string_view name, F& f, bool adapter_only) {
  if ((adapter_only ? R::describe_adapter() : R::describe()) == name) {
    f.template operator()<R>();
    return true;
  }
  return dispatch_in(TypeList<Rs...>{}, name, f, adapter_only);
}
}  // namespace detail

/// f.template operator()<R>() for the first recipe of `List` whose describe() (or, with
/// adapter_only, describe_adapter()) is `name`; false when none is.
template <class... Rs, class F>
bool dispatch(TypeList<Rs...> list, std::string_view name, F&& f, bool adapter_only = false) {
  return detail::dispatch_in(list, name, f, adapter_only);
}

template <class... Rs>
std::vector<std::string> names(TypeList<Rs...>) {
  return {Rs::describe()...};
}

}  // namespace recipes

}  // namespace tinylora
