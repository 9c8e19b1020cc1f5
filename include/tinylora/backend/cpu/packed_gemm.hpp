// tinylora/backend/cpu/packed_gemm.hpp: Y = X W^T for the few rows of a decode step, against a
// weight packed once into panels of 16 outputs.
//
// A decode step multiplies m = 1..64 rows by every weight of the model. A general GEMM (OpenBLAS)
// repacks the whole weight on every call, and that pass alone is a fifth of a batch-32 decode step
// on SmolLM2 (`sgemm_incopy`: it streams the 540 MB of fp32 weights from memory without computing
// anything). Packed once, a weight is read by the kernel below as one contiguous stream per panel
// while it computes, and the next panel is prefetched during the current one.
//
// Every output Y(i, j) is one fused multiply-add chain over k = 0 .. K-1 in order, whatever the
// number of rows, the tile a row falls in or the thread count: the vectorized kernel and the plain
// reference give the same bits, and a sequence's logits do not depend on what it is batched with.
#pragma once

#include <omp.h>

#include "tinylora/core/intrinsics.hpp"  // <immintrin.h>, with GCC 12's AVX-512 false positives scoped

#if defined(__AVX2__) && defined(__FMA__)
#define TINYLORA_PACKED_GEMM_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>

#include "tinylora/core/error.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::backend::cpu {

/// A weight W (n, K) (n outputs, K inputs, row-major) re-laid as panels of kPanel outputs:
/// panel p holds W(p kPanel + c, k) at [(p K + k) kPanel + c], with zeros past the last output.
/// Each k-row of a panel is one 64-byte cache line.
class PanelPackedWeight {
 public:
  static constexpr Index kPanel = 16;

  PanelPackedWeight() = default;
  /// Packs W.   W: (n, K)
  explicit PanelPackedWeight(ConstMatrixView<float> W) : n_(W.rows), k_(W.cols), panels_((W.rows + kPanel - 1) / kPanel) {
    std::size_t const bytes = static_cast<std::size_t>(panels_ * k_ * kPanel) * sizeof(float);
    data_.reset(static_cast<float*>(std::aligned_alloc(64, std::max<std::size_t>(bytes, 64))));
    TINYLORA_CHECK(data_ != nullptr, "PanelPackedWeight: could not allocate ", bytes, " bytes for a (", n_, ", ", k_,
                   ") weight. Hint: decoding packs every weight once; free memory or decode on a smaller model.");
    float* const out = data_.get();
#pragma omp parallel for schedule(static) if (n_ * k_ > (1 << 16) && !omp_in_parallel())
    for (Index p = 0; p < panels_; ++p)
      for (Index c = 0; c < kPanel; ++c) {
        Index const j = p * kPanel + c;
        for (Index k = 0; k < k_; ++k) out[(p * k_ + k) * kPanel + c] = j < n_ ? W(j, k) : 0.0f;
      }
  }

