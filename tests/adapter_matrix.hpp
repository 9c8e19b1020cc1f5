// tests/adapter_matrix.hpp: every adapter kind and tie strategy (the registry, tinylora/policies.hpp), with small instances
// of each (u = 2 and r = 2 where they apply), for the tests that run the whole adapter x tie matrix.
#pragma once

#include <cstdint>
#include <type_traits>

#include "tinylora/policies.hpp"

namespace tinylora::test {

using AllAdapters = policies::AdapterKinds;
using AllTies = policies::TieStrategies;

template <class A>
A make_adapter(std::uint64_t seed) {
  A a{};
  if constexpr (requires { a.u; }) a.u = 2;  // exercise u > 1
  if constexpr (requires { a.r; }) a.r = 2;
  if constexpr (requires { a.seed; }) a.seed = seed;
  return a;
}

template <class T>
T make_tie() {
  if constexpr (std::is_same_v<T, tying::Tiling>) return T{3};
  else if constexpr (std::is_same_v<T, tying::Structured>) return T{2};
  else if constexpr (std::is_same_v<T, tying::PeftRatio>) return T{0.5};
  else return T{};
}

}  // namespace tinylora::test
