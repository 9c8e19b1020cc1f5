// tinylora/core/parallel.hpp: coarse-grained threading for machines with few cores. A batch is cut
// into contiguous parts of about equal cost and each part runs on its own OpenMP thread with every
// operation inside it serial (our kernels, OpenBLAS and Eigen all see they are already inside a
// parallel region). A forward pass then has no barrier at all, instead of ~15 fork/joins per layer.
#pragma once

#include <omp.h>

#include <algorithm>
#include <exception>
#include <vector>

#include "tinylora/core/tensor.hpp"

namespace tinylora::parallel {

/// Threads a new parallel region would get here: 1 inside one already (nesting is off).
inline int available_threads() { return omp_in_parallel() ? 1 : std::max(1, omp_get_max_threads()); }

/// Cuts items 0..n-1 into at most max_parts contiguous, non-empty ranges of about equal total cost:
/// range p is [bounds[p], bounds[p + 1]). Greedy: cut p falls where the running cost is nearest to
/// p parts' share of the total.   cost(i) >= 0;  returns bounds (parts + 1)
template <class Cost>
std::vector<Index> balanced_ranges(Index n, int max_parts, Cost&& cost) {
  std::vector<Index> bounds{0};
  if (n <= 0) return bounds;
  Index const parts = std::clamp<Index>(max_parts, 1, n);
  std::vector<double> prefix(static_cast<std::size_t>(n) + 1, 0.0);  // (n + 1) cumulative cost
  for (Index i = 0; i < n; ++i) prefix[static_cast<std::size_t>(i) + 1] = prefix[static_cast<std::size_t>(i)] + cost(i);
  double const total = prefix.back();
  for (Index p = 1; p < parts; ++p) {
    double const target = total * static_cast<double>(p) / static_cast<double>(parts);
    Index cut = bounds.back() + 1;  // every range keeps at least one item
    while (cut < n - (parts - p) && prefix[static_cast<std::size_t>(cut)] < target) ++cut;
    // Step back one item when that lands nearer the share (e.g. one long sequence among short ones).
    if (cut > bounds.back() + 1 && target - prefix[static_cast<std::size_t>(cut) - 1] < prefix[static_cast<std::size_t>(cut)] - target)
      --cut;
    bounds.push_back(cut);
  }
  bounds.push_back(n);
  return bounds;
}

/// Runs body(p) for p = 0..n_parts-1, one OpenMP thread each (serially when n_parts is 1). The
/// first exception thrown by any part is rethrown here, after every thread has finished.
template <class Body>
void run_parts(Index n_parts, Body&& body) {
  if (n_parts <= 1) {
    if (n_parts == 1) body(Index{0});
    return;
  }
  std::exception_ptr error;
#pragma omp parallel for num_threads(static_cast<int>(n_parts)) schedule(static, 1)
  for (Index p = 0; p < n_parts; ++p) {
    try {
      body(p);
    } catch (...) {
#pragma omp critical(tinylora_run_parts)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace tinylora::parallel
