// tinylora/core/dot.hpp: a dot product whose bits do not depend on where its operands sit in memory.
#pragma once

#include "tinylora/core/tensor.hpp"

namespace tinylora {

/// Partial sums of dot_lanes: 8 floats or doubles, one or two AVX2 registers.
inline constexpr Index kDotLanes = 8;

/// a . b over n elements in kDotLanes fixed partial sums, then the tail, then the lanes in order.
/// GCC vectorizes the lane loop without reassociating a sum; unlike Eigen's reductions on unaligned
/// maps (which peel an address-dependent head) the result is the same wherever a and b are.
template <class T>
inline T dot_lanes(T const* a, T const* b, Index n) {
  T part[kDotLanes] = {};
  Index j = 0;
  for (; j + kDotLanes <= n; j += kDotLanes)
    for (Index l = 0; l < kDotLanes; ++l) part[l] += a[j + l] * b[j + l];
  T dot = T(0);
  for (; j < n; ++j) dot += a[j] * b[j];
  for (Index l = 0; l < kDotLanes; ++l) dot += part[l];
  return dot;
}

}  // namespace tinylora
