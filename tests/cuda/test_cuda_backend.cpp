// tests/cuda/test_cuda_backend.cpp: backend::Cuda against backend::Cpu and plain double loops, on
// identical inputs: gemm for every transpose and operand precision (strided views, beta = 0 over
// NaN, k = 0), add with rounding into 16-bit storage, fill, transfers, and the errors.
// Built twice: by g++ under Thrust's OpenMP device system (test_cuda_backend_omp, in CI), and by
// nvcc as CUDA (test_cuda_backend_cuda, the `cuda` preset), where it skips without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../support.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/backend/cuda/cuda.cuh"

using namespace tinylora;
using backend::Cpu;
using backend::Cuda;

namespace {

/// True when the backend can run here; otherwise says why the test is skipped.
bool gpu_or_skip() {
  if (Cuda::available()) return true;
  MESSAGE("skipped: backend::Cuda (" << Cuda::name << ") found no GPU in this process (cudaGetDeviceCount() == 0). "
          "The thrust-omp configuration (test_cuda_backend_omp) runs the same checks without one.");
  return false;
}

template <class T>
std::vector<T> cast(std::vector<float> const& x) {
  std::vector<T> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = T(x[i]);
  return out;
}

template <class T>
typename Cuda::Buffer<T> to_device(std::vector<T> const& host) {
  return Cuda::upload(std::span<T const>(host));
}

/// C = alpha op(A) op(B) + beta C in double (beta == 0: C not read).
template <class TA, class TB>
std::vector<double> reference(Op oa, Op ob, double alpha, ConstMatrixView<TA> A, ConstMatrixView<TB> B, double beta,
                              std::vector<float> const& C, Index m, Index n, Index ldc) {
  Index const k = oa == Op::N ? A.cols : A.rows;
  std::vector<double> out(static_cast<std::size_t>(m * n));
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      double acc = 0;
      for (Index p = 0; p < k; ++p)
        acc += static_cast<double>(static_cast<float>(oa == Op::N ? A(i, p) : A(p, i))) *
               static_cast<float>(ob == Op::N ? B(p, j) : B(j, p));
      double const c = beta == 0.0 ? 0.0 : beta * C[static_cast<std::size_t>(i * ldc + j)];
      out[static_cast<std::size_t>(i * n + j)] = alpha * acc + c;
    }
  return out;
}

/// The (m, n) block of a strided (m, ldc) matrix, densely.
std::vector<float> block(std::vector<float> const& c, Index m, Index n, Index ldc) {
  std::vector<float> out;
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) out.push_back(c[static_cast<std::size_t>(i * ldc + j)]);
  return out;
}

/// Cuda::gemm and Cpu::gemm on the same strided operands, against the double loop; C's padding
/// columns must come back untouched.
template <class TA, class TB>
void check_gemm(std::uint64_t seed, Index m, Index n, Index k, float beta) {
  for (Op oa : {Op::N, Op::T})
    for (Op ob : {Op::N, Op::T}) {
      INFO("opA " << (oa == Op::N ? "N" : "T") << ", opB " << (ob == Op::N ? "N" : "T") << ", " << type_name<TA> << " x "
                  << type_name<TB> << ", (m, n, k) = (" << m << ", " << n << ", " << k << "), beta " << beta);
      Index const ra = oa == Op::N ? m : k, ca = oa == Op::N ? k : m, lda = ca + 2;  // A stored as op^-1, strided
      Index const rb = ob == Op::N ? k : n, cb = ob == Op::N ? n : k, ldb = cb + 1;
      Index const ldc = n + 3;
      auto const a = cast<TA>(test::normal_vector(static_cast<std::size_t>(ra * lda), seed, 1));
      auto const b = cast<TB>(test::normal_vector(static_cast<std::size_t>(rb * ldb), seed, 2));
      auto c = test::normal_vector(static_cast<std::size_t>(m * ldc), seed, 3);
      if (beta == 0.0f)  // C is not read: NaN inside the block must not reach the result
        for (Index i = 0; i < m; ++i)
          for (Index j = 0; j < n; ++j) c[static_cast<std::size_t>(i * ldc + j)] = std::numeric_limits<float>::quiet_NaN();
      ConstMatrixView<TA> const A_host{a.data(), ra, ca, lda};
      ConstMatrixView<TB> const B_host{b.data(), rb, cb, ldb};
      auto const want = reference(oa, ob, 0.5, A_host, B_host, beta, c, m, n, ldc);

      auto a_dev = to_device(a);
      auto b_dev = to_device(b);
      auto c_dev = to_device(c);
      Cuda::gemm(oa, ob, 0.5f, ConstMatrixView<TA>{Cuda::data(a_dev), ra, ca, lda}, ConstMatrixView<TB>{Cuda::data(b_dev), rb, cb, ldb},
                 beta, MatrixView<float>{Cuda::data(c_dev), m, n, ldc});
      Cuda::synchronize();
      std::vector<float> const got = Cuda::download(c_dev);

      std::vector<float> c_cpu = c;
      Cpu::gemm(oa, ob, 0.5f, A_host, B_host, beta, MatrixView<float>{c_cpu.data(), m, n, ldc});

      TINYLORA_CHECK_CLOSE(block(got, m, n, ldc), want, 1e-5, 1e-5);
      TINYLORA_CHECK_CLOSE(block(got, m, n, ldc), block(c_cpu, m, n, ldc), 1e-5, 1e-5);
      for (Index i = 0; i < m; ++i)
        for (Index j = n; j < ldc; ++j) REQUIRE(got[static_cast<std::size_t>(i * ldc + j)] == c[static_cast<std::size_t>(i * ldc + j)]);
    }
}

}  // namespace

