// tinylora/linalg/svd_exact.hpp: the exact truncated SVD, Eigen's BDCSVD of the whole matrix in
// double, truncated: the reference the other two methods are measured against.
#pragma once

#include "tinylora/core/eigen.hpp"
#include <Eigen/SVD>

#include "tinylora/linalg/svd_common.hpp"

namespace tinylora::linalg {

namespace detail {

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

}  // namespace detail

/// The exact rank-r truncated SVD: Eigen's BDCSVD of W in double (thin U and V), truncated to r,
/// rounded to float, signs fixed. Double costs ~1.4x float at 576x576 and makes the exact path the
/// accurate reference (float BDCSVD: vectors off by ~1e-5 on near-degenerate spectra). Eigen runs on
/// the calling thread (same bits on any thread count; also faster on the 2-core test machine).
inline TruncatedSvd svd_exact(ConstMatrixView<float> W, Index r) {
  detail::check_svd_input("linalg::svd_exact()", W, r);
  return detail::svd_exact_unchecked(W, r);
}

}  // namespace tinylora::linalg
