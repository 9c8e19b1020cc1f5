// tinylora/linalg/svd_common.hpp: what the three truncated SVDs of linalg/ share: the result
// (TruncatedSvd) and its sign convention, the methods and their options, input checks, and the
// thread rules that keep every factor the same bits on any thread count.
#pragma once

#include "tinylora/core/eigen.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tinylora/config.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/core/tensor.hpp"

#if TINYLORA_HAS_OPENMP
#include <omp.h>
#endif

namespace tinylora::linalg {

/// The rank-r truncated SVD of W (d_out, d_in): W ~ U diag(S) V^T.
/// Columns of U and V are orthonormal, S is non-negative and descending, and every pair (u_i, v_i)
/// follows the sign convention of fix_signs.
struct TruncatedSvd {
  HostMatrix U;       // (d_out, r)
  Eigen::VectorXf S;  // (r), descending
  HostMatrix V;       // (d_in, r)

  Index rank() const { return S.size(); }
};

/// How svd_truncated factorizes.
enum class SvdMethod {
  Exact,       // Eigen's BDCSVD of the whole matrix in double, then truncated
  Randomized,  // Halko-Martinsson-Tropp sketch of width r + oversample, power iterations
  Krylov,      // block Krylov subspace of W^T W + Rayleigh-Ritz in double, run until the residuals converge
  Automatic,   // Exact up to kAutomaticExactMaxDim (min(d_out, d_in)), Krylov above kAutomaticKrylovMinDim
};

/// Options of the block Krylov SVD (svd_krylov).
struct KrylovSvdOptions {
  Index block_extra = 0;     // b - r: the block holds b = r + block_extra vectors; b = r already finds r
                             // vectors of a tied top cluster, and each extra vector costs ~25% more time
  double tolerance = 1e-9;   // stop when ||W^T u_i - s_i v_i|| <= tolerance * s_1 for every i < r
  std::uint64_t seed = 0;    // the start block comes from CounterRng(seed, streams::of(streams::kSketch, 1))
};

/// Options of the randomized SVD. With the defaults (sketch width r + 8, two power iterations), on
/// decaying spectra the singular values match the exact ones to ~1e-6 sigma_1 and the vectors to
/// within the power-iteration bound (1e-5 .. 3e-3, tests). On flat spectra (Gaussian matrices) the
/// top-2 values come out 5-10% low (bench): pick Exact where the factors must match a reference.
struct RandomizedSvdOptions {
  Index oversample = 8;      // p: extra sketch columns beyond r
  int power_iterations = 2;  // q: passes of (W W^T) applied to the sketch
  std::uint64_t seed = 0;    // Omega comes from CounterRng(seed, streams::of(streams::kSketch, 0))
};

/// Automatic uses the exact SVD up to this min(d_out, d_in), and the block Krylov SVD above.
/// Exact (single-threaded double BDCSVD) at r = 2 takes 0.4 ms at 32x32, 2 ms at 64, 7-14 ms at 128,
/// 35-45 ms at 256 and 0.4 s at 576 (bench/svd_timing.cpp --sweep): it grows as n^3.
///
/// History: randomized (q = 2) was the default above 64 until measurements on SmolLM2-135M's
/// projections, whose top two singular values are often close (10.15 vs 10.03 in layer 29's v_proj):
/// it gave singular values up to 9% off and vectors up to 0.7 off, so exact became the default up to
/// 1024 (210 matrices: 18-25 s on 2 threads). Block Krylov runs until the residuals of the top r
/// triplets are below 1e-9 sigma_1. On those 210 matrices (bench/svd_real) its singular values are
/// the exact ones in float and its vectors are within 1.5e-8 of exact's (entries ~0.05: a few float
/// ulps; 1e-10 gives 7e-9 for ~7% more time), at 1/15 of the time; small matrices stay exact.
inline constexpr Index kAutomaticExactMaxDim = 64;

/// Flips each pair (u_i, v_i) so that the largest-|.| entry of u_i is positive (ties: the first
/// such index). U diag(S) V^T is unchanged. All SVD functions here apply it to their output.
inline void fix_signs(TruncatedSvd& svd) {
  for (Index i = 0; i < svd.U.cols(); ++i) {
    Index largest = 0;
    float largest_abs = -1.0f;
    for (Index k = 0; k < svd.U.rows(); ++k) {
      float const a = std::abs(svd.U(k, i));
      if (a > largest_abs) {
        largest_abs = a;
        largest = k;
      }
    }
    if (svd.U.rows() > 0 && svd.U(largest, i) < 0.0f) {
      svd.U.col(i) = -svd.U.col(i);
      if (i < svd.V.cols()) svd.V.col(i) = -svd.V.col(i);
    }
  }
}

/// U diag(S) V^T as a dense matrix.
inline HostMatrix reconstruct(TruncatedSvd const& svd) {
  HostMatrix out = svd.U * svd.S.asDiagonal() * svd.V.transpose();  // (d_out, d_in)
  return out;
}

namespace detail {

using ConstMap = Eigen::Map<HostMatrix const, 0, Eigen::OuterStride<>>;

inline ConstMap map_of(ConstMatrixView<float> W) {
  return ConstMap(W.data, W.rows, W.cols, Eigen::OuterStride<>(W.ld));
}

/// Within its scope, Eigen runs on the calling thread only: it sets this thread's OpenMP
/// nthreads ICV to 1 (other threads are untouched) and restores it. Eigen's threaded GEMM picks
/// its blocking from the thread count, so without this its bits could depend on OMP_NUM_THREADS.
/// (A program that calls Eigen::setNbThreads(n > 1) overrides the ICV and loses this guarantee.)
class SerialEigenScope {
 public:
  SerialEigenScope() {
#if TINYLORA_HAS_OPENMP
    saved_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
  }
  ~SerialEigenScope() {
#if TINYLORA_HAS_OPENMP
    omp_set_num_threads(saved_);
#endif
  }
  SerialEigenScope(SerialEigenScope const&) = delete;
  SerialEigenScope& operator=(SerialEigenScope const&) = delete;

