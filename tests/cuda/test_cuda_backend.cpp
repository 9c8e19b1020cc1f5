// tests/cuda/test_cuda_backend.cpp: backend::Cuda against backend::Cpu and plain double loops, on
// identical inputs: gemm for every transpose and operand precision (strided views, beta = 0 over
// NaN, k = 0), add with rounding into 16-bit storage, fill, transfers, and the errors; and the
// decoder's forward and backward operations (backend/cuda/kernels*.cuh) against backend/cpu/'s; and
// the adapters' low-rank core (apply, backward with its dK, Delta W, merge) on both backends; and
// token sampling on the device against model::sample_token; and Decoder<Cuda> (model/decoder.hpp's
// one decoder over backend::Cuda's operations) against Decoder<Cpu> on the tiny Llama and Qwen2 fixtures: loss, logits, log-probs,
// TinyLoRA's theta-gradient through AdaptedModel, a policy-gradient objective, merge, generation.
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
#include "tinylora/optim/optimizers.hpp"
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

TEST_CASE("Cuda::Buffer takes its memory from the run's pool: a block freed is reused for the next buffer of its size") {
  if (!gpu_or_skip()) return;
  // 100 floats fall in one of the pool's size buckets; 4M floats (16 MiB) are above its largest
  // bucket, and such blocks are cached and reused too. Either way no second device allocation.
  for (Index n : {Index{100}, Index{1} << 22}) {
    INFO("n = " << n);
    float const* first = nullptr;
    {
      auto a = Cuda::zeros<float>(n);
      first = Cuda::data(a);
    }
    auto b = Cuda::zeros<float>(n);
    CHECK(Cuda::data(b) == first);
    auto c = Cuda::zeros<float>(n);  // b still holds that block: c gets another
    CHECK(Cuda::data(c) != first);
  }
}

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
using CudaModel = model::Decoder<backend::Cuda, precision::Fp32>;
template <class B>
using Adapted = model::AdaptedModel<Recipe<adapters::TinyLora<adapters::Paper>, tying::Tiling, precision::Fp32, optim::AdamW, B>>;

std::filesystem::path fixture(char const* name) { return test::source_dir() / "tests/reference/fixtures" / name; }

/// Sequences of the given lengths with random tokens; token t of a sequence of length len is
/// supervised when t >= len * from.
std::pair<model::PackedBatch, std::vector<std::uint8_t>> random_batch(CounterRng const& rng, std::uint64_t first_draw, Index vocab,
                                                                      std::vector<Index> const& lengths, double from) {
  model::PackedBatch batch;
  std::vector<std::uint8_t> mask;
  std::uint64_t draw = first_draw;
  for (Index len : lengths) {
    std::vector<std::int32_t> seq;
    for (Index t = 0; t < len; ++t) {
      seq.push_back(static_cast<std::int32_t>(rng.bits64(draw++) % static_cast<std::uint64_t>(vocab)));
      mask.push_back(static_cast<double>(t) >= static_cast<double>(len) * from ? 1 : 0);
    }
    batch.add(seq);
  }
  return {batch, mask};
}

double max_relative(HostMatrix const& got, HostMatrix const& want) {
  return static_cast<double>((got - want).cwiseAbs().maxCoeff()) / std::max(1e-30, static_cast<double>(want.cwiseAbs().maxCoeff()));
}
}  // namespace

