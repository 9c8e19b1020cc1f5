// tinylora/linalg/svd.hpp: truncated SVD W ~ U diag(S) V^T of a frozen weight: exact (Eigen's
// BDCSVD), block Krylov (converged to a residual tolerance, ~30x faster than exact at r = 2 on
// SmolLM2's weights) or randomized (Halko-Martinsson-Tropp range finder with power iterations), with
// one sign convention, so that the frozen factors of TinyLoRA / LoRA-XS are the same bits on any
// thread count.
#pragma once

#include "tinylora/core/eigen.hpp"
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "tinylora/config.hpp"
#include "tinylora/core/dot.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/core/rng.hpp"
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

/// Y = W X with W (d_out, d_in) and X (d_in, l): Y (d_out, l).
/// Equivalent to (sketch_product_reference): Y(i, j) = sum_k W(i, k) X(k, j).
/// Rows of Y go in fixed blocks of kSketchBlock, one Eigen matrix-vector product per column of X
/// (Eigen never threads those); OpenMP shares the blocks among threads.
inline Eigen::MatrixXf sketch_product(ConstMap const& W, Eigen::MatrixXf const& X) {
  Index const d_out = W.rows(), l = X.cols();
  Eigen::MatrixXf Y(d_out, l);  // (d_out, l)
  Index const n_blocks = (d_out + kSketchBlock - 1) / kSketchBlock;
  [[maybe_unused]] bool const parallel = fork_worthwhile(W.size() * l);
#pragma omp parallel for schedule(static) if (parallel)
  for (Index b = 0; b < n_blocks; ++b) {
    Index const first = b * kSketchBlock, count = std::min(kSketchBlock, d_out - first);
    for (Index j = 0; j < l; ++j) Y.col(j).segment(first, count).noalias() = W.middleRows(first, count) * X.col(j);
  }
  return Y;
}

/// One register tile of Z = W^T X: z[b * ldz + t] = sum_i x[b * ldx + i] * w[i * ldw + t] for
/// b < kJ sketch columns and t < kWidth columns of W, summed over i = 0 .. rows-1 in order.
template <int kJ, int kWidth>
inline void transposed_tile(float const* w, Index ldw, Index rows, float const* x, Index ldx, float* z, Index ldz) {
  float acc[kJ][kWidth] = {};
  for (Index i = 0; i < rows; ++i) {
    float const* wi = w + i * ldw;
    for (int b = 0; b < kJ; ++b) {
      float const xb = x[b * ldx + i];
      for (int t = 0; t < kWidth; ++t) acc[b][t] += xb * wi[t];
    }
  }
  for (int b = 0; b < kJ; ++b)
    for (int t = 0; t < kWidth; ++t) z[b * ldz + t] = acc[b][t];
}

/// Tiles of kJ sketch columns over the W columns [first, first + count): 32 wide, then 8, then 1.
template <int kJ>
inline void transposed_tiles(ConstMap const& W, Index first, Index count, float const* x, Index ldx, float* z,
                             Index ldz) {
  Index c = first, end = first + count;
  for (; c + 32 <= end; c += 32) transposed_tile<kJ, 32>(W.data() + c, W.outerStride(), W.rows(), x, ldx, z + c, ldz);
  for (; c + 8 <= end; c += 8) transposed_tile<kJ, 8>(W.data() + c, W.outerStride(), W.rows(), x, ldx, z + c, ldz);
  for (; c < end; ++c) transposed_tile<kJ, 1>(W.data() + c, W.outerStride(), W.rows(), x, ldx, z + c, ldz);
}

/// Z = W^T X with W (d_out, d_in) and X (d_out, l): Z (d_in, l).
/// Equivalent to (sketch_product_transposed_reference): Z(k, j) = sum_i W(i, k) X(i, j).
/// Row-major W makes this a sum over rows: each block of kSketchBlock columns of W is one task,
/// in register tiles (transposed_tile) of up to 3 sketch columns; every element is one running
/// sum over i in order (about 1.5x Eigen's matrix-vector product here).
inline Eigen::MatrixXf sketch_product_transposed(ConstMap const& W, Eigen::MatrixXf const& X) {
  Index const d_out = W.rows(), d_in = W.cols(), l = X.cols();
  Eigen::MatrixXf Z(d_in, l);  // (d_in, l)
  Index const n_blocks = (d_in + kSketchBlock - 1) / kSketchBlock;
  [[maybe_unused]] bool const parallel = fork_worthwhile(W.size() * l);
#pragma omp parallel for schedule(static) if (parallel)
  for (Index b = 0; b < n_blocks; ++b) {
    Index const first = b * kSketchBlock, count = std::min(kSketchBlock, d_in - first);
    Index j = 0;
    for (; j + 3 <= l; j += 3)
      transposed_tiles<3>(W, first, count, X.data() + j * d_out, d_out, Z.data() + j * d_in, d_in);
    for (; j < l; ++j) transposed_tiles<1>(W, first, count, X.data() + j * d_out, d_out, Z.data() + j * d_in, d_in);
  }
  return Z;
}

