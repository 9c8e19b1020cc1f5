// tinylora/linalg/svd.hpp: truncated SVD W ~ U diag(S) V^T of a frozen weight: exact (Eigen's
// BDCSVD), block Krylov (converged to a residual tolerance, ~30x faster than exact at r = 2 on
// SmolLM2's weights) or randomized (Halko-Martinsson-Tropp range finder with power iterations), with
// one sign convention, so that the frozen factors of TinyLoRA / LoRA-XS are the same bits on any
// thread count.
// The methods live one per file (svd_exact.hpp, svd_krylov.hpp, svd_randomized.hpp, over
// svd_common.hpp); this header picks between them (svd_truncated) and runs many (svd_truncated_batch).
#pragma once

#include <exception>
#include <span>
#include <vector>

#include "tinylora/linalg/svd_common.hpp"
#include "tinylora/linalg/svd_exact.hpp"
#include "tinylora/linalg/svd_krylov.hpp"
#include "tinylora/linalg/svd_randomized.hpp"

namespace tinylora::linalg {

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
