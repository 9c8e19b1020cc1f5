// tinylora/model/kv_cache.hpp: keys (after RoPE) and values of every layer for incremental decoding,
// in the backend's memory. Slot s holds one sequence's rows [s capacity, s capacity + length[s]);
// the lengths stay on the host, which schedules the decode steps.
#pragma once

#include <vector>

#include "tinylora/core/tensor.hpp"

namespace tinylora::model {

template <class B>
struct KvCache {
  using Matrix = typename B::Matrix;
  Index capacity = 0;
  std::vector<Matrix> k, v;    // per layer: (n_slots capacity, H_kv hd)
  std::vector<Index> length;   // (n_slots)

  KvCache(int n_layers, Index n_slots, Index capacity_, Index kv_dim)
      : capacity(capacity_), length(static_cast<std::size_t>(n_slots), 0) {
    for (int l = 0; l < n_layers; ++l) {
      k.push_back(B::matrix(n_slots * capacity, kv_dim));
      v.push_back(B::matrix(n_slots * capacity, kv_dim));
    }
  }
  Index n_slots() const { return static_cast<Index>(length.size()); }
  /// Slot `to` becomes a copy of slot `from` (a shared prompt prefix encoded once).
  void copy_slot(Index from, Index to) {
    Index const n = length[static_cast<std::size_t>(from)];
    for (std::size_t l = 0; l < k.size(); ++l)
      for (Matrix* m : {&k[l], &v[l]}) B::copy(view_of(*m).row_block(from * capacity, n), view_of(*m).row_block(to * capacity, n));
    length[static_cast<std::size_t>(to)] = n;
  }
};

}  // namespace tinylora::model