/// Plain loops in double for the tests: Y = W X.
inline Eigen::MatrixXd sketch_product_reference(ConstMatrixView<float> W, Eigen::MatrixXf const& X) {
  Eigen::MatrixXd Y = Eigen::MatrixXd::Zero(W.rows, X.cols());  // (d_out, l)
  for (Index i = 0; i < W.rows; ++i)
    for (Index j = 0; j < X.cols(); ++j)
      for (Index k = 0; k < W.cols; ++k) Y(i, j) += double{W(i, k)} * double{X(k, j)};
  return Y;
}

/// Plain loops in double for the tests: Z = W^T X.
inline Eigen::MatrixXd sketch_product_transposed_reference(ConstMatrixView<float> W, Eigen::MatrixXf const& X) {
  Eigen::MatrixXd Z = Eigen::MatrixXd::Zero(W.cols, X.cols());  // (d_in, l)
  for (Index k = 0; k < W.cols; ++k)
    for (Index j = 0; j < X.cols(); ++j)
      for (Index i = 0; i < W.rows; ++i) Z(k, j) += double{W(i, k)} * double{X(i, j)};
  return Z;
}

/// The Gaussian test matrix Omega (d_in, l): Omega(k, j) = normal(j * d_in + k) of
/// CounterRng(seed, streams::of(kSketch, 0)); a larger oversample keeps the first columns.
inline Eigen::MatrixXf gaussian_sketch(Index d_in, Index l, std::uint64_t seed) {
  CounterRng const rng(seed, streams::of(streams::kSketch, 0));
  Eigen::MatrixXf omega(d_in, l);                                         // (d_in, l)
  [[maybe_unused]] bool const parallel = fork_worthwhile(d_in * l * 32);  // a normal costs ~30 multiply-adds
#pragma omp parallel for schedule(static) if (parallel)
  for (Index j = 0; j < l; ++j)
    for (Index k = 0; k < d_in; ++k) omega(k, j) = rng.normal(static_cast<std::uint64_t>(j * d_in + k));
  return omega;
}

/// gaussian_sketch with the last result kept per thread: the modules of a model share one seed
/// and a few d_in, and drawing Omega costs ~10% of a randomized SVD at SmolLM2 sizes.
inline Eigen::MatrixXf const& cached_gaussian_sketch(Index d_in, Index l, std::uint64_t seed) {
  struct Entry {
    Index d_in = -1, l = -1;
    std::uint64_t seed = 0;
    Eigen::MatrixXf omega;  // (d_in, l)
  };
  thread_local Entry last;
  if (last.d_in != d_in || last.l != l || last.seed != seed) {
    last.omega = gaussian_sketch(d_in, l, seed);
    last.d_in = d_in;
    last.l = l;
    last.seed = seed;
  }
  return last.omega;
}

/// A thin QR factorization A = Q R with Q (rows, l) orthonormal and R (l, l) upper triangular.
struct ThinQr {
  Eigen::MatrixXd Q;  // (rows, l)
  Eigen::MatrixXd R;  // (l, l)
};

