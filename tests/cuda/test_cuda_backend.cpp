// tests/cuda/test_cuda_backend.cpp: backend::Cuda against backend::Cpu and plain double loops, on
// identical inputs: gemm for every transpose and operand precision (strided views, beta = 0 over
// NaN, k = 0), add with rounding into 16-bit storage, fill, transfers, and the errors; and the
// decoder's forward and backward operations (backend/cuda/kernels*.cuh) against backend/cpu/'s; and
// the adapters' low-rank core (apply, backward with its dK, Delta W, merge) on both backends; and
// token sampling on the device against model::sample_token; and the whole forward of the tiny
// Llama and Qwen2 fixtures composed from those operations against Decoder<Cpu>::loss, and its
// backward: TinyLoRA's theta-gradient on backend::Cuda against AdaptedModel<..., Cpu>'s.
// Built twice: by g++ under Thrust's OpenMP device system (test_cuda_backend_omp, in CI), and by
// nvcc as CUDA (test_cuda_backend_cuda, the `cuda` preset), where it skips without a GPU.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../support.hpp"
#include "tinylora/adapters/low_rank_core.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/backend/cpu/kernels.hpp"
#include "tinylora/backend/cpu/kernels_backward.hpp"
#include "tinylora/backend/cuda/cuda.cuh"
#include "tinylora/backend/cuda/kernels.cuh"
#include "tinylora/backend/cuda/kernels_backward.cuh"
#include "tinylora/backend/cuda/sampling.cuh"
#include "tinylora/adapters/tiny_lora.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/model/generate.hpp"
#include "tinylora/optim/schedule.hpp"
#include "tinylora/tying/strategies.hpp"
#include "tinylora/precision/policies.hpp"

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

namespace {
template <class T>
std::vector<T> downloaded(typename Cuda::Buffer<T> const& buf) {
  return Cuda::download(buf);
}
}  // namespace

