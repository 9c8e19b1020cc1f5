// tinylora/adapters/init.hpp: how trainable slots start (zeros, normal, uniform), drawn from the
// counter-based generator keyed by (seed, tie group, slot) so any thread count gives the same bits.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "tinylora/core/format.hpp"
#include "tinylora/core/rng.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::adapters {

struct Init {
  enum class Kind { Zeros, Normal, Uniform };
  Kind kind = Kind::Zeros;
  float scale = 0.0f;  // standard deviation (Normal) or bound (Uniform: [-scale, scale))

  static constexpr Init zeros() { return {Kind::Zeros, 0.0f}; }
  static constexpr Init normal(float stddev) { return {Kind::Normal, stddev}; }
  static constexpr Init uniform(float bound) { return {Kind::Uniform, bound}; }

  /// Fills out[j] for group g: stream (kThetaInit, g), index j.
  void fill(std::span<float> out, std::uint64_t seed, Index group) const {
    CounterRng const rng(seed, streams::of(streams::kThetaInit, static_cast<std::uint64_t>(group)));
    for (std::size_t j = 0; j < out.size(); ++j) {
      switch (kind) {
        case Kind::Zeros: out[j] = 0.0f; break;
        case Kind::Normal: out[j] = scale * rng.normal(j); break;
        case Kind::Uniform: out[j] = rng.uniform(j, -scale, scale); break;
      }
    }
  }

  std::string describe() const {
    switch (kind) {
      case Kind::Zeros: return "zeros";
      case Kind::Normal: return "normal(std=" + exact(scale) + ")";
      case Kind::Uniform: return "uniform(bound=" + exact(scale) + ")";
    }
    return "?";
  }
};

}  // namespace tinylora::adapters