/// Householder QR of A (rows, l), rows >= l, in double with plain column operations (no threads,
/// so the same bits on any thread count). Q has orthonormal columns even when A is rank-deficient.
///   for k: v_k = x - alpha e_1 with x = A(k:, k), alpha = -sign(x_0) |x|; H_k = I - beta_k v_k v_k^T
///   R = H_{l-1} ... H_0 A,  Q = H_0 ... H_{l-1} [I; 0]
inline ThinQr thin_qr(Eigen::MatrixXd A) {
  Index const rows = A.rows(), l = A.cols();
  Eigen::VectorXd beta = Eigen::VectorXd::Zero(l);  // (l)
  ThinQr out{Eigen::MatrixXd::Zero(rows, l), Eigen::MatrixXd::Zero(l, l)};
  for (Index k = 0; k < l; ++k) {
    auto v = A.col(k).tail(rows - k);  // becomes v_k
    double const norm = v.norm();
    double const alpha = v(0) > 0.0 ? -norm : norm;
    out.R(k, k) = alpha;
    if (norm == 0.0) {  // H_k = I: row k of A is already row k of R
      for (Index c = k + 1; c < l; ++c) out.R(k, c) = A(k, c);
      continue;
    }
    v(0) -= alpha;
    beta(k) = 2.0 / v.squaredNorm();
    for (Index c = k + 1; c < l; ++c) {
      auto col = A.col(c).tail(rows - k);
      double const s = beta(k) * v.dot(col);
      col -= s * v;
      out.R(k, c) = col(0);
    }
  }
  for (Index k = 0; k < l; ++k) out.Q(k, k) = 1.0;
  for (Index k = l - 1; k >= 0; --k) {
    if (beta(k) == 0.0) continue;
    auto const v = A.col(k).tail(rows - k);
    for (Index c = k; c < l; ++c) {
      auto col = out.Q.col(c).tail(rows - k);
      double const s = beta(k) * v.dot(col);
      col -= s * v;
    }
  }
  return out;
}

inline TruncatedSvd svd_exact_unchecked(ConstMatrixView<float> W, Index r) {
  SerialEigenScope const serial;
  Eigen::MatrixXd const Wd = map_of(W).cast<double>();  // (d_out, d_in)
  Eigen::BDCSVD<Eigen::MatrixXd> const svd(Wd, Eigen::ComputeThinU | Eigen::ComputeThinV);
  TruncatedSvd out;
  out.U = svd.matrixU().leftCols(r).cast<float>();
  out.S = svd.singularValues().head(r).cast<float>();
  out.V = svd.matrixV().leftCols(r).cast<float>();
  fix_signs(out);
  return out;
}

inline TruncatedSvd svd_randomized_unchecked(ConstMatrixView<float> W_view, Index r,
                                             RandomizedSvdOptions const& options) {
  ConstMap const W = map_of(W_view);  // (d_out, d_in)
  Index const d_out = W.rows(), d_in = W.cols();
  Index const l = std::min(r + options.oversample, std::min(d_out, d_in));

  // Range finder: Q spans (W W^T)^q W Omega, re-orthonormalized after every product.
  Eigen::MatrixXf const& omega = cached_gaussian_sketch(d_in, l, options.seed);  // (d_in, l)
  Eigen::MatrixXd Q = thin_qr(sketch_product(W, omega).cast<double>()).Q;        // (d_out, l)
  for (int it = 0; it < options.power_iterations; ++it) {
    Eigen::MatrixXd const Z = thin_qr(sketch_product_transposed(W, Q.cast<float>()).cast<double>()).Q;  // (d_in, l)
    Q = thin_qr(sketch_product(W, Z.cast<float>()).cast<double>()).Q;
  }

  // B = Q^T W (l, d_in), factored through B^T = Q2 R2 and R2 = Ur diag(s) Vr^T:
  //   B = R2^T Q2^T = Vr diag(s) (Q2 Ur)^T,  so  W ~ Q B = (Q Vr) diag(s) (Q2 Ur)^T.
  ThinQr const bt = thin_qr(sketch_product_transposed(W, Q.cast<float>()).cast<double>());  // Q2 (d_in, l), R2
  SerialEigenScope const serial;
  Eigen::JacobiSVD<Eigen::MatrixXd> const small(bt.R, Eigen::ComputeFullU | Eigen::ComputeFullV);
  TruncatedSvd out;
  out.U = Q.lazyProduct(small.matrixV().leftCols(r)).cast<float>();
  out.S = small.singularValues().head(r).cast<float>();
  out.V = bt.Q.lazyProduct(small.matrixU().leftCols(r)).cast<float>();
  fix_signs(out);
  return out;
}

