// The CPU backend's primitives against plain loops: gemm for every transpose combination and
// operand precision (both its paths: Eigen for thin products, OpenBLAS when built with it), add with
// rounding, fill, upload/download; the decode steps' panel-packed GEMM; and the coarse-grained
// threading helpers of core/parallel.hpp.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <vector>

#include "../support.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/backend/cpu/packed_gemm.hpp"
#include "tinylora/core/parallel.hpp"

using namespace tinylora;
using backend::Cpu;

namespace {
/// C = alpha op(A) op(B) + beta C, in double: the reference for Cpu::gemm.
template <class TA, class TB>
std::vector<double> gemm_reference(Op oa, Op ob, double alpha, ConstMatrixView<TA> A, ConstMatrixView<TB> B, double beta,
                                   std::vector<float> const& C, Index m, Index n) {
  Index const k = oa == Op::N ? A.cols : A.rows;
  std::vector<double> out(static_cast<std::size_t>(m * n));
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      double acc = 0;
      for (Index p = 0; p < k; ++p) {
        double const a = static_cast<float>(oa == Op::N ? A(i, p) : A(p, i));
        double const b = static_cast<float>(ob == Op::N ? B(p, j) : B(j, p));
        acc += a * b;
      }
      out[static_cast<std::size_t>(i * n + j)] = alpha * acc + beta * C[static_cast<std::size_t>(i * n + j)];
    }
  return out;
}

template <class TA, class TB>
void check_gemm(std::uint64_t seed, Index m, Index n, Index k) {
  for (Op oa : {Op::N, Op::T})
    for (Op ob : {Op::N, Op::T}) {
      INFO("opA " << (oa == Op::N ? "N" : "T") << ", opB " << (ob == Op::N ? "N" : "T") << ", " << type_name<TA> << " x "
                  << type_name<TB> << ", (m, n, k) = (" << m << ", " << n << ", " << k << ")");
      auto const a32 = test::normal_vector(static_cast<std::size_t>(m * k), seed, 1);
      auto const b32 = test::normal_vector(static_cast<std::size_t>(k * n), seed, 2);
      std::vector<TA> a(a32.size());
      std::vector<TB> b(b32.size());
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = TA(a32[i]);
      for (std::size_t i = 0; i < b.size(); ++i) b[i] = TB(b32[i]);
      // A is stored as op^-1: (m, k) for N, (k, m) for T; B likewise.
      ConstMatrixView<TA> A{a.data(), oa == Op::N ? m : k, oa == Op::N ? k : m};
      ConstMatrixView<TB> B{b.data(), ob == Op::N ? k : n, ob == Op::N ? n : k};
      auto C = test::normal_vector(static_cast<std::size_t>(m * n), seed, 3);
      auto const want = gemm_reference(oa, ob, 0.5, A, B, 2.0, C, m, n);
      Cpu::gemm(oa, ob, 0.5f, A, B, 2.0f, MatrixView<float>{C.data(), m, n});
      TINYLORA_CHECK_CLOSE(C, want, 1e-5, 1e-5);
    }
}
}  // namespace

TEST_CASE("Cpu::gemm matches the triple loop for every transpose and operand precision") {
  auto const seed = test::seed(5);
  MESSAGE("GEMM library: " << Cpu::gemm_library);
  // (m, n, k): thin products (the adapters' rank-r factors: the loops of Cpu::gemm_thin_columns and
  // gemm_thin_rows, or Eigen), a small square one, one above the BLAS threshold, and a
  // matrix-vector-like one whose columns are split between threads (3, 600, 40).
  for (auto [m, n, k] : {std::array<Index, 3>{7, 5, 9}, std::array<Index, 3>{37, 19, 23}, std::array<Index, 3>{37, 2, 23},
                         std::array<Index, 3>{2, 19, 37}, std::array<Index, 3>{3, 2, 600}, std::array<Index, 3>{300, 2, 700}, std::array<Index, 3>{3, 600, 40},
                         // batched-decode-like products (few rows, many columns) with odd m, n and k.
                         std::array<Index, 3>{33, 130, 37}, std::array<Index, 3>{8, 64, 8}, std::array<Index, 3>{64, 67, 100}}) {
    check_gemm<float, float>(seed, m, n, k);
    check_gemm<float, bf16>(seed, m, n, k);
    check_gemm<bf16, float>(seed, m, n, k);
    check_gemm<fp16, bf16>(seed, m, n, k);
  }
}