TEST_CASE("Cuda::gemm equals Cpu::gemm and the double loop for every transpose and operand precision") {
  if (!gpu_or_skip()) return;
  MESSAGE("backend " << Cuda::name << ", GEMM: " << Cuda::gemm_library);
  auto const seed = test::seed(61);
  for (float beta : {0.0f, 1.0f, -0.75f}) {
    check_gemm<float, float>(seed, 7, 9, 13, beta);
    check_gemm<float, float>(seed, 33, 20, 65, beta);
    check_gemm<float, bf16>(seed, 7, 9, 13, beta);
    check_gemm<bf16, float>(seed, 5, 17, 8, beta);
    check_gemm<float, fp16>(seed, 12, 6, 10, beta);
    check_gemm<bf16, bf16>(seed, 9, 11, 16, beta);
    check_gemm<fp16, fp16>(seed, 4, 8, 24, beta);
  }
}

TEST_CASE("Cuda::gemm with k = 0 scales C by beta, and rejects mismatched shapes") {
  if (!gpu_or_skip()) return;
  std::vector<float> const c0{1.0f, -2.0f, 3.0f, 4.0f};
  for (float beta : {0.0f, 1.0f, 2.5f}) {
    auto c = to_device(c0);
    auto const empty = Cuda::zeros<float>(1);
    Cuda::gemm(Op::N, Op::N, 1.0f, ConstMatrixView<float>{Cuda::data(empty), 2, 0}, ConstMatrixView<float>{Cuda::data(empty), 0, 2},
               beta, MatrixView<float>{Cuda::data(c), 2, 2});
    std::vector<float> const got = Cuda::download(c);
    for (std::size_t i = 0; i < c0.size(); ++i) CHECK(got[i] == beta * c0[i]);
  }
  auto buf = Cuda::zeros<float>(12);
  CHECK_THROWS_WITH_AS(Cuda::gemm(Op::N, Op::N, 1.0f, ConstMatrixView<float>{Cuda::data(buf), 2, 3},
                                  ConstMatrixView<float>{Cuda::data(buf), 2, 3}, 0.0f, MatrixView<float>{Cuda::data(buf), 2, 3}),
                       doctest::Contains("Cuda::gemm(): shape mismatch (op(A) is 2x3, op(B) is 2x3"), Error);
}

TEST_CASE("Cuda::add rounds into the destination's storage type like Cpu::add; fill and transfers") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(62);
  Index const rows = 5, cols = 7, ld = 9;  // strided destination: padding stays untouched
  auto const x = test::normal_vector(static_cast<std::size_t>(rows * ld), seed, 1);
  auto const y0 = test::normal_vector(static_cast<std::size_t>(rows * ld), seed, 2, 100.0f);
  auto check_add = [&]<class T>(T) {
    INFO("Y of type " << type_name<T>);
    auto const y = cast<T>(y0);
    auto x_dev = to_device(x);
    auto y_dev = to_device(y);
    Cuda::add(-0.3f, ConstMatrixView<float>{Cuda::data(x_dev), rows, cols, ld}, MatrixView<T>{Cuda::data(y_dev), rows, cols, ld});
    std::vector<T> y_cpu = y;
    Cpu::add(-0.3f, ConstMatrixView<float>{x.data(), rows, cols, ld}, MatrixView<T>{y_cpu.data(), rows, cols, ld});
    std::vector<T> const got = Cuda::download(y_dev);
    // Within one unit in the last place of T: a compiler may fuse y + alpha x into one FMA on one
    // side only, which can move a result across a rounding boundary of the 16-bit type.
    float const ulp = std::is_same_v<T, bf16> ? 0x1p-7f : std::is_same_v<T, fp16> ? 0x1p-10f : 0x1p-22f;
    for (std::size_t i = 0; i < got.size(); ++i) {
      float const g = static_cast<float>(got[i]), w = static_cast<float>(y_cpu[i]);
      REQUIRE(std::abs(g - w) <= ulp * std::abs(w));
    }
  };
  check_add(float{});
  check_add(bf16{});
  check_add(fp16{});

  auto z = Cuda::zeros<float>(rows * ld);
  CHECK(Cuda::size(z) == rows * ld);
  Cuda::fill(MatrixView<float>{Cuda::data(z), rows, cols, ld}, 7.0f);
  std::vector<float> const filled = Cuda::download(z);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < ld; ++j) REQUIRE(filled[static_cast<std::size_t>(i * ld + j)] == (j < cols ? 7.0f : 0.0f));
  CHECK(Cuda::download(to_device(x)) == x);
  CHECK(Cuda::size(Cuda::zeros<bf16>(5)) == 5);
  auto small = Cuda::zeros<float>(4);
  CHECK_THROWS_WITH_AS(Cuda::add(1.0f, ConstMatrixView<float>{Cuda::data(small), 2, 2}, MatrixView<float>{Cuda::data(small), 1, 4}),
                       doctest::Contains("Cuda::add(): shape mismatch (X is 2x2, Y is 1x4)"), Error);
}
