// tinylora/backend/cpu/gemm.hpp: the CPU's products, C = alpha op(A) op(B) + beta C, and the
// element-wise add and fill of the Backend concept. The GEMM is OpenBLAS's sgemm (its OpenMP build,
// sharing our thread pool) when the build found it (TINYLORA_HAS_OPENBLAS), else Eigen's product: the
// plain version, kept as the reference. Products with a 16-bit operand widen that operand to float
// first, so every product accumulates in fp32 as the precision policies require. The BLAS's kernel is
// checked against this CPU on first use (backend/cpu/blas_kernel.hpp). backend::Cpu (cpu.hpp) takes
// these as its gemm, add and fill; the decoder's CPU kernels use them directly.
#pragma once

#include "tinylora/core/eigen.hpp"
#include <omp.h>

#if defined(TINYLORA_HAS_OPENBLAS)
#include <cblas.h>
#endif

#include <algorithm>
#include <string_view>
#include <type_traits>

#include "tinylora/backend/cpu/blas_kernel.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::backend::cpu {

struct Gemm {
#if defined(TINYLORA_HAS_OPENBLAS)
  static constexpr std::string_view gemm_library = "openblas-openmp";
#else
  static constexpr std::string_view gemm_library = "eigen";
#endif
  static constexpr Index kBlasMinSide = 8;  // smaller m or n: Eigen's product (or the loops below)
  static constexpr Index kThin = 8;  // fewer output columns (or rows, for A^T B): the loops below

  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstMap = Eigen::Map<RowMajor const, 0, Eigen::OuterStride<>>;
  using Map = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;