TEST_CASE("Cpu::gemm with beta = 0 never reads C, and works on strided sub-blocks") {
  auto const seed = test::seed(6);
  auto const a = test::normal_vector(12, seed, 1);  // (3, 4)
  auto const b = test::normal_vector(8, seed, 2);   // (4, 2)
  std::vector<float> C(3 * 5, NAN);                  // a (3, 2) block inside a (3, 5) buffer
  Cpu::gemm(Op::N, Op::N, 1.0f, ConstMatrixView<float>{a.data(), 3, 4}, ConstMatrixView<float>{b.data(), 4, 2}, 0.0f,
            MatrixView<float>{C.data() + 1, 3, 2, 5});
  for (Index i = 0; i < 3; ++i) {
    CHECK(std::isnan(C[static_cast<std::size_t>(i * 5)]));
    for (Index j = 0; j < 2; ++j) {
      double want = 0;
      for (Index p = 0; p < 4; ++p) want += double{a[static_cast<std::size_t>(i * 4 + p)]} * b[static_cast<std::size_t>(p * 2 + j)];
      CHECK(C[static_cast<std::size_t>(i * 5 + 1 + j)] == doctest::Approx(want).epsilon(1e-6));
    }
  }
}

TEST_CASE("Cpu::gemm with beta = 0 on a NaN-filled strided block, above the BLAS threshold") {
  auto const seed = test::seed(7);
  // Two shapes above the BLAS threshold, the second decode-like (few rows, many columns).
  for (auto [m, n, k] : {std::array<Index, 3>{12, 10, 16}, std::array<Index, 3>{13, 70, 21}}) {
  CAPTURE(m);
  CAPTURE(n);
  Index const ld = n + 3;
  auto const a = test::normal_vector(static_cast<std::size_t>(m * k), seed, 1);  // (m, k)
  auto const b = test::normal_vector(static_cast<std::size_t>(n * k), seed, 2);  // (n, k), used transposed
  std::vector<float> C(static_cast<std::size_t>(m * ld), NAN);                    // (m, n) block inside (m, ld)
  Cpu::gemm(Op::N, Op::T, 2.0f, ConstMatrixView<float>{a.data(), m, k}, ConstMatrixView<float>{b.data(), n, k}, 0.0f,
            MatrixView<float>{C.data() + 2, m, n, ld});
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < ld; ++j) {
      float const got = C[static_cast<std::size_t>(i * ld + j)];
      if (j < 2 || j >= 2 + n) {
        CHECK(std::isnan(got));  // outside the block: untouched
        continue;
      }
      double want = 0;
      for (Index p = 0; p < k; ++p)
        want += double{a[static_cast<std::size_t>(i * k + p)]} * b[static_cast<std::size_t>((j - 2) * k + p)];
      CHECK(got == doctest::Approx(2.0 * want).epsilon(1e-5));
    }
  }
}

TEST_CASE("parallel::balanced_ranges: hand-computed cuts") {
  auto const cuts = [](std::vector<double> const& cost, int parts) {
    return parallel::balanced_ranges(static_cast<Index>(cost.size()), parts,
                                     [&](Index i) { return cost[static_cast<std::size_t>(i)]; });
  };
  CHECK(cuts({1, 1, 1, 1}, 2) == std::vector<Index>{0, 2, 4});
  CHECK(cuts({10, 1, 1, 1}, 2) == std::vector<Index>{0, 1, 4});   // the long item alone
  CHECK(cuts({1, 1, 1, 10}, 2) == std::vector<Index>{0, 3, 4});
  CHECK(cuts({1, 2, 3, 4, 5, 6}, 3) == std::vector<Index>{0, 3, 5, 6});  // shares 6 | 9 | 6 of 21
  CHECK(cuts({5}, 2) == std::vector<Index>{0, 1});                  // never an empty range
  CHECK(cuts({1, 1, 1}, 5) == std::vector<Index>{0, 1, 2, 3});
  CHECK(cuts({0, 0, 0, 0}, 2) == std::vector<Index>{0, 1, 4});      // zero cost: still non-empty
  CHECK(cuts({}, 2) == std::vector<Index>{0});
  CHECK(cuts({3, 3}, 1) == std::vector<Index>{0, 2});
}