 private:
  int saved_ = 1;
};

inline constexpr std::uint32_t kExponentBits = 0x7f800000u;

/// Throws unless W is a non-empty finite matrix and 1 <= r <= min(d_out, d_in).
inline void check_svd_input(char const* where, ConstMatrixView<float> W, Index r) {
  TINYLORA_CHECK(W.rows >= 1 && W.cols >= 1 && W.data != nullptr, where,
                 ": W is empty (expected a matrix with d_out >= 1 and d_in >= 1, got ", W.rows, "x", W.cols,
                 W.data == nullptr ? " with no data" : "", "). Hint: pass the view of a loaded weight.");
  TINYLORA_CHECK(W.ld >= W.cols, where, ": bad leading dimension (expected ld >= d_in = ", W.cols, ", got ld = ", W.ld,
                 "). Hint: ld counts the elements between the starts of two rows.");
  Index const max_rank = std::min(W.rows, W.cols);
  TINYLORA_CHECK(r >= 1 && r <= max_rank, where,
                 ": rank out of range (expected 1 <= r <= min(d_out, d_in) = ", max_rank, ", got r = ", r,
                 "). Hint: a ", W.rows, "x", W.cols, " matrix has ", max_rank, " singular triplets.");
  for (Index i = 0; i < W.rows; ++i) {
    float const* row = W.data + i * W.ld;
    // Inf and NaN are the floats whose exponent bits are all set; an unsigned max vectorizes.
    std::uint32_t exponent_max = 0;
    for (Index j = 0; j < W.cols; ++j)
      exponent_max = std::max(exponent_max, std::bit_cast<std::uint32_t>(row[j]) & kExponentBits);
    if (exponent_max != kExponentBits) continue;
    for (Index j = 0; j < W.cols; ++j)
      if (!std::isfinite(row[j]))
        fail(where, ": W has a non-finite entry (expected finite values, got ", row[j], " at (", i, ", ", j,
             ")). Hint: check the weights (and their dequantization) for NaN or Inf.");
  }
}

inline void check_options(char const* where, KrylovSvdOptions const& options) {
  TINYLORA_CHECK(options.block_extra >= 0, where, ": bad block_extra (expected >= 0, got ", options.block_extra,
                 "). Hint: 0 is the usual choice.");
  TINYLORA_CHECK(options.tolerance > 0.0 && options.tolerance < 1.0, where,
                 ": bad tolerance (expected 0 < tolerance < 1, got ", options.tolerance,
                 "). Hint: 1e-9 matches the exact SVD to float rounding.");
}

inline void check_options(char const* where, RandomizedSvdOptions const& options) {
  TINYLORA_CHECK(options.oversample >= 0, where, ": bad oversample (expected >= 0, got ", options.oversample,
                 "). Hint: 8 is the usual choice.");
  TINYLORA_CHECK(options.power_iterations >= 0, where, ": bad power_iterations (expected >= 0, got ",
                 options.power_iterations, "). Hint: 2 is the usual choice.");
}

/// Rows (of Y = W X) or columns (of W^T X) per task of the sketch products. Fixed, so that the
/// blocks, and hence every element's summation order, never depend on the thread count.
inline constexpr Index kSketchBlock = 32;
/// Products with fewer multiply-adds than this stay on the calling thread (no effect on bits):
/// ~0.4 ms of work. A fork/join costs microseconds on idle cores but milliseconds on busy ones: on
/// the shared 2-core test machine, forking SmolLM2-135M's MLP products (threshold 2^22) made the
/// 210-matrix pass 1.4-6.7 s instead of 0.7-0.9 s. Now SmolLM2 sizes (<= 8.8M) run serially
/// (parallelize over matrices with svd_truncated_batch); Qwen2-0.5B's MLP (44M) forks.
inline constexpr Index kMinParallelWork = Index{1} << 24;

/// Whether a product of `work` multiply-adds should fork threads: large enough, and not already
/// inside a parallel region (svd_truncated_batch runs one SVD per thread).
inline bool fork_worthwhile(Index work) {
#if TINYLORA_HAS_OPENMP
  return work >= kMinParallelWork && !omp_in_parallel();
#else
  (void)work;
  return false;
#endif
}

}  // namespace detail

}  // namespace tinylora::linalg
