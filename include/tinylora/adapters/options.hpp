// tinylora/adapters/options.hpp: the run-time hyper-parameters an adapter kind is configured from
// (rank, scale, seed, the u the budget planner may pick, the SVD method). Every kind reads the ones
// it has and keeps its own default where a field is unset, so one set of command-line options
// configures any kind, and a result file that records these rebuilds the same adapter.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tinylora/core/error.hpp"
#include "tinylora/core/format.hpp"
#include "tinylora/core/tensor.hpp"
#include "tinylora/linalg/svd.hpp"

namespace tinylora::adapters {

struct AdapterOptions {
  Index r = 0;                                              // rank (TinyLoRA, LoRA-XS: frozen SVD; LoRA: trainable); 0: the kind's default
  float alpha = std::numeric_limits<float>::quiet_NaN();    // scale numerator; NaN: the kind's (convention's) default
  std::uint64_t seed = 0;                                   // projections, initial slots
  std::vector<Index> u_choices{1};                          // TinyLoRA: the u the budget planner may choose
  linalg::SvdMethod svd = linalg::SvdMethod::Automatic;

  bool has_r() const { return r > 0; }
  bool has_alpha() const { return !std::isnan(alpha); }
  void validate() const {
    TINYLORA_CHECK(r >= 0, "AdapterOptions: the rank r must be >= 1, or 0 for the kind's default (got ", r, ")");
    TINYLORA_CHECK(!has_alpha() || std::isfinite(alpha), "AdapterOptions: alpha must be finite (got ", alpha, ")");
    TINYLORA_CHECK(!u_choices.empty(), "AdapterOptions: no choice of u given");
    for (Index u : u_choices) TINYLORA_CHECK(u >= 1, "AdapterOptions: every u must be >= 1 (got ", u, ")");
  }
};

inline std::string svd_method_name(linalg::SvdMethod m) {
  switch (m) {
    case linalg::SvdMethod::Exact: return "exact";
    case linalg::SvdMethod::Randomized: return "randomized";
    case linalg::SvdMethod::Krylov: return "krylov";
    case linalg::SvdMethod::Automatic: return "automatic";
  }
  return "?";
}

inline linalg::SvdMethod svd_method_from_name(std::string const& s) {
  for (auto m : {linalg::SvdMethod::Exact, linalg::SvdMethod::Randomized, linalg::SvdMethod::Krylov, linalg::SvdMethod::Automatic})
    if (svd_method_name(m) == s) return m;
  fail("AdapterOptions: unknown SVD method '", s, "' (expected exact, randomized, krylov or automatic)");
}

}  // namespace tinylora::adapters