TEST_CASE("parallel::run_parts runs every part once and rethrows a part's error after all finish") {
  std::vector<int> ran(4, 0);
  parallel::run_parts(4, [&](Index p) { ran[static_cast<std::size_t>(p)] += 1; });
  CHECK(ran == std::vector<int>{1, 1, 1, 1});
  std::vector<int> done(3, 0);
  CHECK_THROWS_WITH_AS(parallel::run_parts(3,
                                           [&](Index p) {
                                             done[static_cast<std::size_t>(p)] = 1;
                                             if (p == 1) fail("part 1 failed");
                                           }),
                       "part 1 failed", Error);
  CHECK(done == std::vector<int>{1, 1, 1});
  // Inside a part there is one thread: nested regions run serially.
  std::vector<int> inner(2, 0);
  parallel::run_parts(2, [&](Index p) { inner[static_cast<std::size_t>(p)] = parallel::available_threads(); });
  CHECK(inner == std::vector<int>{1, 1});
}

TEST_CASE("Cpu::gemm rejects mismatched shapes") {
  std::vector<float> x(16);
  CHECK_THROWS_WITH_AS(Cpu::gemm(Op::N, Op::N, 1.0f, ConstMatrixView<float>{x.data(), 2, 3},
                                 ConstMatrixView<float>{x.data(), 2, 3}, 0.0f, MatrixView<float>{x.data(), 2, 3}),
                       doctest::Contains("Cpu::gemm(): shape mismatch"), Error);
}

TEST_CASE("Cpu::add rounds into the destination's storage type; fill and transfers") {
  std::vector<float> const x{1e-3f, 2.0f};
  std::vector<bf16> y{bf16(1.0f), bf16(1.0f)};
  Cpu::add(1.0f, ConstMatrixView<float>{x.data(), 1, 2}, MatrixView<bf16>{y.data(), 1, 2});
  CHECK(y[0].bits == bf16(1.001f).bits);
  CHECK(static_cast<float>(y[1]) == 3.0f);
  auto buf = Cpu::upload(std::span<float const>(x));
  CHECK(Cpu::download(buf) == x);
  Cpu::fill(MatrixView<float>{Cpu::data(buf), 1, 2}, 7.0f);
  CHECK(Cpu::download(buf) == std::vector<float>{7.0f, 7.0f});
  CHECK(Cpu::size(Cpu::zeros<bf16>(5)) == 5);
}

namespace {
/// Y = X W^T in double, from the unpacked W.   X: (m, K), W: (n, K)
std::vector<double> xwt_reference(ConstMatrixView<float> X, ConstMatrixView<float> W) {
  std::vector<double> out(static_cast<std::size_t>(X.rows * W.rows));
  for (Index i = 0; i < X.rows; ++i)
    for (Index j = 0; j < W.rows; ++j) {
      double acc = 0;
      for (Index k = 0; k < X.cols; ++k) acc += static_cast<double>(X(i, k)) * W(j, k);
      out[static_cast<std::size_t>(i * W.rows + j)] = acc;
    }
  return out;
}
}  // namespace

TEST_CASE("PanelPackedWeight holds W panel by panel, zero past the last output") {
  auto const seed = test::seed(41);
  for (Index n : {Index{1}, Index{15}, Index{16}, Index{17}, Index{40}}) {
    Index const K = 5, ld = 7;  // W strided: ld > K
    auto const w = test::normal_vector(static_cast<std::size_t>(n * ld), seed, 1);
    ConstMatrixView<float> const W{w.data(), n, K, ld};
    backend::cpu::PanelPackedWeight const packed(W);
    CHECK(packed.rows() == n);
    CHECK(packed.cols() == K);
    CHECK(packed.panels() == (n + 15) / 16);
    for (Index j = 0; j < n; ++j)
      for (Index k = 0; k < K; ++k) REQUIRE(packed(j, k) == W(j, k));
    for (Index j = n; j < packed.panels() * 16; ++j)  // the last panel's padding
      for (Index k = 0; k < K; ++k) REQUIRE(packed.panel(j / 16)[k * 16 + j % 16] == 0.0f);
  }
}

