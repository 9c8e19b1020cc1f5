// tests/support.hpp: shared helpers for the tests: seeded random inputs (the seed is always
// printed), paths to the source tree, and closeness checks that report the worst element.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "tinylora/core/rng.hpp"

namespace tinylora::test {

/// Announces the seed of a random test so that a failure can be reproduced.
inline std::uint64_t seed(std::uint64_t s) {
  MESSAGE("seed = " << s);
  return s;
}

/// n normal(0, scale) numbers from (seed, stream).
inline std::vector<float> normal_vector(std::size_t n, std::uint64_t seed, std::uint64_t stream = 0,
                                        float scale = 1.0f) {
  CounterRng rng(seed, streams::of(streams::kTest, stream));
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = scale * rng.normal(i);
  return out;
}

inline std::filesystem::path source_dir() { return TINYLORA_SOURCE_DIR; }
inline std::filesystem::path binary_dir() { return TINYLORA_BINARY_DIR; }

/// A fresh scratch directory under the build tree for one test.
inline std::filesystem::path scratch_dir(std::string const& name) {
  auto const dir = binary_dir() / "test_scratch" / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

struct Closeness {
  bool ok = true;
  std::size_t worst = 0;
  double worst_excess = -1;
  double got = 0, want = 0;
};

/// |got - want| <= atol + rtol * |want| elementwise; returns the worst element.
template <class A, class B>
Closeness all_close(A const& got, B const& want, double rtol, double atol) {
  Closeness c;
  REQUIRE(static_cast<std::size_t>(got.size()) == static_cast<std::size_t>(want.size()));
  for (std::size_t i = 0; i < static_cast<std::size_t>(got.size()); ++i) {
    double const g = got[i], w = want[i];
    double const excess = std::abs(g - w) - (atol + rtol * std::abs(w));
    if (!(excess <= 0) || std::isnan(g) != std::isnan(w)) c.ok = false;
    if (excess > c.worst_excess || std::isnan(excess)) {
      c.worst_excess = excess;
      c.worst = i;
      c.got = g;
      c.want = w;
    }
  }
  return c;
}

/// ||g - g_fd|| / (||g|| + ||g_fd||) (mlpack's relative gradient error): a gradient against its
/// finite-difference estimate.
template <class A, class B>
double relative_error(A const& g, B const& fd) {
  REQUIRE(static_cast<std::size_t>(g.size()) == static_cast<std::size_t>(fd.size()));
  double num = 0, a = 0, b = 0;
  for (std::size_t i = 0; i < static_cast<std::size_t>(g.size()); ++i) {
    double const x = g[i], y = fd[i];
    num += (x - y) * (x - y);
    a += x * x;
    b += y * y;
  }
  return std::sqrt(num) / std::max(1e-30, std::sqrt(a) + std::sqrt(b));
}

}  // namespace tinylora::test

/// CHECK that two sequences agree within atol + rtol*|want|, printing the worst element.
#define TINYLORA_CHECK_CLOSE(got_values, want_values, rtol_value, atol_value)                       \
  do {                                                                                          \
    auto const tl_c_ = ::tinylora::test::all_close((got_values), (want_values), (rtol_value), (atol_value)); \
    INFO("worst element " << tl_c_.worst << ": got " << tl_c_.got << ", want " << tl_c_.want    \
                          << " (rtol " << (rtol_value) << ", atol " << (atol_value) << ")");    \
    CHECK(tl_c_.ok);                                                                            \
  } while (0)