  Index rows() const { return n_; }      // n, the outputs
  Index cols() const { return k_; }      // K, the inputs
  Index panels() const { return panels_; }
  bool empty() const { return data_ == nullptr; }
  /// Panel p.   returns (K, kPanel)
  float const* panel(Index p) const { return data_.get() + p * k_ * kPanel; }
  /// W(j, k), read back from the panels.
  float operator()(Index j, Index k) const { return panel(j / kPanel)[k * kPanel + j % kPanel]; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  Index n_ = 0, k_ = 0, panels_ = 0;
  std::unique_ptr<float[], Free> data_;  // (panels, K, kPanel), 64-byte aligned
};

/// Y = X W^T, the plain loops: one fused multiply-add chain per output, k in order.
/// X: (m, K), W: packed (n, K), Y: (m, n)
inline void gemm_packed_reference(ConstMatrixView<float> X, PanelPackedWeight const& W, MatrixView<float> Y) {
  for (Index i = 0; i < X.rows; ++i)
    for (Index j = 0; j < W.rows(); ++j) {
      float acc = 0.0f;
      for (Index k = 0; k < X.cols; ++k) acc = std::fma(X(i, k), W(j, k), acc);
      Y(i, j) = acc;
    }
}

namespace detail {

inline constexpr Index kPackedTileRows = 6;  // rows per register tile: 6 x 16 accumulators = 12 of AVX2's 16 registers

/// Rows [0, R) of Y's columns [0, cols) of one panel: Y(r, c) = sum_k X(r, k) panel(k, c).
/// With Prefetch, the next panel's k-th line is requested at step k, so it is in L2 when its turn comes.
/// x: (R, K) stride ldx, panel: (K, 16), y: (R, cols) stride ldy
template <int R, bool Prefetch>
inline void packed_tile(float const* x, Index ldx, float const* panel, Index K, float* y, Index ldy, Index cols,
                        [[maybe_unused]] float const* next_panel) {
  constexpr Index P = PanelPackedWeight::kPanel;
#if defined(TINYLORA_PACKED_GEMM_AVX2)
  // Twelve named accumulators, not an array: GCC 12 keeps an array of __m256 in memory and stores
  // it after every FMA (half the speed); separate variables stay in registers.
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
  __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  for (Index k = 0; k < K; ++k) {
    if constexpr (Prefetch) _mm_prefetch(reinterpret_cast<char const*>(next_panel + k * P), _MM_HINT_T1);
    __m256 const w0 = _mm256_load_ps(panel + k * P), w1 = _mm256_load_ps(panel + k * P + 8);
    auto const step = [&](int r, __m256& lo, __m256& hi) {
      __m256 const xr = _mm256_broadcast_ss(x + r * ldx + k);
      lo = _mm256_fmadd_ps(xr, w0, lo);
      hi = _mm256_fmadd_ps(xr, w1, hi);
    };
    step(0, a00, a01);
    if constexpr (R > 1) step(1, a10, a11);
    if constexpr (R > 2) step(2, a20, a21);
    if constexpr (R > 3) step(3, a30, a31);
    if constexpr (R > 4) step(4, a40, a41);
    if constexpr (R > 5) step(5, a50, a51);
  }
  auto const put = [&](int r, __m256 lo, __m256 hi) {
    if (cols == P) {
      _mm256_storeu_ps(y + r * ldy, lo);
      _mm256_storeu_ps(y + r * ldy + 8, hi);
    } else {
      alignas(32) float row[P];
      _mm256_store_ps(row, lo);
      _mm256_store_ps(row + 8, hi);
      std::copy(row, row + cols, y + r * ldy);
    }
  };
  put(0, a00, a01);
  if constexpr (R > 1) put(1, a10, a11);
  if constexpr (R > 2) put(2, a20, a21);
  if constexpr (R > 3) put(3, a30, a31);
  if constexpr (R > 4) put(4, a40, a41);
  if constexpr (R > 5) put(5, a50, a51);
#else
  float acc[R][P] = {};
  for (Index k = 0; k < K; ++k)
    for (int r = 0; r < R; ++r)
      for (Index c = 0; c < P; ++c) acc[r][c] = std::fma(x[r * ldx + k], panel[k * P + c], acc[r][c]);
  for (int r = 0; r < R; ++r) std::copy(acc[r], acc[r] + cols, y + r * ldy);
#endif
}

template <bool Prefetch>
inline void packed_rows(Index rows, float const* x, Index ldx, float const* panel, Index K, float* y, Index ldy, Index cols,
                        float const* next_panel) {
  switch (rows) {
    case 1: return packed_tile<1, Prefetch>(x, ldx, panel, K, y, ldy, cols, next_panel);
    case 2: return packed_tile<2, Prefetch>(x, ldx, panel, K, y, ldy, cols, next_panel);
    case 3: return packed_tile<3, Prefetch>(x, ldx, panel, K, y, ldy, cols, next_panel);
    case 4: return packed_tile<4, Prefetch>(x, ldx, panel, K, y, ldy, cols, next_panel);
    case 5: return packed_tile<5, Prefetch>(x, ldx, panel, K, y, ldy, cols, next_panel);
    default: return packed_tile<6, Prefetch>(x, ldx, panel, K, y, ldy, cols, next_panel);
  }
}

}  // namespace detail

/// Y = X W^T with W packed: panels split between threads (static, so each thread streams one
/// contiguous range of the weight), row tiles of 6 within a panel; with more than one tile, the
/// next panel is prefetched during the first (one tile leaves nothing to overlap the fetch with).
/// Same bits as gemm_packed_reference() on any thread count.
/// X: (m, K), W: packed (n, K), Y: (m, n)
inline void gemm_packed(ConstMatrixView<float> X, PanelPackedWeight const& W, MatrixView<float> Y) {
  TINYLORA_CHECK(X.cols == W.cols() && Y.rows == X.rows && Y.cols == W.rows(), "gemm_packed(): shape mismatch (X is ",
                 X.rows, "x", X.cols, ", W is ", W.rows(), "x", W.cols(), ", Y is ", Y.rows, "x", Y.cols, ")");
  constexpr Index P = PanelPackedWeight::kPanel;
  Index const m = X.rows, K = X.cols, panels = W.panels();
  if (m == 0 || W.rows() == 0) return;
  bool const parallel = !omp_in_parallel() && omp_get_max_threads() > 1 && m * W.rows() * K > (1 << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (Index p = 0; p < panels; ++p) {
    Index const cols = std::min(P, W.rows() - p * P);
    float const* const next = W.panel(std::min(p + 1, panels - 1));
    for (Index i0 = 0; i0 < m; i0 += detail::kPackedTileRows) {
      Index const rows = std::min(detail::kPackedTileRows, m - i0);
      float const* const x = X.data + i0 * X.ld;
      float* const y = Y.data + i0 * Y.ld + p * P;
      if (i0 == 0 && m > detail::kPackedTileRows) detail::packed_rows<true>(rows, x, X.ld, W.panel(p), K, y, Y.ld, cols, next);
      else detail::packed_rows<false>(rows, x, X.ld, W.panel(p), K, y, Y.ld, cols, next);
    }
  }
}

}  // namespace tinylora::backend::cpu
