// tinylora/core/type_list.hpp: compile-time lists of policy types, so that an ablation over
// types (tie strategies, precisions, adapters) is one loop inside one binary and every
// combination in it is compiled and type-checked.
#pragma once

#include <type_traits>

namespace tinylora {

template <class... Ts>
struct TypeList {
  static constexpr int size = sizeof...(Ts);
};

/// Calls f.template operator()<T>() for every T in Ts, in order.
/// Example: for_each_type<Tiling, Structured>([]<class T>() { run<T>(); });
template <class... Ts, class F>
constexpr void for_each_type(F&& f) {
  (f.template operator()<Ts>(), ...);
}

/// Same, over a TypeList.
template <class F, class... Ts>
constexpr void for_each_type(TypeList<Ts...>, F&& f) {
  (f.template operator()<Ts>(), ...);
}

namespace detail {
/// f.template operator()<A, B>() for every B.
template <class A, class... Bs, class F>
constexpr void for_each_second(F& f) {
  (f.template operator()<A, Bs>(), ...);
}
}  // namespace detail

/// Cartesian product helper: for_each_pair(TypeList<A...>{}, TypeList<B...>{}, f) calls
/// f.template operator()<A_i, B_j>() for every pair.
template <class... As, class... Bs, class F>
constexpr void for_each_pair(TypeList<As...>, TypeList<Bs...>, F&& f) {
  // (A pack expanded inside a lambda inside a fold, the shorter spelling, is beyond nvcc's front end.)
  (detail::for_each_second<As, Bs...>(f), ...);
}

}  // namespace tinylora

namespace tinylora {

namespace detail {
template <class L, class T>
struct AppendUnique;
template <class... Ts, class T>
struct AppendUnique<TypeList<Ts...>, T> {
  using type = std::conditional_t<(std::is_same_v<Ts, T> || ...), TypeList<Ts...>, TypeList<Ts..., T>>;
};
template <class L, class... Ts>
struct AppendAllUnique {
  using type = L;
};
template <class L, class T, class... Ts>
struct AppendAllUnique<L, T, Ts...> {
  using type = typename AppendAllUnique<typename AppendUnique<L, T>::type, Ts...>::type;
};
template <class L, class M>
struct ConcatUnique;
template <class L, class... Ms>
struct ConcatUnique<L, TypeList<Ms...>> {
  using type = typename AppendAllUnique<L, Ms...>::type;
};
}  // namespace detail

/// L followed by the types of M that L does not hold yet (first occurrence kept).
template <class L, class M>
using ConcatUnique = typename detail::ConcatUnique<L, M>::type;

}  // namespace tinylora