/// Appends the columns of Z (rows, b), orthonormalized against the basis Q(:, 0 .. filled-1) and
/// among themselves, to Q as columns filled, filled + 1, ... (classical Gram-Schmidt, two passes per
/// column). A column left with less than kDependent of its norm lies in the span already (the Krylov
/// space is invariant); it is replaced by a Gaussian vector from rng at counter (*draws)++. Stops early
/// when the basis fills the whole space. Returns the new number of columns.
inline constexpr double kDependent = 1e-8;
/// After a Rayleigh-Ritz check that has not converged, the next one waits for s / kCheckSpacing more
/// basis vectors (at least one block): at most ~1/kCheckSpacing extra products, and O(log s) solves
/// (spacings 4, 8 and every block measured within the noise on SmolLM2's 210 matrices).
inline constexpr Index kCheckSpacing = 8;
inline Index append_orthonormal(Eigen::MatrixXd& Q, Index filled, Eigen::MatrixXd const& Z, CounterRng const& rng,
                                std::uint64_t* draws) {
  Index const rows = Q.rows();
  for (Index j = 0; j < Z.cols() && filled < rows; ++j) {
    Eigen::VectorXd z = Z.col(j);  // (rows)
    for (int attempt = 0;; ++attempt) {
      double const before = z.norm();
      for (int pass = 0; pass < 2; ++pass) z.noalias() -= Q.leftCols(filled) * (Q.leftCols(filled).transpose() * z);
      double const after = z.norm();
      if (before > 0.0 && after > kDependent * before) {
        Q.col(filled++) = z / after;
        break;
      }
      TINYLORA_CHECK(attempt < 8, "linalg::svd_krylov(): could not extend the Krylov basis past ", filled, " of ",
                     rows, " columns. Hint: this should not happen; please report the matrix.");
      for (Index k = 0; k < rows; ++k) z(k) = rng.normal((*draws)++);
    }
  }
  return filled;
}

/// Rows of W per tile of normal_product: each tile reads the block of V and Z once.
inline constexpr Index kNormalRows = 4;  // (the Z update below is written for exactly 4)
/// normal_product's block width limit; svd_krylov's blocks are r + block_extra wide.
inline constexpr Index kMaxNormalCols = 64;

/// C_blk = W V_blk (m, k) and Z_blk = W^T C_blk (n, k) in one pass over the rows w_i of W (m, n):
///   c_i = V_blk^T w_i  (row i of C_blk),   Z_blk = sum_i w_i c_i^T
/// Float entries are widened to double, so every product is exact and sums are in double. One pass
/// over W instead of two GEMMs, and no packing of W: Eigen's GEMM spent 40% of its time packing W for
/// these few-column (k = r + block_extra) products. Equivalent to normal_product_reference.
inline void normal_product(ConstMatrixView<float> W, Eigen::Ref<Eigen::MatrixXd const> const& V_blk,
                           Eigen::Ref<Eigen::MatrixXd> C_blk, Eigen::Ref<Eigen::MatrixXd> Z_blk) {
  Index const m = W.rows, n = W.cols, k = V_blk.cols();
  if (k > kMaxNormalCols) {  // wide blocks (large r) in chunks of columns
    for (Index j = 0; j < k; j += kMaxNormalCols) {
      Index const w = std::min(kMaxNormalCols, k - j);
      normal_product(W, V_blk.middleCols(j, w), C_blk.middleCols(j, w), Z_blk.middleCols(j, w));
    }
    return;
  }
  Z_blk.setZero();
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> X(kNormalRows, n);  // (rows, n) widened
  for (Index i = 0; i < m; i += kNormalRows) {
    Index const rows = std::min(kNormalRows, m - i);
    for (Index t = 0; t < rows; ++t)
      for (Index q = 0; q < n; ++q) X(t, q) = W.data[(i + t) * W.ld + q];
    if (rows < kNormalRows) X.bottomRows(kNormalRows - rows).setZero();  // zero rows add nothing to Z
    // c_{i+t} = V_blk^T x_t.
    // (Tiles of 4 rows x 1-2 columns sharing the loads of v measured 2x slower with GCC 12.)
    double c[kNormalRows][kMaxNormalCols] = {};
    for (Index j = 0; j < k; ++j)
      for (Index t = 0; t < rows; ++t) {
        c[t][j] = dot_lanes(X.row(t).data(), V_blk.col(j).data(), n);
        C_blk(i + t, j) = c[t][j];
      }
    // Z_blk += sum_t x_t c_t^T: one sweep over each column of Z_blk per tile.
    for (Index j = 0; j < k; ++j) {
      double* __restrict z = Z_blk.col(j).data();
      double const c0 = c[0][j], c1 = c[1][j], c2 = c[2][j], c3 = c[3][j];
      double const* __restrict x0 = X.row(0).data();
      double const* __restrict x1 = X.row(1).data();
      double const* __restrict x2 = X.row(2).data();
      double const* __restrict x3 = X.row(3).data();
      for (Index q = 0; q < n; ++q) z[q] += c0 * x0[q] + c1 * x1[q] + c2 * x2[q] + c3 * x3[q];
    }
  }
}

