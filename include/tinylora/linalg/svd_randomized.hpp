// tinylora/linalg/svd_randomized.hpp: the randomized truncated SVD (Halko, Martinsson & Tropp
// 2011, Alg. 4.4 + 5.1): a Gaussian sketch, power iterations, thin QR in double, a small SVD. The
// sketch products run on fixed blocks of W, so the bits never depend on the thread count; their
// plain twins (the *_reference functions, double loops) are what the tests compare them with.
#pragma once

#include "tinylora/core/eigen.hpp"
#include <Eigen/SVD>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tinylora/core/rng.hpp"
#include "tinylora/linalg/svd_common.hpp"

namespace tinylora::linalg {

namespace detail {

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

}  // namespace detail

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

}  // namespace tinylora::linalg