TEST_CASE("cuda:: forward operations equal backend::cpu's on the same inputs (GQA 4:2, two packed sequences)") {
  if (!gpu_or_skip()) return;
  namespace gpu = backend::cuda;
  namespace cpu = backend::cpu;
  auto const seed = test::seed(63);
  int const H = 4, H_kv = 2;
  Index const hd = 8, d = H * hd, V = 11, f = 12;
  std::vector<std::int32_t> const ids{3, 0, 10, 7, 7, 2, 5};  // sequences of 4 and 3 tokens
  std::vector<std::int32_t> const positions{0, 1, 2, 3, 0, 1, 2};
  std::vector<Index> const offsets{0, 4, 7};
  Index const n = static_cast<Index>(ids.size());
  auto dev_ids = to_device(ids);
  auto dev_positions = to_device(positions);
  auto dev_offsets = to_device(offsets);

  SUBCASE("embedding gather, from fp32 and bf16 tables") {
    auto const table = test::normal_vector(static_cast<std::size_t>(V * d), seed, 1);
    std::vector<float> want(static_cast<std::size_t>(n * d));
    cpu::embedding_forward(ConstMatrixView<float>{table.data(), V, d}, ids, MatrixView<float>{want.data(), n, d});
    auto dev_table = to_device(table);
    auto out = Cuda::zeros<float>(n * d);
    gpu::embedding_forward(ConstMatrixView<float>{Cuda::data(dev_table), V, d}, Cuda::data(dev_ids), MatrixView<float>{Cuda::data(out), n, d});
    CHECK(downloaded<float>(out) == want);
    auto const table16 = cast<bf16>(table);
    cpu::embedding_forward(ConstMatrixView<bf16>{table16.data(), V, d}, ids, MatrixView<float>{want.data(), n, d});
    auto dev_table16 = to_device(table16);
    gpu::embedding_forward(ConstMatrixView<bf16>{Cuda::data(dev_table16), V, d}, Cuda::data(dev_ids), MatrixView<float>{Cuda::data(out), n, d});
    CHECK(downloaded<float>(out) == want);
  }
  SUBCASE("RMSNorm with its 1/rms, RoPE forward and inverse, SwiGLU, bias") {
    auto const x = test::normal_vector(static_cast<std::size_t>(n * d), seed, 2);
    auto const w = test::normal_vector(static_cast<std::size_t>(d), seed, 3);
    std::vector<float> y(x.size()), rstd(static_cast<std::size_t>(n));
    cpu::rmsnorm_forward(ConstMatrixView<float>{x.data(), n, d}, w.data(), 1e-5f, MatrixView<float>{y.data(), n, d}, rstd);
    auto dev_x = to_device(x);
    auto dev_w = to_device(w);
    auto dev_y = Cuda::zeros<float>(n * d);
    auto dev_rstd = Cuda::zeros<float>(n);
    gpu::rmsnorm_forward(ConstMatrixView<float>{Cuda::data(dev_x), n, d}, Cuda::data(dev_w), 1e-5f, MatrixView<float>{Cuda::data(dev_y), n, d},
                         Cuda::data(dev_rstd));
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_y), y, 1e-5, 1e-6);
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_rstd), rstd, 1e-6, 0.0);

    for (bool inverse : {false, true}) {
      INFO("inverse " << inverse);
      std::vector<float> r = x;
      cpu::rope_forward(MatrixView<float>{r.data(), n, d}, positions, H, hd, 10000.0f, inverse);
      auto dev_r = to_device(x);
      gpu::rope_forward(MatrixView<float>{Cuda::data(dev_r), n, d}, Cuda::data(dev_positions), H, hd, 10000.0f, inverse);
      TINYLORA_CHECK_CLOSE(downloaded<float>(dev_r), r, 1e-5, 1e-6);
    }

    auto const gate = test::normal_vector(static_cast<std::size_t>(n * f), seed, 4);
    auto const up = test::normal_vector(static_cast<std::size_t>(n * f), seed, 5);
    std::vector<float> s(gate.size());
    cpu::swiglu_forward(ConstMatrixView<float>{gate.data(), n, f}, ConstMatrixView<float>{up.data(), n, f}, MatrixView<float>{s.data(), n, f});
    auto dev_gate = to_device(gate);
    auto dev_up = to_device(up);
    auto dev_s = Cuda::zeros<float>(n * f);
    gpu::swiglu_forward(ConstMatrixView<float>{Cuda::data(dev_gate), n, f}, ConstMatrixView<float>{Cuda::data(dev_up), n, f},
                        MatrixView<float>{Cuda::data(dev_s), n, f});
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_s), s, 1e-5, 1e-6);

    std::vector<float> b = gate;
    cpu::add_bias(MatrixView<float>{b.data(), n, f}, up.data());
    gpu::add_bias(MatrixView<float>{Cuda::data(dev_gate), n, f}, Cuda::data(dev_up));
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_gate), b, 1e-6, 0.0);
  }
  SUBCASE("causal GQA attention over packed sequences, and its decode step against a cache") {
    Index const kv = H_kv * hd;
    auto const q = test::normal_vector(static_cast<std::size_t>(n * d), seed, 6);
    auto const k = test::normal_vector(static_cast<std::size_t>(n * kv), seed, 7);
    auto const v = test::normal_vector(static_cast<std::size_t>(n * kv), seed, 8);
    std::vector<float> want(static_cast<std::size_t>(n * d));
    cpu::attention_forward(ConstMatrixView<float>{q.data(), n, d}, ConstMatrixView<float>{k.data(), n, kv},
                           ConstMatrixView<float>{v.data(), n, kv}, offsets, H, H_kv, hd, MatrixView<float>{want.data(), n, d});
    auto dev_q = to_device(q);
    auto dev_k = to_device(k);
    auto dev_v = to_device(v);
    auto out = Cuda::zeros<float>(n * d);
    gpu::attention_forward(ConstMatrixView<float>{Cuda::data(dev_q), n, d}, ConstMatrixView<float>{Cuda::data(dev_k), n, kv},
                           ConstMatrixView<float>{Cuda::data(dev_v), n, kv}, Cuda::data(dev_offsets), 2, H, H_kv, hd,
                           MatrixView<float>{Cuda::data(out), n, d});
    TINYLORA_CHECK_CLOSE(downloaded<float>(out), want, 1e-5, 1e-6);

    // Decode: the two sequences' keys as cache slots 1 and 0 (capacity 5), one query row each.
    Index const capacity = 5;
    std::vector<float> cache_k(static_cast<std::size_t>(2 * capacity * kv), 0.0f), cache_v(cache_k);
    std::vector<Index> const slots{1, 0}, lens{4, 3};
    for (Index s = 0; s < 2; ++s)
      for (Index u = 0; u < lens[static_cast<std::size_t>(s)]; ++u)
        for (Index j = 0; j < kv; ++j) {
          auto const dst = static_cast<std::size_t>((slots[static_cast<std::size_t>(s)] * capacity + u) * kv + j);
          auto const src = static_cast<std::size_t>((offsets[static_cast<std::size_t>(s)] + u) * kv + j);
          cache_k[dst] = k[src];
          cache_v[dst] = v[src];
        }
    std::vector<float> q_last(static_cast<std::size_t>(2 * d)), dec_want(q_last.size());
    std::copy(q.begin() + 3 * d, q.begin() + 4 * d, q_last.begin());  // sequence 0's last token
    std::copy(q.begin() + 6 * d, q.begin() + 7 * d, q_last.begin() + d);  // sequence 1's last token
    cpu::attention_decode(ConstMatrixView<float>{q_last.data(), 2, d}, ConstMatrixView<float>{cache_k.data(), 2 * capacity, kv},
                          ConstMatrixView<float>{cache_v.data(), 2 * capacity, kv}, capacity, lens, slots, H, H_kv, hd,
                          MatrixView<float>{dec_want.data(), 2, d});
    for (Index j = 0; j < d; ++j) {  // and the decode step is the packed forward's last row
      CHECK(dec_want[static_cast<std::size_t>(j)] == doctest::Approx(want[static_cast<std::size_t>(3 * d + j)]).epsilon(1e-5));
      CHECK(dec_want[static_cast<std::size_t>(d + j)] == doctest::Approx(want[static_cast<std::size_t>(6 * d + j)]).epsilon(1e-5));
    }
    auto dev_ql = to_device(q_last);
    auto dev_ck = to_device(cache_k);
    auto dev_cv = to_device(cache_v);
    auto dev_slots = to_device(slots);
    auto dev_lens = to_device(lens);
    auto dec = Cuda::zeros<float>(2 * d);
    gpu::attention_decode(ConstMatrixView<float>{Cuda::data(dev_ql), 2, d}, ConstMatrixView<float>{Cuda::data(dev_ck), 2 * capacity, kv},
                          ConstMatrixView<float>{Cuda::data(dev_cv), 2 * capacity, kv}, capacity, Cuda::data(dev_lens),
                          Cuda::data(dev_slots), H, H_kv, hd, MatrixView<float>{Cuda::data(dec), 2, d});
    TINYLORA_CHECK_CLOSE(downloaded<float>(dec), dec_want, 1e-5, 1e-6);
  }
  SUBCASE("backward: RMSNorm (accumulating), RoPE, SwiGLU, attention (GQA, packed), cross-entropy") {
    Index const kv = H_kv * hd;
    auto const x = test::normal_vector(static_cast<std::size_t>(n * d), seed, 10);
    auto const w = test::normal_vector(static_cast<std::size_t>(d), seed, 11);
    auto const dy = test::normal_vector(static_cast<std::size_t>(n * d), seed, 12);
    auto const dx0 = test::normal_vector(static_cast<std::size_t>(n * d), seed, 13);
    std::vector<float> y(x.size()), rstd(static_cast<std::size_t>(n)), dx = dx0;
    cpu::rmsnorm_forward(ConstMatrixView<float>{x.data(), n, d}, w.data(), 1e-5f, MatrixView<float>{y.data(), n, d}, rstd);
    cpu::rmsnorm_backward(ConstMatrixView<float>{x.data(), n, d}, w.data(), rstd, ConstMatrixView<float>{dy.data(), n, d},
                          MatrixView<float>{dx.data(), n, d});
    auto dev_x = to_device(x);
    auto dev_w = to_device(w);
    auto dev_rstd = to_device(rstd);
    auto dev_dy = to_device(dy);
    auto dev_dx = to_device(dx0);
    gpu::rmsnorm_backward(ConstMatrixView<float>{Cuda::data(dev_x), n, d}, Cuda::data(dev_w), Cuda::data(dev_rstd),
                          ConstMatrixView<float>{Cuda::data(dev_dy), n, d}, MatrixView<float>{Cuda::data(dev_dx), n, d});
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dx), dx, 1e-5, 1e-6);

    std::vector<float> r = dy;
    cpu::rope_backward(MatrixView<float>{r.data(), n, d}, positions, H, hd, 10000.0f);
    gpu::rope_backward(MatrixView<float>{Cuda::data(dev_dy), n, d}, Cuda::data(dev_positions), H, hd, 10000.0f);
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dy), r, 1e-5, 1e-6);

    std::vector<float> dgate(x.size()), dup(x.size());
    cpu::swiglu_backward(ConstMatrixView<float>{x.data(), n, d}, ConstMatrixView<float>{dx0.data(), n, d},
                         ConstMatrixView<float>{dy.data(), n, d}, MatrixView<float>{dgate.data(), n, d}, MatrixView<float>{dup.data(), n, d});
    auto dev_up = to_device(dx0);
    auto dev_dout = to_device(dy);
    auto dev_dgate = Cuda::zeros<float>(n * d), dev_dup = Cuda::zeros<float>(n * d);
    gpu::swiglu_backward(ConstMatrixView<float>{Cuda::data(dev_x), n, d}, ConstMatrixView<float>{Cuda::data(dev_up), n, d},
                         ConstMatrixView<float>{Cuda::data(dev_dout), n, d}, MatrixView<float>{Cuda::data(dev_dgate), n, d},
                         MatrixView<float>{Cuda::data(dev_dup), n, d});
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dgate), dgate, 1e-5, 1e-6);
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dup), dup, 1e-5, 1e-6);

    auto const q = test::normal_vector(static_cast<std::size_t>(n * d), seed, 14);
    auto const k = test::normal_vector(static_cast<std::size_t>(n * kv), seed, 15);
    auto const v = test::normal_vector(static_cast<std::size_t>(n * kv), seed, 16);
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
    cpu::attention_backward(ConstMatrixView<float>{q.data(), n, d}, ConstMatrixView<float>{k.data(), n, kv},
                            ConstMatrixView<float>{v.data(), n, kv}, offsets, H, H_kv, hd, ConstMatrixView<float>{dy.data(), n, d},
                            MatrixView<float>{dq.data(), n, d}, MatrixView<float>{dk.data(), n, kv}, MatrixView<float>{dv.data(), n, kv});
    auto dev_q = to_device(q);
    auto dev_k = to_device(k);
    auto dev_v = to_device(v);
    auto dev_dq = Cuda::zeros<float>(n * d), dev_dk = Cuda::zeros<float>(n * kv), dev_dv = Cuda::zeros<float>(n * kv);
    gpu::attention_backward(ConstMatrixView<float>{Cuda::data(dev_q), n, d}, ConstMatrixView<float>{Cuda::data(dev_k), n, kv},
                            ConstMatrixView<float>{Cuda::data(dev_v), n, kv}, Cuda::data(dev_offsets), 2, H, H_kv, hd,
                            ConstMatrixView<float>{Cuda::data(dev_dout), n, d}, MatrixView<float>{Cuda::data(dev_dq), n, d},
                            MatrixView<float>{Cuda::data(dev_dk), n, kv}, MatrixView<float>{Cuda::data(dev_dv), n, kv});
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dq), dq, 1e-4, 1e-5);
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dk), dk, 1e-4, 1e-5);
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dv), dv, 1e-4, 1e-5);

    Index const m = 3, vocab = 300;
    auto const logits = test::normal_vector(static_cast<std::size_t>(m * vocab), seed, 17, 4.0f);
    std::vector<std::int32_t> const targets{0, 299, 17};
    std::vector<float> const weights{0.5f, 1.0f, -2.0f};
    std::vector<float> dlogits(logits.size());
    cpu::cross_entropy_backward(ConstMatrixView<float>{logits.data(), m, vocab}, targets, 0.25f,
                                MatrixView<float>{dlogits.data(), m, vocab}, weights);
    auto dev_logits = to_device(logits);  // in place, as the model runs it
    auto dev_targets = to_device(targets);
    auto dev_weights = to_device(weights);
    gpu::cross_entropy_backward(ConstMatrixView<float>{Cuda::data(dev_logits), m, vocab}, Cuda::data(dev_targets), 0.25f,
                                MatrixView<float>{Cuda::data(dev_logits), m, vocab}, Cuda::data(dev_weights));
    TINYLORA_CHECK_CLOSE(downloaded<float>(dev_logits), dlogits, 1e-5, 1e-7);
  }
  SUBCASE("cross-entropy per row, in double") {
    Index const m = 3, vocab = 300;
    auto const logits = test::normal_vector(static_cast<std::size_t>(m * vocab), seed, 9, 4.0f);
    std::vector<std::int32_t> const targets{0, 299, 17};
    std::vector<float> scratch = logits;
    auto const want = cpu::cross_entropy_forward_reference(MatrixView<float>{scratch.data(), m, vocab}, targets);
    auto dev_logits = to_device(logits);
    auto dev_targets = to_device(targets);
    auto nll = Cuda::zeros<double>(m);
    gpu::cross_entropy_forward(ConstMatrixView<float>{Cuda::data(dev_logits), m, vocab}, Cuda::data(dev_targets), Cuda::data(nll));
    TINYLORA_CHECK_CLOSE(downloaded<double>(nll), want, 1e-12, 0.0);
  }
}