/// Plain loops for the tests: C = W V, Z = W^T C in double.
inline void normal_product_reference(ConstMatrixView<float> W, Eigen::MatrixXd const& V, Eigen::MatrixXd& C,
                                     Eigen::MatrixXd& Z) {
  C = Eigen::MatrixXd::Zero(W.rows, V.cols());  // (m, k)
  Z = Eigen::MatrixXd::Zero(W.cols, V.cols());  // (n, k)
  for (Index i = 0; i < W.rows; ++i)
    for (Index j = 0; j < V.cols(); ++j)
      for (Index q = 0; q < W.cols; ++q) C(i, j) += double{W(i, q)} * V(q, j);
  for (Index q = 0; q < W.cols; ++q)
    for (Index j = 0; j < V.cols(); ++j)
      for (Index i = 0; i < W.rows; ++i) Z(q, j) += double{W(i, q)} * C(i, j);
}

/// The rank-r SVD of W (m, n) in double by block Krylov iteration with Rayleigh-Ritz; see svd_krylov.
/// Returns false (and leaves out untouched) when fewer than r singular values are positive.
inline bool krylov_top(ConstMatrixView<float> W, Index r, KrylovSvdOptions const& options, Eigen::MatrixXd& U_out,
                       Eigen::VectorXd& S_out, Eigen::MatrixXd& V_out) {
  Index const m = W.rows, n = W.cols;
  Index const b = std::min(r + options.block_extra, n);
  CounterRng const rng(options.seed, streams::of(streams::kSketch, 1));
  std::uint64_t draws = 0;
  Index capacity = std::min(n, 16 * b);
  Eigen::MatrixXd V(n, capacity);  // (n, s): orthonormal basis of the block Krylov space of A^T A
  Eigen::MatrixXd C(m, capacity);  // (m, s): A V
  Eigen::MatrixXd Z(n, capacity);  // (n, s): A^T A V
  Eigen::MatrixXd G(capacity, capacity);  // (s, s): C^T C = V^T A^T A V

  Eigen::MatrixXd start(n, b);  // (n, b): Gaussian start block
  for (Index j = 0; j < b; ++j)
    for (Index k = 0; k < n; ++k) start(k, j) = rng.normal(draws++);
  Index s = 0, filled = append_orthonormal(V, 0, start, rng, &draws);
  Index first = 0;
  // The projected eigenproblem costs O(s^3): solve it at s >= check_at only, spaced by s / kCheckSpacing.
  Index check_at = std::min(n, 4 * b);
  auto grow_and_append = [&] {
    if (s + b > capacity && capacity < n) {  // grow the basis storage
      capacity = std::min(n, 2 * capacity + b);
      V.conservativeResize(Eigen::NoChange, capacity);
      C.conservativeResize(Eigen::NoChange, capacity);
      Z.conservativeResize(Eigen::NoChange, capacity);
      G.conservativeResize(capacity, capacity);
    }
    filled = append_orthonormal(V, s, Z.middleCols(first, s - first), rng, &draws);
  };
  for (;;) {
    // Extend: the products of the new block, and the new rows / columns of the Gram matrix.
    first = s;
    s = filled;
    normal_product(W, V.middleCols(first, s - first), C.middleCols(first, s - first), Z.middleCols(first, s - first));
    G.block(0, first, s, s - first).noalias() = C.leftCols(s).transpose() * C.middleCols(first, s - first);
    G.block(first, 0, s - first, first) = G.block(0, first, first, s - first).transpose();

    if (s < check_at && s < n) {  // not yet: extend without solving the projected problem
      grow_and_append();
      continue;
    }
    // Rayleigh-Ritz: V^T A^T A V = Q diag(lambda) Q^T; Ritz triplets sigma_i = sqrt(lambda_i),
    // v_i = V q_i, u_i = A v_i / sigma_i; residual ||A^T u_i - sigma_i v_i|| = ||Z q_i - lambda_i V q_i|| / sigma_i.
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> const eig(G.topLeftCorner(s, s));  // ascending
    Index const top = std::min(r, s);
    double const sigma_1 = std::sqrt(std::max(eig.eigenvalues()(s - 1), 0.0));
    bool converged = s >= r;
    for (Index i = 0; i < top && converged; ++i) {
      double const lambda = eig.eigenvalues()(s - 1 - i);
      if (lambda <= 0.0) return false;
      Eigen::VectorXd const q = eig.eigenvectors().col(s - 1 - i);  // (s)
      double const residual = (Z.leftCols(s) * q - lambda * (V.leftCols(s) * q)).norm() / std::sqrt(lambda);
      converged = residual <= options.tolerance * sigma_1;
    }
    if (converged || s == n) {
      if (s < r || eig.eigenvalues()(s - r) <= 0.0) return false;
      U_out.resize(m, r);
      V_out.resize(n, r);
      S_out.resize(r);
      for (Index i = 0; i < r; ++i) {
        Eigen::VectorXd const q = eig.eigenvectors().col(s - 1 - i);  // (s)
        S_out(i) = std::sqrt(eig.eigenvalues()(s - 1 - i));
        V_out.col(i).noalias() = V.leftCols(s) * q;
        U_out.col(i).noalias() = C.leftCols(s) * q / S_out(i);
      }
      return true;
    }
    check_at = s + std::max(b, s / kCheckSpacing);
    grow_and_append();
  }
}