TEST_CASE("Decoder<Cuda> equals Decoder<Cpu> on the tiny Llama and Qwen2 fixtures: loss, logits, hidden states, log-probs") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(66);
  for (char const* name : {"tiny_llama", "tiny_qwen2"}) {
    INFO("model " << std::string(name));
    auto const cpu = CpuModel::load_hf(fixture(name));
    auto const gpu = CudaModel::load_hf(fixture(name));
    CounterRng const rng(seed, streams::of(streams::kTest, 1));
    auto const [batch, mask] = random_batch(rng, 0, cpu.config().vocab, {13, 5, 9}, 1.0 / 3.0);
    double const want = cpu.loss(batch, mask).mean(), got = gpu.loss(batch, mask, /*chunk=*/4).mean();
    MESSAGE(std::string(name) << ": loss " << got << " on " << Cuda::name << ", " << want << " on cpu, relative difference "
                              << std::abs(got - want) / want);
    CHECK(got == doctest::Approx(want).epsilon(1e-5));
    CHECK(gpu.loss(batch, mask).n_tokens == cpu.loss(batch, mask).n_tokens);
    double const e_logits = max_relative(gpu.logits(batch), cpu.logits(batch));
    double const e_hidden = max_relative(gpu.hidden_states(batch), cpu.hidden_states(batch));
    MESSAGE("logits " << e_logits << ", hidden states " << e_hidden << " (max relative difference)");
    CHECK(e_logits <= 1e-5);
    CHECK(e_hidden <= 1e-5);
    auto const lp_cpu = cpu.token_logprobs(batch, mask, 0.7f), lp_gpu = gpu.token_logprobs(batch, mask, 0.7f, /*chunk=*/3);
    CHECK(lp_gpu.size() == lp_cpu.size());
    CHECK(test::relative_error(lp_gpu, lp_cpu) <= 1e-5);
  }
}

TEST_CASE("AdaptedModel on backend::Cuda: TinyLoRA's loss, theta-gradient and policy-gradient objective equal the CPU's") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(67);
  for (char const* name : {"tiny_llama", "tiny_qwen2"}) {
    INFO("model " << std::string(name));
    auto cpu = CpuModel::load_hf(fixture(name));
    auto gpu = CudaModel::load_hf(fixture(name));
    adapters::TinyLora<adapters::Paper> kind;
    kind.u = 2;
    Adapted<Cpu> on_cpu(cpu, kind, tying::Tiling{3});
    Adapted<Cuda> on_gpu(gpu, kind, tying::Tiling{3});
    CHECK(on_gpu.count() == on_cpu.count());
    CounterRng const rng(seed, streams::of(streams::kTest, 2));
    std::vector<float> theta(static_cast<std::size_t>(on_cpu.count()));
    for (std::size_t i = 0; i < theta.size(); ++i) theta[i] = 0.3f * rng.normal(i);
    on_cpu.set_theta(theta);
    on_gpu.set_theta(theta);
    auto const [batch, mask] = random_batch(rng, 1000, cpu.config().vocab, {11, 6, 8}, 0.5);
    auto const [cpu_loss, cpu_grad] = on_cpu.loss_and_gradient(batch, mask);
    auto const [gpu_loss, gpu_grad] = on_gpu.loss_and_gradient(batch, mask);
    double const err = test::relative_error(gpu_grad, cpu_grad);
    MESSAGE(std::string(name) << ": " << theta.size() << " scalars, loss " << gpu_loss.mean() << " (cpu " << cpu_loss.mean()
                              << "), gradient relative error " << err << ", |g| " << optim::global_norm(cpu_grad));
    CHECK(gpu_loss.mean() == doctest::Approx(cpu_loss.mean()).epsilon(1e-5));
    CHECK(err <= 1e-4);
    CHECK(optim::global_norm(cpu_grad) > 1e-6);
    // A policy-gradient objective J = sum_t a_t logp_t at T = 0.8: dJ/dlogp = a.
    auto objective = [](std::span<float const> logp) {
      std::vector<float> a(logp.size());
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = (i % 3 == 0) ? 1.0f : -0.5f;
      return a;
    };
    auto const [cpu_lp, cpu_g] = on_cpu.objective_and_gradient(batch, mask, 0.8f, objective);
    auto const [gpu_lp, gpu_g] = on_gpu.objective_and_gradient(batch, mask, 0.8f, objective);
    CHECK(test::relative_error(gpu_lp, cpu_lp) <= 1e-5);
    double const err_j = test::relative_error(gpu_g, cpu_g);
    MESSAGE("objective gradient relative error " << err_j);
    CHECK(err_j <= 1e-4);
    // merge() writes Delta W into the device weights: the adapter-free forward gives the same loss.
    double const fused = on_gpu.model().loss(batch, mask).mean();
    on_gpu.merge();
    double const merged = gpu.loss(batch, mask).mean();
    on_gpu.unmerge();
    CHECK(merged == doctest::Approx(fused).epsilon(1e-5));
    CHECK(gpu.loss(batch, mask).mean() == doctest::Approx(fused).epsilon(1e-6));
  }
}