namespace {
template <class P>
void check_low_rank_core(std::uint64_t seed, double merge_rtol) {
  double const rtol = 1e-5;
  INFO("weights in " << type_name<typename P::weight_type>);
  Index const d_out = 24, d_in = 20, r = 2, n = 9;
  auto host = [&](Index rows, Index cols, std::uint64_t stream) {
    auto const v = test::normal_vector(static_cast<std::size_t>(rows * cols), seed, stream);
    return HostMatrix(Eigen::Map<HostMatrix const>(v.data(), rows, cols));
  };
  HostMatrix const L = host(d_out, r, 1), R = host(r, d_in, 2), X = host(n, d_in, 3), dY = host(n, d_out, 4);
  HostMatrix const Y0 = host(n, d_out, 5), dX0 = host(n, d_in, 6);
  std::vector<float> const K{0.3f, -1.1f, 0.7f, 0.2f};
  auto flat = [](HostMatrix const& m) { return std::vector<float>(m.data(), m.data() + m.size()); };

  adapters::LowRankCore<Cpu, P> cpu_core(L, R);
  adapters::LowRankCore<Cuda, P> gpu_core(L, R);
  cpu_core.set_K(K);
  gpu_core.set_K(K);

  // Y += X Delta W^T
  HostMatrix Y = Y0;
  cpu_core.apply(view_of(X), view_of(Y));
  auto dev_X = to_device(flat(X));
  auto dev_Y = to_device(flat(Y0));
  gpu_core.apply(ConstMatrixView<float>{Cuda::data(dev_X), n, d_in}, MatrixView<float>{Cuda::data(dev_Y), n, d_out});
  TINYLORA_CHECK_CLOSE(downloaded<float>(dev_Y), flat(Y), rtol, 1e-5);

  // dK += c^T a and dX += (c K) R, twice (dK accumulates), then zero_grad
  HostMatrix dX = dX0;
  auto dev_dY = to_device(flat(dY));
  auto dev_dX = to_device(flat(dX0));
  for (int pass = 0; pass < 2; ++pass) {
    cpu_core.backward(view_of(X), view_of(dY), view_of(dX));
    gpu_core.backward(ConstMatrixView<float>{Cuda::data(dev_X), n, d_in}, ConstMatrixView<float>{Cuda::data(dev_dY), n, d_out},
                      MatrixView<float>{Cuda::data(dev_dX), n, d_in});
  }
  TINYLORA_CHECK_CLOSE(downloaded<float>(dev_dX), flat(dX), rtol, 1e-5);
  TINYLORA_CHECK_CLOSE(gpu_core.dK(), cpu_core.dK(), rtol, 1e-5);
  gpu_core.zero_grad();
  CHECK(gpu_core.dK() == std::vector<float>(4, 0.0f));

  // Delta W explicit, and merged into a weight of the policy's storage type
  TINYLORA_CHECK_CLOSE(flat(gpu_core.delta_w()), flat(cpu_core.delta_w()), rtol, 1e-6);
  using W = typename P::weight_type;
  auto const w0 = cast<W>(test::normal_vector(static_cast<std::size_t>(d_out * d_in), seed, 7));
  std::vector<W> w_cpu = w0;
  cpu_core.add_to(MatrixView<W>{w_cpu.data(), d_out, d_in}, 1.0f);
  auto dev_w = to_device(w0);
  gpu_core.add_to(MatrixView<W>{Cuda::data(dev_w), d_out, d_in}, 1.0f);
  std::vector<W> const w_gpu = Cuda::download(dev_w);
  std::vector<float> got, want;
  for (std::size_t i = 0; i < w0.size(); ++i) got.push_back(static_cast<float>(w_gpu[i])), want.push_back(static_cast<float>(w_cpu[i]));
  TINYLORA_CHECK_CLOSE(got, want, merge_rtol, 1e-5);
}
}  // namespace