TEST_CASE("gemm_packed: the same bits as its plain loops, and X W^T in double to 1e-5, on every tile and panel remainder") {
  auto const seed = test::seed(42);
  for (Index m : {Index{1}, Index{2}, Index{5}, Index{6}, Index{7}, Index{13}, Index{32}})
    for (Index n : {Index{1}, Index{15}, Index{16}, Index{17}, Index{50}})
      for (Index K : {Index{1}, Index{3}, Index{64}, Index{77}}) {
        INFO("(m, n, K) = (" << m << ", " << n << ", " << K << ")");
        Index const ldx = K + 3, ldy = n + 2;  // X and Y strided, Y's padding must stay untouched
        auto const x = test::normal_vector(static_cast<std::size_t>(m * ldx), seed, 1);
        auto const w = test::normal_vector(static_cast<std::size_t>(n * K), seed, 2);
        ConstMatrixView<float> const X{x.data(), m, K, ldx};
        ConstMatrixView<float> const W{w.data(), n, K};
        backend::cpu::PanelPackedWeight const packed(W);
        std::vector<float> y(static_cast<std::size_t>(m * ldy), -7.0f), y_plain(y);
        backend::cpu::gemm_packed(X, packed, MatrixView<float>{y.data(), m, n, ldy});
        backend::cpu::gemm_packed_reference(X, packed, MatrixView<float>{y_plain.data(), m, n, ldy});
        REQUIRE(y == y_plain);  // bit for bit, padding included
        for (Index i = 0; i < m; ++i)
          for (Index j = n; j < ldy; ++j) REQUIRE(y[static_cast<std::size_t>(i * ldy + j)] == -7.0f);
        std::vector<float> dense(static_cast<std::size_t>(m * n));
        for (Index i = 0; i < m; ++i)
          for (Index j = 0; j < n; ++j) dense[static_cast<std::size_t>(i * n + j)] = y[static_cast<std::size_t>(i * ldy + j)];
        TINYLORA_CHECK_CLOSE(dense, xwt_reference(X, W), 1e-5, 1e-5);
      }
}

TEST_CASE("gemm_packed: a row's outputs do not depend on the thread count or on the rows beside it") {
  auto const seed = test::seed(43);
  Index const m = 32, n = 700, K = 576;  // a decode step's shape, big enough to run in parallel
  auto const x = test::normal_vector(static_cast<std::size_t>(m * K), seed, 1);
  auto const w = test::normal_vector(static_cast<std::size_t>(n * K), seed, 2);
  backend::cpu::PanelPackedWeight const packed(ConstMatrixView<float>{w.data(), n, K});
  ConstMatrixView<float> const X{x.data(), m, K};
  int const threads = omp_get_max_threads();
  std::vector<std::vector<float>> runs;
  for (int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    runs.emplace_back(static_cast<std::size_t>(m * n));
    backend::cpu::gemm_packed(X, packed, MatrixView<float>{runs.back().data(), m, n});
  }
  omp_set_num_threads(threads);
  CHECK(runs[0] == runs[1]);
  CHECK(runs[0] == runs[2]);
  // Row 9 alone (a tile of 1) against row 9 inside the batch (row 3 of the second tile of 6).
  std::vector<float> alone(static_cast<std::size_t>(n));
  backend::cpu::gemm_packed(ConstMatrixView<float>{x.data() + 9 * K, 1, K}, packed, MatrixView<float>{alone.data(), 1, n});
  CHECK(std::equal(alone.begin(), alone.end(), runs[0].begin() + 9 * n));
}

TEST_CASE("gemm_packed rejects mismatched shapes") {
  std::vector<float> w(12, 1.0f), x(8, 1.0f), y(8, 0.0f);
  backend::cpu::PanelPackedWeight const packed(ConstMatrixView<float>{w.data(), 3, 4});  // W: (3, 4)
  CHECK_THROWS_WITH_AS(backend::cpu::gemm_packed(ConstMatrixView<float>{x.data(), 2, 3}, packed, MatrixView<float>{y.data(), 2, 3}),
                       doctest::Contains("gemm_packed(): shape mismatch (X is 2x3, W is 3x4"), Error);
  CHECK_THROWS_WITH_AS(backend::cpu::gemm_packed(ConstMatrixView<float>{x.data(), 2, 4}, packed, MatrixView<float>{y.data(), 2, 2}),
                       doctest::Contains("Y is 2x2"), Error);
}