  static ConstMap eigen(ConstMatrixView<float> v) { return ConstMap(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld)); }
  static Map eigen(MatrixView<float> v) { return Map(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld)); }

  /// Widens a 16-bit view into a dense float matrix (fp32 accumulation downstream).
  template <class T>
  static RowMajor widen(ConstMatrixView<T> v) {
    RowMajor out(v.rows, v.cols);
    for (Index i = 0; i < v.rows; ++i)
      for (Index j = 0; j < v.cols; ++j) out(i, j) = static_cast<float>(v(i, j));
    return out;
  }

  /// C = alpha * op(A) op(B) + beta * C.
  /// Equivalent to: for i, j: C(i,j) = alpha * sum_k opA(i,k) opB(k,j) + beta * C(i,j).
  /// A and B are views of float, bf16 or fp16 (const or not).
  template <class TA, class TB>
  static void gemm(Op op_a, Op op_b, float alpha, MatrixView<TA> A, MatrixView<TB> B, float beta,
                   MatrixView<float> C) {
    Index const m = op_a == Op::N ? A.rows : A.cols;
    Index const k = op_a == Op::N ? A.cols : A.rows;
    Index const k2 = op_b == Op::N ? B.rows : B.cols;
    Index const n = op_b == Op::N ? B.cols : B.rows;
    TINYLORA_CHECK(k == k2 && C.rows == m && C.cols == n, "Cpu::gemm(): shape mismatch (op(A) is ", m, "x", k,
                   ", op(B) is ", k2, "x", n, ", C is ", C.rows, "x", C.cols, ")");
    using A_t = std::remove_const_t<TA>;
    using B_t = std::remove_const_t<TB>;
    ConstMatrixView<A_t> const a_view = A;
    ConstMatrixView<B_t> const b_view = B;
    if constexpr (std::is_same_v<A_t, float> && std::is_same_v<B_t, float>) {
      // The adapters' rank-r factors: general GEMM kernels pack a whole (n, d) operand to produce
      // r columns (Eigen: 10x slower than these loops for X R^T at n = 4000, r = 2).
      if (m > 0 && n > 0 && k > 0 && n < kThin && op_a == Op::N) return gemm_thin_columns(op_b, m, n, k, alpha, a_view, b_view, beta, C);
      if (m > 0 && n > 0 && k > 0 && m < kThin && op_a == Op::T && op_b == Op::N)
        return gemm_thin_rows(m, n, k, alpha, a_view, b_view, beta, C);
    }
#if defined(TINYLORA_HAS_OPENBLAS)
    // Products with only a few rows or columns (decoding one token, the adapters' rank-r factors)
    // stay with Eigen: OpenBLAS packs both operands even for one row and is 2-3x slower there.
    // blas_kernel(): on first use, checks that the BLAS runs a kernel for this CPU's instruction set
    // (and re-selects it when it fell back); use_blas is false only when that was impossible.
    static bool const use_blas = cpu::blas_kernel().use_blas;
    if (m >= kBlasMinSide && n >= kBlasMinSide && k > 0 && use_blas) {
      if constexpr (std::is_same_v<A_t, float> && std::is_same_v<B_t, float>) {
        sgemm(op_a, op_b, m, n, k, alpha, a_view.data, a_view.ld, b_view.data, b_view.ld, beta, C);
      } else {
        RowMajor widened_a, widened_b;
        float const* a = nullptr;
        float const* b = nullptr;
        Index lda = 0, ldb = 0;
        if constexpr (std::is_same_v<A_t, float>) a = a_view.data, lda = a_view.ld;
        else widened_a = widen(a_view), a = widened_a.data(), lda = widened_a.cols();
        if constexpr (std::is_same_v<B_t, float>) b = b_view.data, ldb = b_view.ld;
        else widened_b = widen(b_view), b = widened_b.data(), ldb = widened_b.cols();
        sgemm(op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, C);
      }
      return;
    }
#endif
    if constexpr (std::is_same_v<A_t, float> && std::is_same_v<B_t, float>) {
      // Matrix-vector-like (decoding one token): Eigen runs those on one thread; split the output
      // columns (the weight's rows) between threads so both cores stream the weight.
      int const threads = omp_in_parallel() ? 1 : omp_get_max_threads();
      if (op_a == Op::N && m < kBlasMinSide && n >= 512 && threads > 1) {
        Index const block = (n + threads - 1) / threads;
#pragma omp parallel for num_threads(threads)
        for (Index j0 = 0; j0 < n; j0 += block) {
          Index const cols = std::min(block, n - j0);
          ConstMatrixView<float> const b = op_b == Op::T ? ConstMatrixView<float>{b_view.data + j0 * b_view.ld, cols, k, b_view.ld}
                                                         : ConstMatrixView<float>{b_view.data + j0, k, cols, b_view.ld};
          gemm_float(op_a, op_b, alpha, eigen(a_view), eigen(b), beta, MatrixView<float>{C.data + j0, m, cols, C.ld});
        }
        return;
      }
      gemm_float(op_a, op_b, alpha, eigen(a_view), eigen(b_view), beta, C);
    } else if constexpr (std::is_same_v<A_t, float>) {
      RowMajor const b = widen(b_view);
      gemm_float(op_a, op_b, alpha, eigen(a_view), b, beta, C);
    } else if constexpr (std::is_same_v<B_t, float>) {
      RowMajor const a = widen(a_view);
      gemm_float(op_a, op_b, alpha, a, eigen(b_view), beta, C);
    } else {
      RowMajor const a = widen(a_view), b = widen(b_view);
      gemm_float(op_a, op_b, alpha, a, b, beta, C);
    }
  }

  /// Y = T(Y + alpha * X), element by element, rounding to Y's storage type.
  template <class TX, class T>
    requires std::is_same_v<std::remove_const_t<TX>, float>
  static void add(float alpha, MatrixView<TX> X, MatrixView<T> Y) {
    TINYLORA_CHECK(X.rows == Y.rows && X.cols == Y.cols, "Cpu::add(): shape mismatch (X is ", X.rows, "x", X.cols,
                   ", Y is ", Y.rows, "x", Y.cols, ")");
    if constexpr (std::is_same_v<T, float>) {
      eigen(Y) += alpha * eigen(ConstMatrixView<float>(X));  // vectorized: the residual stream's adds
    } else {
      for (Index i = 0; i < Y.rows; ++i)
        for (Index j = 0; j < Y.cols; ++j) Y(i, j) = T(static_cast<float>(Y(i, j)) + alpha * X(i, j));
    }
  }

  static void fill(MatrixView<float> C, float value) {
    for (Index i = 0; i < C.rows; ++i) std::fill(C.data + i * C.ld, C.data + i * C.ld + C.cols, value);
  }

 private:
  /// C = alpha A op(B) + beta C with n < kThin columns: one dot product per element, rows in
  /// parallel.   A: (m, k), op(B): (k, n), C: (m, n)
  static void gemm_thin_columns(Op op_b, Index m, Index n, Index k, float alpha, ConstMatrixView<float> A,
                                ConstMatrixView<float> B, float beta, MatrixView<float> C) {
    RowMajor Bt(n, k);  // (n, k) op(B)^T, so every dot product reads two contiguous rows
    if (op_b == Op::T) Bt = eigen(B);
    else Bt = eigen(B).transpose();
#pragma omp parallel for if (m * k > (1 << 15))
    for (Index i = 0; i < m; ++i) {
      Eigen::Map<Eigen::RowVectorXf const> const a(A.data + i * A.ld, k);  // (k)
      for (Index j = 0; j < n; ++j) {
        float const dot = a.dot(Bt.row(j));
        C(i, j) = beta == 0.0f ? alpha * dot : alpha * dot + beta * C(i, j);
      }
    }
  }

  /// C = alpha A^T B + beta C with m < kThin rows (e.g. c^T X over n tokens): each row of C is a
  /// sum of k scaled rows of B; columns split between threads.   A: (k, m), B: (k, n), C: (m, n)
  static void gemm_thin_rows(Index m, Index n, Index k, float alpha, ConstMatrixView<float> A, ConstMatrixView<float> B,
                             float beta, MatrixView<float> C) {
    constexpr Index kCols = 256;  // columns per task
#pragma omp parallel for if (n * k > (1 << 15))
    for (Index j0 = 0; j0 < n; j0 += kCols) {
      Index const cols = std::min(kCols, n - j0);
      RowMajor acc = RowMajor::Zero(m, cols);  // (m, cols)
      for (Index p = 0; p < k; ++p) {
        Eigen::Map<Eigen::RowVectorXf const> const b(B.data + p * B.ld + j0, cols);
        for (Index i = 0; i < m; ++i) acc.row(i) += A(p, i) * b;
      }
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < cols; ++j) C(i, j0 + j) = beta == 0.0f ? alpha * acc(i, j) : alpha * acc(i, j) + beta * C(i, j0 + j);
    }
  }