TEST_CASE("adapters::LowRankCore runs on backend::Cuda unchanged: apply, backward and dK, Delta W, merge") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(64);
  check_low_rank_core<precision::Fp32>(seed, 1e-5);
  // Merging rounds W + Delta W to bf16: a sum that differs in its last float bits may round to the
  // neighbouring bf16 (one unit, 2^-8 relative).
  check_low_rank_core<precision::Bf16>(seed, 0x1p-8);
}

TEST_CASE("cuda::sample_tokens draws model::sample_token's tokens: greedy, temperature, top-k, top-p") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(65);
  Index const n = 6, V = 300;
  auto const logits = test::normal_vector(static_cast<std::size_t>(n * V), seed, 1, 3.0f);
  std::vector<std::uint64_t> const sequences{0, 1, 2, 7, 8, 31};  // slot ids key the draws
  auto dev_logits = to_device(logits);
  auto dev_sequences = to_device(sequences);
  auto token = Cuda::zeros<std::int32_t>(n);
  auto logprob = Cuda::zeros<float>(n), policy = Cuda::zeros<float>(n);
  struct Case {
    char const* name;
    model::SamplingOptions o;
  };
  std::vector<Case> const cases{{"greedy", {.greedy = true}},
                                {"temperature 0.7", {.temperature = 0.7f, .seed = 3}},
                                {"top-k 20", {.temperature = 1.0f, .top_k = 20, .seed = 4}},
                                {"top-p 0.9", {.temperature = 0.8f, .top_p = 0.9f, .seed = 5}},
                                {"top-k 50, top-p 0.8", {.temperature = 1.3f, .top_k = 50, .top_p = 0.8f, .seed = 6}}};
  int differing = 0;
  for (auto const& c : cases)
    for (std::uint64_t step = 0; step < 8; ++step) {
      INFO(c.name << ", step " << step);
      backend::cuda::sample_tokens(ConstMatrixView<float>{Cuda::data(dev_logits), n, V}, c.o, Cuda::data(dev_sequences), step,
                                   Cuda::data(token), Cuda::data(logprob), Cuda::data(policy));
      auto const got = downloaded<std::int32_t>(token);
      auto const got_lp = downloaded<float>(logprob), got_policy = downloaded<float>(policy);
      for (Index t = 0; t < n; ++t) {
        auto const want = model::sample_token(logits.data() + t * V, V, c.o, sequences[static_cast<std::size_t>(t)], step);
        CHECK(got[static_cast<std::size_t>(t)] == want.token);
        differing += got[static_cast<std::size_t>(t)] != want.token;
        CHECK(got_lp[static_cast<std::size_t>(t)] == doctest::Approx(want.logprob).epsilon(1e-5));
        CHECK(got_policy[static_cast<std::size_t>(t)] == doctest::Approx(want.policy_logprob).epsilon(1e-5));
      }
    }
  MESSAGE(differing << " of " << cases.size() * 8 * n << " draws differ");
  CHECK_THROWS_WITH_AS(backend::cuda::sample_tokens(ConstMatrixView<float>{Cuda::data(dev_logits), n, V},
                                                    model::SamplingOptions{.temperature = 0.0f}, Cuda::data(dev_sequences), 0,
                                                    Cuda::data(token), Cuda::data(logprob), Cuda::data(policy)),
                       doctest::Contains("temperature must be > 0"), Error);
}