TEST_CASE("generate() on Decoder<Cuda> samples on the device and draws Decoder<Cpu>'s completions") {
  if (!gpu_or_skip()) return;
  auto const seed = test::seed(68);
  auto const cpu = CpuModel::load_hf(fixture("tiny_llama"));
  auto const gpu = CudaModel::load_hf(fixture("tiny_llama"));
  CounterRng const rng(seed, streams::of(streams::kTest, 3));
  std::vector<std::vector<std::int32_t>> prompts;
  for (Index len : {Index{4}, Index{7}}) {
    std::vector<std::int32_t> p;
    for (Index t = 0; t < len; ++t) p.push_back(static_cast<std::int32_t>(rng.bits64(static_cast<std::uint64_t>(len * 10 + t)) % 200));
    prompts.push_back(p);
  }
  model::SamplingOptions greedy{.greedy = true};
  model::SamplingOptions nucleus{.temperature = 0.9f, .top_k = 40, .top_p = 0.9f, .seed = seed};
  for (auto const& sampling : {greedy, nucleus}) {
    // The stop token: one the CPU draws mid-way, so that completions stop at different steps.
    model::GenerationOptions o{.max_new_tokens = 12, .n_samples = 3, .stop_ids = {}, .sampling = sampling};
    o.stop_ids = {model::generate(cpu, prompts, o)[1].tokens[4]};
    auto const want = model::generate(cpu, prompts, o);
    auto const got = model::generate(gpu, prompts, o);
    REQUIRE(got.size() == want.size());
    Index tokens = 0, stopped = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].tokens == want[i].tokens);
      CHECK(got[i].stopped == want[i].stopped);
      REQUIRE(got[i].logprobs.size() == want[i].logprobs.size());
      for (std::size_t t = 0; t < got[i].logprobs.size(); ++t) {
        CHECK(got[i].logprobs[t] == doctest::Approx(want[i].logprobs[t]).epsilon(1e-4));
        CHECK(got[i].policy_logprobs[t] == doctest::Approx(want[i].policy_logprobs[t]).epsilon(1e-4));
      }
      tokens += static_cast<Index>(got[i].tokens.size());
      stopped += got[i].stopped;
    }
    CHECK(stopped >= 1);
    MESSAGE(std::string(sampling.greedy ? "greedy" : "temperature 0.9, top-k 40, top-p 0.9") << ": " << tokens << " tokens in "
                                                                                           << got.size() << " completions, "
                                                                                           << stopped << " stopped");
  }
}

TEST_CASE("Decoder<Cuda> rejects bad input with the host decoder's messages") {
  if (!gpu_or_skip()) return;
  auto const gpu = CudaModel::load_hf(fixture("tiny_llama"));
  model::PackedBatch batch;
  std::vector<std::int32_t> const bad{1, 2, static_cast<std::int32_t>(gpu.config().vocab)};
  batch.add(bad);
  std::vector<std::uint8_t> const mask{0, 1, 1};
  CHECK_THROWS_WITH_AS(gpu.loss(batch, mask), doctest::Contains("outside the vocabulary"), Error);
  CHECK_THROWS_WITH_AS(gpu.loss(batch, std::vector<std::uint8_t>{1}), doctest::Contains("mask has 1 entries for 3 tokens"), Error);
  CudaModel::Cache cache(gpu.config().n_layers, 1, 2, gpu.config().kv_dim());
  std::vector<std::int32_t> const one{5};
  std::vector<Index> const slot{0};
  gpu.decode_step(one, slot, cache);
  gpu.decode_step(one, slot, cache);
  CHECK_THROWS_WITH_AS(gpu.decode_step(one, slot, cache), doctest::Contains("is full (capacity 2)"), Error);
}