#if defined(TINYLORA_HAS_OPENBLAS)
  /// Row-major sgemm. With beta == 0 C is first zeroed, so NaN in C never reaches the result (the
  /// concept's contract; BLAS implementations differ on it).
  static void sgemm(Op op_a, Op op_b, Index m, Index n, Index k, float alpha, float const* A, Index lda, float const* B,
                    Index ldb, float beta, MatrixView<float> C) {
    if (beta == 0.0f) fill(C, 0.0f);
    auto const trans = [](Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; };
    cblas_sgemm(CblasRowMajor, trans(op_a), trans(op_b), static_cast<blasint>(m), static_cast<blasint>(n),
                static_cast<blasint>(k), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta,
                C.data, static_cast<blasint>(C.ld));
  }
#endif

  template <class MA, class MB>
  static void gemm_float(Op op_a, Op op_b, float alpha, MA const& a, MB const& b, float beta, MatrixView<float> C) {
    Map c = eigen(C);
    if (beta == 0.0f) c.setZero();
    else if (beta != 1.0f) c *= beta;
    if (op_a == Op::N && op_b == Op::N) c.noalias() += alpha * (a * b);
    else if (op_a == Op::N) c.noalias() += alpha * (a * b.transpose());
    else if (op_b == Op::N) c.noalias() += alpha * (a.transpose() * b);
    else c.noalias() += alpha * (a.transpose() * b.transpose());
  }
};

}  // namespace tinylora::backend::cpu