namespace {
using CpuModel = model::Decoder<backend::Cpu, precision::Fp32>;
using Adapted = model::AdaptedModel<adapters::TinyLora<adapters::Paper>, tying::Tiling, precision::Fp32, backend::Cpu>;

/// AdaptedModel<Cpu>::loss_and_gradient() computed on backend::Cuda: decoder.hpp's forward written
/// out with Cuda::gemm, Cuda::add and the cuda:: kernels, every adapted projection's Delta W applied
/// by a LowRankCore<Cuda> holding the CPU module's L, K, R, its activations kept per layer; then the
/// backward written out with the cuda:: backward kernels, each module's dK reduced to theta as
/// TinyLora does, dv_k = s <dK, P_k>. Only weights and index arrays go up; NLL rows and dK come back.
std::pair<double, std::vector<float>> cuda_loss_and_gradient(CpuModel const& m, Adapted& adapted, model::PackedBatch const& batch,
                                                             std::vector<std::uint8_t> const& mask) {
  namespace gpu = backend::cuda;
  using Buffer = Cuda::Buffer<float>;
  auto const& c = m.config();
  auto const& w = m.weights();
  auto& set = adapted.adapter_set();
  Index const n = batch.n_tokens(), d = c.hidden, f = c.intermediate, V = c.vocab, n_seq = batch.n_seq();
  Index const qd = c.q_dim(), kvd = c.kv_dim();
  auto mat = [](Buffer& buf, Index rows, Index cols) { return MatrixView<float>{Cuda::data(buf), rows, cols}; };
  auto cmat = [](Buffer const& buf, Index rows, Index cols) { return ConstMatrixView<float>{Cuda::data(buf), rows, cols}; };
  auto upload_view = [](ConstMatrixView<float> v) { return to_device(std::vector<float>(v.data, v.data + v.rows * v.ld)); };
  auto ids = to_device(batch.ids);
  auto positions = to_device(batch.positions);
  auto offsets = to_device(batch.offsets);

  // The adapters: one LowRankCore<Cuda> per module, from the CPU module's factors and K.
  std::vector<adapters::LowRankCore<Cuda, precision::Fp32>> cores;
  std::vector<std::array<Index, model::kProjCount>> module_of(static_cast<std::size_t>(c.n_layers));
  for (auto& row : module_of) row.fill(-1);
  auto const& types = default_target_types();
  for (Index i = 0; i < set.n_modules(); ++i) {
    auto const& cpu_core = set.module(i).core();
    auto host = [](ConstMatrixView<float> v) { return HostMatrix(Eigen::Map<HostMatrix const>(v.data, v.rows, v.cols)); };
    cores.emplace_back(host(cpu_core.L()), host(cpu_core.R()));
    cores.back().set_K(std::span<float const>(cpu_core.K().data, static_cast<std::size_t>(cpu_core.r() * cpu_core.r())));
    auto const& info = set.modules()[static_cast<std::size_t>(i)];
    auto const p = std::find(types.begin(), types.end(), info.type) - types.begin();
    module_of[static_cast<std::size_t>(info.layer)][static_cast<std::size_t>(p)] = i;
  }

  struct Layer {  // what the backward needs, all (n, .) on the device
    Buffer x_in, h1, rstd1, q, k, v, attn, x_mid, h2, rstd2, gate, up, act;
    std::array<Buffer, model::kProjCount> weight;  // W_p (rows, cols)
  };
  std::vector<Layer> saved(static_cast<std::size_t>(c.n_layers));
  auto linear = [&](int l, int p, Buffer const& X, Index in) {
    auto const& L = w.layers[static_cast<std::size_t>(l)];
    auto const& W = L.proj[static_cast<std::size_t>(p)];
    Buffer Y = Cuda::zeros<float>(n * W.rows);
    Cuda::gemm(Op::N, Op::T, 1.0f, cmat(X, n, in), cmat(saved[static_cast<std::size_t>(l)].weight[static_cast<std::size_t>(p)], W.rows, W.cols),
               0.0f, mat(Y, n, W.rows));
    if (c.qkv_bias && p < 3) {
      auto const bias = to_device(L.qkv_bias[static_cast<std::size_t>(p)]);
      gpu::add_bias(mat(Y, n, W.rows), Cuda::data(bias));
    }
    Index const i = module_of[static_cast<std::size_t>(l)][static_cast<std::size_t>(p)];
    if (i >= 0) cores[static_cast<std::size_t>(i)].apply(cmat(X, n, in), mat(Y, n, W.rows));
    return Y;
  };
  // dX += dY W_p and the adapter's part (its dK accumulates).   dY: (n, rows), dX: (n, cols)
  auto linear_backward = [&](int l, int p, Buffer const& X, Buffer const& dY, Buffer& dX) {
    auto const& W = w.layers[static_cast<std::size_t>(l)].proj[static_cast<std::size_t>(p)];
    Cuda::gemm(Op::N, Op::N, 1.0f, cmat(dY, n, W.rows), cmat(saved[static_cast<std::size_t>(l)].weight[static_cast<std::size_t>(p)], W.rows, W.cols),
               1.0f, mat(dX, n, W.cols));
    Index const i = module_of[static_cast<std::size_t>(l)][static_cast<std::size_t>(p)];
    if (i >= 0) cores[static_cast<std::size_t>(i)].backward(cmat(X, n, W.cols), cmat(dY, n, W.rows), mat(dX, n, W.cols));
  };

  // Forward, keeping every layer's activations.
  Buffer x = Cuda::zeros<float>(n * d);  // (n, d)
  auto const embed = upload_view(w.embed.view());
  gpu::embedding_forward(cmat(embed, V, d), Cuda::data(ids), mat(x, n, d));
  for (int l = 0; l < c.n_layers; ++l) {
    auto const& L = w.layers[static_cast<std::size_t>(l)];
    Layer& a = saved[static_cast<std::size_t>(l)];
    for (int p = 0; p < model::kProjCount; ++p) a.weight[static_cast<std::size_t>(p)] = upload_view(L.proj[static_cast<std::size_t>(p)].view());
    auto const attn_norm = to_device(L.attn_norm), mlp_norm = to_device(L.mlp_norm);
    a.x_in = x;
    a.h1 = Cuda::zeros<float>(n * d);
    a.rstd1 = Cuda::zeros<float>(n);
    gpu::rmsnorm_forward(cmat(x, n, d), Cuda::data(attn_norm), c.rms_eps, mat(a.h1, n, d), Cuda::data(a.rstd1));
    a.q = linear(l, 0, a.h1, d);
    a.k = linear(l, 1, a.h1, d);
    a.v = linear(l, 2, a.h1, d);
    gpu::rope_forward(mat(a.q, n, qd), Cuda::data(positions), c.n_heads, c.head_dim, c.rope_theta);
    gpu::rope_forward(mat(a.k, n, kvd), Cuda::data(positions), c.n_kv_heads, c.head_dim, c.rope_theta);
    a.attn = Cuda::zeros<float>(n * qd);
    gpu::attention_forward(cmat(a.q, n, qd), cmat(a.k, n, kvd), cmat(a.v, n, kvd), Cuda::data(offsets), n_seq, c.n_heads,
                           c.n_kv_heads, c.head_dim, mat(a.attn, n, qd));
    Cuda::add(1.0f, cmat(linear(l, 3, a.attn, qd), n, d), mat(x, n, d));
    a.x_mid = x;
    a.h2 = Cuda::zeros<float>(n * d);
    a.rstd2 = Cuda::zeros<float>(n);
    gpu::rmsnorm_forward(cmat(x, n, d), Cuda::data(mlp_norm), c.rms_eps, mat(a.h2, n, d), Cuda::data(a.rstd2));
    a.gate = linear(l, 4, a.h2, d);
    a.up = linear(l, 5, a.h2, d);
    a.act = Cuda::zeros<float>(n * f);
    gpu::swiglu_forward(cmat(a.gate, n, f), cmat(a.up, n, f), mat(a.act, n, f));
    Cuda::add(1.0f, cmat(linear(l, 6, a.act, f), n, d), mat(x, n, d));
  }
  auto const final_norm = to_device(w.final_norm);
  Buffer y = Cuda::zeros<float>(n * d), rstd_final = Cuda::zeros<float>(n);
  gpu::rmsnorm_forward(cmat(x, n, d), Cuda::data(final_norm), c.rms_eps, mat(y, n, d), Cuda::data(rstd_final));
  auto const head = upload_view(w.head());
  Buffer logits = Cuda::zeros<float>(n * V);  // (n, V)
  Cuda::gemm(Op::N, Op::T, 1.0f, cmat(y, n, d), cmat(head, V, d), 0.0f, mat(logits, n, V));

  // The loss: row t predicts token t + 1 where that token is supervised; weight 0 elsewhere.
  std::vector<std::int32_t> targets(static_cast<std::size_t>(n), 0);
  std::vector<float> row_weight(static_cast<std::size_t>(n), 0.0f);
  for (Index s = 0; s < n_seq; ++s)
    for (Index t = batch.offsets[static_cast<std::size_t>(s)] + 1; t < batch.offsets[static_cast<std::size_t>(s) + 1]; ++t)
      if (mask[static_cast<std::size_t>(t)]) {
        targets[static_cast<std::size_t>(t - 1)] = batch.ids[static_cast<std::size_t>(t)];
        row_weight[static_cast<std::size_t>(t - 1)] = 1.0f;
      }
  double const count = std::count(row_weight.begin(), row_weight.end(), 1.0f);
  auto const dev_targets = to_device(targets);
  auto const dev_weight = to_device(row_weight);
  auto nll = Cuda::zeros<double>(n);
  gpu::cross_entropy_forward(cmat(logits, n, V), Cuda::data(dev_targets), Cuda::data(nll));
  std::vector<double> const row_nll = Cuda::download(nll);
  double sum = 0;
  for (Index t = 0; t < n; ++t) sum += row_weight[static_cast<std::size_t>(t)] * row_nll[static_cast<std::size_t>(t)];

  // Backward of the token mean.
  for (auto& core : cores) core.zero_grad();
  gpu::cross_entropy_backward(cmat(logits, n, V), Cuda::data(dev_targets), static_cast<float>(1.0 / count), mat(logits, n, V),
                              Cuda::data(dev_weight));
  Buffer dy = Cuda::zeros<float>(n * d);
  Cuda::gemm(Op::N, Op::N, 1.0f, cmat(logits, n, V), cmat(head, V, d), 0.0f, mat(dy, n, d));
  Buffer dx = Cuda::zeros<float>(n * d);  // dL/dx, the residual stream
  gpu::rmsnorm_backward(cmat(x, n, d), Cuda::data(final_norm), Cuda::data(rstd_final), cmat(dy, n, d), mat(dx, n, d));
  for (int l = c.n_layers - 1; l >= 0; --l) {
    auto const& L = w.layers[static_cast<std::size_t>(l)];
    Layer& a = saved[static_cast<std::size_t>(l)];
    auto const attn_norm = to_device(L.attn_norm), mlp_norm = to_device(L.mlp_norm);
    Buffer d_act = Cuda::zeros<float>(n * f);
    linear_backward(l, 6, a.act, dx, d_act);
    Buffer dgate = Cuda::zeros<float>(n * f), dup = Cuda::zeros<float>(n * f);
    gpu::swiglu_backward(cmat(a.gate, n, f), cmat(a.up, n, f), cmat(d_act, n, f), mat(dgate, n, f), mat(dup, n, f));
    Buffer dh2 = Cuda::zeros<float>(n * d);
    linear_backward(l, 4, a.h2, dgate, dh2);
    linear_backward(l, 5, a.h2, dup, dh2);
    gpu::rmsnorm_backward(cmat(a.x_mid, n, d), Cuda::data(mlp_norm), Cuda::data(a.rstd2), cmat(dh2, n, d), mat(dx, n, d));
    Buffer dattn = Cuda::zeros<float>(n * qd);
    linear_backward(l, 3, a.attn, dx, dattn);
    Buffer dq = Cuda::zeros<float>(n * qd), dk = Cuda::zeros<float>(n * kvd), dv = Cuda::zeros<float>(n * kvd);
    gpu::attention_backward(cmat(a.q, n, qd), cmat(a.k, n, kvd), cmat(a.v, n, kvd), Cuda::data(offsets), n_seq, c.n_heads,
                            c.n_kv_heads, c.head_dim, cmat(dattn, n, qd), mat(dq, n, qd), mat(dk, n, kvd), mat(dv, n, kvd));
    gpu::rope_backward(mat(dq, n, qd), Cuda::data(positions), c.n_heads, c.head_dim, c.rope_theta);
    gpu::rope_backward(mat(dk, n, kvd), Cuda::data(positions), c.n_kv_heads, c.head_dim, c.rope_theta);
    Buffer dh1 = Cuda::zeros<float>(n * d);
    linear_backward(l, 0, a.h1, dq, dh1);
    linear_backward(l, 1, a.h1, dk, dh1);
    linear_backward(l, 2, a.h1, dv, dh1);
    gpu::rmsnorm_backward(cmat(a.x_in, n, d), Cuda::data(attn_norm), Cuda::data(a.rstd1), cmat(dh1, n, d), mat(dx, n, d));
  }

  // theta: dv_k = s <dK, P_k> of every module, summed into its tie group's slots.
  std::vector<float> grad(static_cast<std::size_t>(set.count()), 0.0f);
  for (Index i = 0; i < set.n_modules(); ++i) {
    auto const& module = set.module(i);
    std::vector<float> const dK = cores[static_cast<std::size_t>(i)].dK();
    auto const [first, last] = set.slots(set.group_of(i));
    Index const rr = static_cast<Index>(dK.size());
    for (Index k = first; k < last; ++k) {
      double acc = 0;
      for (Index j = 0; j < rr; ++j) acc += double{dK[static_cast<std::size_t>(j)]} * module.projection().data()[(k - first) * rr + j];
      grad[static_cast<std::size_t>(k)] += module.scale() * static_cast<float>(acc);
    }
  }
  return {sum / count, grad};
}
}  // namespace