inline TruncatedSvd svd_krylov_unchecked(ConstMatrixView<float> W, Index r, KrylovSvdOptions const& options) {
  SerialEigenScope const serial;
  Eigen::MatrixXd U, V;  // (d_out, r), (d_in, r)
  Eigen::VectorXd S;     // (r)
  if (!krylov_top(W, r, options, U, S, V)) {  // rank < r: the exact SVD fills in orthonormal null vectors
    return svd_exact_unchecked(W, r);
  }
  TruncatedSvd out;
  out.U = U.cast<float>();
  out.S = S.cast<float>();
  out.V = V.cast<float>();
  fix_signs(out);
  return out;
}

}  // namespace detail

/// The exact rank-r truncated SVD: Eigen's BDCSVD of W in double (thin U and V), truncated to r,
/// rounded to float, signs fixed. Double costs ~1.4x float at 576x576 and makes the exact path the
/// accurate reference (float BDCSVD: vectors off by ~1e-5 on near-degenerate spectra). Eigen runs on
/// the calling thread (same bits on any thread count; also faster on the 2-core test machine).
inline TruncatedSvd svd_exact(ConstMatrixView<float> W, Index r) {
  detail::check_svd_input("linalg::svd_exact()", W, r);
  return detail::svd_exact_unchecked(W, r);
}

/// The randomized rank-r truncated SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1):
///   Omega (d_in, l), l = min(r + oversample, d_out, d_in), Gaussian from (seed, kSketch stream)
///   Q = qr(W Omega); q times: Q = qr(W qr(W^T Q))
///   B = Q^T W (l, d_in); B = Ub diag(s) Vb^T exactly; U = Q Ub, V = Vb, truncated to r
/// Products in float on fixed blocks of W (W X: Eigen matrix-vector products; W^T X: register
/// tiles), shared among OpenMP threads when large; QR (Householder) and the small SVD (Jacobi) in
/// double. The output bits are a function of (W, r, options) only, never of the thread count.
/// Cost: 2q + 2 passes over W, 2 (r + p) flops per entry each; at 1536x576, r + p = 10, q = 2 that is
/// 106 MFLOP, ~3.5 ms on one Zen 3 core.
inline TruncatedSvd svd_randomized(ConstMatrixView<float> W, Index r, RandomizedSvdOptions const& options = {}) {
  detail::check_svd_input("linalg::svd_randomized()", W, r);
  detail::check_options("linalg::svd_randomized()", options);
  return detail::svd_randomized_unchecked(W, r, options);
}

