// tinylora/model/batch.hpp: what a decoder consumes and returns besides tensors: sequences packed
// back to back (PackedBatch), a masked loss kept as sum and count (LossResult), and the rows of a
// packed batch where logits are read (supervised_targets, last_rows).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "tinylora/core/error.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::model {

/// Sequences packed back to back: sequence s owns tokens [offsets[s], offsets[s+1]).
struct PackedBatch {
  std::vector<std::int32_t> ids;        // (n)
  std::vector<std::int32_t> positions;  // (n) position within its sequence
  std::vector<Index> offsets{0};        // (n_seq + 1)

  Index n_tokens() const { return static_cast<Index>(ids.size()); }
  Index n_seq() const { return static_cast<Index>(offsets.size()) - 1; }
  void add(std::span<std::int32_t const> seq) {
    for (std::size_t i = 0; i < seq.size(); ++i) {
      ids.push_back(seq[i]);
      positions.push_back(static_cast<std::int32_t>(i));
    }
    offsets.push_back(n_tokens());
  }
  /// Sequences [s0, s1) as a batch of their own.
  PackedBatch slice(Index s0, Index s1) const {
    PackedBatch out;
    auto const t0 = static_cast<std::size_t>(offsets[static_cast<std::size_t>(s0)]);
    auto const t1 = static_cast<std::size_t>(offsets[static_cast<std::size_t>(s1)]);
    out.ids.assign(ids.begin() + static_cast<std::ptrdiff_t>(t0), ids.begin() + static_cast<std::ptrdiff_t>(t1));
    out.positions.assign(positions.begin() + static_cast<std::ptrdiff_t>(t0), positions.begin() + static_cast<std::ptrdiff_t>(t1));
    for (Index s = s0 + 1; s <= s1; ++s) out.offsets.push_back(offsets[static_cast<std::size_t>(s)] - static_cast<Index>(t0));
    return out;
  }
};

/// Masked token-mean cross-entropy: sum and count kept apart so batches can be combined.
struct LossResult {
  double sum_nll = 0;
  Index n_tokens = 0;
  double mean() const { return n_tokens > 0 ? sum_nll / static_cast<double>(n_tokens) : 0.0; }
};

/// The rows whose logits predict a supervised token (t - 1 for every supervised t > 0 of a
/// sequence) and those tokens.   returns (rows, targets), both (m)
inline std::pair<std::vector<Index>, std::vector<std::int32_t>> supervised_targets(PackedBatch const& batch,
                                                                                  std::span<std::uint8_t const> supervised,
                                                                                  char const* who) {
  TINYLORA_CHECK(static_cast<Index>(supervised.size()) == batch.n_tokens(), who, ": mask has ", supervised.size(),
                 " entries for ", batch.n_tokens(), " tokens");
  std::vector<Index> rows;
  std::vector<std::int32_t> targets;
  for (Index s = 0; s < batch.n_seq(); ++s)
    for (Index t = batch.offsets[s] + 1; t < batch.offsets[s + 1]; ++t)
      if (supervised[static_cast<std::size_t>(t)]) {
        rows.push_back(t - 1);
        targets.push_back(batch.ids[static_cast<std::size_t>(t)]);
      }
  return {std::move(rows), std::move(targets)};
}

/// The last token's row of every sequence (where the next token's logits are read).   returns (n_seq)
inline std::vector<Index> last_rows(PackedBatch const& batch) {
  std::vector<Index> rows;
  for (Index s = 0; s < batch.n_seq(); ++s) rows.push_back(batch.offsets[s + 1] - 1);
  return rows;
}

}  // namespace tinylora::model