TEST_CASE("the tiny Llama and Qwen2 fixtures' masked loss on backend::Cuda equals Decoder<Cpu>::loss") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(66);
  for (char const* name : {"tiny_llama", "tiny_qwen2"}) {
    INFO("model " << std::string(name));
    auto m = CpuModel::load_hf(test::source_dir() / "tests/reference/fixtures" / name);
    CounterRng const rng(seed, streams::of(streams::kTest, 1));
    model::PackedBatch batch;
    std::vector<std::uint8_t> mask;
    std::uint64_t draw = 0;
    for (Index len : {Index{13}, Index{5}, Index{9}}) {
      std::vector<std::int32_t> seq;
      for (Index t = 0; t < len; ++t) {
        seq.push_back(static_cast<std::int32_t>(rng.bits64(draw++) % static_cast<std::uint64_t>(m.config().vocab)));
        mask.push_back(t >= len / 3 ? 1 : 0);
      }
      batch.add(seq);
    }
    double const want = m.loss(batch, mask).mean();  // the base model, before any adapter
    // The composed forward below runs with TinyLoRA attached at theta = 0, where Delta W = 0.
    Adapted adapted(m, adapters::TinyLora<adapters::Paper>{}, tying::Tiling{3});
    double const got = cuda_loss_and_gradient(m, adapted, batch, mask).first;
    MESSAGE(std::string(name) << ": loss " << got << " on " << Cuda::name << ", " << want << " on cpu, relative difference "
                              << std::abs(got - want) / want);
    CHECK(got == doctest::Approx(want).epsilon(1e-4));
  }
}