/// The block Krylov rank-r truncated SVD, converged to a residual tolerance:
///   V_1 = orth(Omega), Omega (d_in, b) Gaussian from (seed, kSketch stream 1), b = r + block_extra;
///   for j = 1, 2, ...: C_j = W V_j, Z_j = W^T C_j (normal_product: one pass over W's rows), and
///   V_{j+1} = orth(Z_j against V_1 .. V_j)
///   Rayleigh-Ritz on V = [V_1 .. V_j]: V^T W^T W V = Q diag(lambda) Q^T, sigma_i = sqrt(lambda_i),
///   v_i = V q_i, u_i = W v_i / sigma_i, until ||W^T u_i - sigma_i v_i|| <= tolerance sigma_1 for i < r.
/// All in double on the calling thread (the same bits on any thread count). The Krylov space grows
/// like Lanczos (error ~ exp(-2 j sqrt(gap))) where power iterations only shrink (sigma_{l+1}/sigma_i)^2j,
/// so close top singular values converge in tens of products. Clusters of up to b values are found
/// (a block, not a single vector). If the basis fills the whole space it is exact; if fewer than r
/// singular values are positive, the exact SVD is returned (it picks orthonormal null vectors).
inline TruncatedSvd svd_krylov(ConstMatrixView<float> W, Index r, KrylovSvdOptions const& options = {}) {
  detail::check_svd_input("linalg::svd_krylov()", W, r);
  detail::check_options("linalg::svd_krylov()", options);
  return detail::svd_krylov_unchecked(W, r, options);
}

/// The method Automatic picks for a (d_out, d_in) matrix.
inline SvdMethod resolve_method(Index d_out, Index d_in, SvdMethod method = SvdMethod::Automatic) {
  if (method != SvdMethod::Automatic) return method;
  return std::min(d_out, d_in) <= kAutomaticExactMaxDim ? SvdMethod::Exact : SvdMethod::Krylov;
}

namespace detail {
/// The resolved method on checked inputs. Krylov takes its seed from options.seed.
inline TruncatedSvd svd_dispatch(ConstMatrixView<float> W, Index r, SvdMethod method,
                                 RandomizedSvdOptions const& options) {
  switch (resolve_method(W.rows, W.cols, method)) {
    case SvdMethod::Exact: return svd_exact_unchecked(W, r);
    case SvdMethod::Krylov: return svd_krylov_unchecked(W, r, KrylovSvdOptions{.seed = options.seed});
    default: return svd_randomized_unchecked(W, r, options);
  }
}
}  // namespace detail

/// The rank-r truncated SVD by the chosen method (options apply to Randomized, and their seed to
/// Krylov).
inline TruncatedSvd svd_truncated(ConstMatrixView<float> W, Index r, SvdMethod method = SvdMethod::Automatic,
                                  RandomizedSvdOptions const& options = {}) {
  detail::check_svd_input("linalg::svd_truncated()", W, r);
  detail::check_options("linalg::svd_truncated()", options);
  return detail::svd_dispatch(W, r, method, options);
}

/// The truncated SVDs of several matrices, one matrix per OpenMP thread at a time (dynamic
/// schedule); out[i] is bit-identical to svd_truncated(Ws[i], r, method, options). On few or busy
/// cores this beats forking inside each SVD: one parallel region in all, and no thread waits for
/// another between products. All inputs are checked before any work starts.
inline std::vector<TruncatedSvd> svd_truncated_batch(std::span<ConstMatrixView<float> const> Ws, Index r,
                                                     SvdMethod method = SvdMethod::Automatic,
                                                     RandomizedSvdOptions const& options = {}) {
  detail::check_options("linalg::svd_truncated_batch()", options);
  for (std::size_t i = 0; i < Ws.size(); ++i) {
    std::string const where = "linalg::svd_truncated_batch() (matrix " + std::to_string(i) + ")";
    detail::check_svd_input(where.c_str(), Ws[i], r);
  }
  std::vector<TruncatedSvd> out(Ws.size());
  std::exception_ptr error;
  Index const n = static_cast<Index>(Ws.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (Index i = 0; i < n; ++i) {
    try {
      ConstMatrixView<float> const W = Ws[static_cast<std::size_t>(i)];
      out[static_cast<std::size_t>(i)] = detail::svd_dispatch(W, r, method, options);
    } catch (...) {
#pragma omp critical(tinylora_svd_batch_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

}  // namespace tinylora::linalg
