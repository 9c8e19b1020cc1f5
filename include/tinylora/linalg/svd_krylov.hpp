// tinylora/linalg/svd_krylov.hpp: the block Krylov truncated SVD (block Lanczos on W^T W with
// Rayleigh-Ritz, converged to a residual tolerance), all in double on the calling thread; the
// fused pass C = W V, Z = W^T C (normal_product) has its plain twin normal_product_reference.
#pragma once

#include "tinylora/core/eigen.hpp"
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tinylora/core/dot.hpp"
#include "tinylora/core/rng.hpp"
#include "tinylora/linalg/svd_common.hpp"
#include "tinylora/linalg/svd_exact.hpp"  // the fallback when fewer than r singular values are positive

namespace tinylora::linalg {

namespace detail {

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

}  // namespace tinylora::linalg