TEST_CASE("TinyLoRA's theta-gradient through the whole tiny Llama and Qwen2 on backend::Cuda equals the CPU's") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(67);
  for (char const* name : {"tiny_llama", "tiny_qwen2"}) {
    INFO("model " << std::string(name));
    auto m = CpuModel::load_hf(test::source_dir() / "tests/reference/fixtures" / name);
    adapters::TinyLora<adapters::Paper> kind;
    kind.u = 2;
    Adapted adapted(m, kind, tying::Tiling{3});
    CounterRng const rng(seed, streams::of(streams::kTest, 2));
    std::vector<float> theta(static_cast<std::size_t>(adapted.count()));
    for (std::size_t i = 0; i < theta.size(); ++i) theta[i] = 0.3f * rng.normal(i);
    adapted.set_theta(theta);
    model::PackedBatch batch;
    std::vector<std::uint8_t> mask;
    std::uint64_t draw = 0;
    for (Index len : {Index{11}, Index{6}, Index{8}}) {
      std::vector<std::int32_t> seq;
      for (Index t = 0; t < len; ++t) {
        seq.push_back(static_cast<std::int32_t>(rng.bits64(1000 + draw++) % static_cast<std::uint64_t>(m.config().vocab)));
        mask.push_back(t >= len / 2 ? 1 : 0);
      }
      batch.add(seq);
    }
    auto const [cpu_loss, cpu_grad] = adapted.loss_and_gradient(batch, mask);
    auto const [loss, grad] = cuda_loss_and_gradient(m, adapted, batch, mask);
    double const err = test::relative_error(grad, cpu_grad);
    MESSAGE(std::string(name) << ": " << theta.size() << " scalars, loss " << loss << " (cpu " << cpu_loss.mean()
                              << "), gradient relative error " << err << ", |g| " << optim::global_norm(cpu_grad));
    CHECK(loss == doctest::Approx(cpu_loss.mean()).epsilon(1e-4));
    CHECK(err <= 1e-4);
    CHECK(optim::global_norm(cpu_grad) > 1e-6);
  }
}
