// tinylora/backend/cpu/cpu.hpp: the CPU backend: std::vector storage, fp32 GEMM (backend/cpu/gemm.hpp:
// OpenBLAS's OpenMP build, or Eigen), the decoder's kernels (backend/cpu/kernels*.hpp), token
// sampling (backend/cpu/sampling.hpp) and, for decode steps, weights packed into panels
// (backend/cpu/packed_gemm.hpp). Activations are Eigen row-major matrices (HostMatrix).
// Threading: a batch of several sequences is cut into one part per thread (max_parts()) and each
// part runs the whole stack with every operation serial inside it (core/parallel.hpp).
#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "tinylora/backend/concepts.hpp"
#include "tinylora/backend/cpu/gemm.hpp"
#include "tinylora/backend/cpu/kernels.hpp"
#include "tinylora/backend/cpu/kernels_backward.hpp"
#include "tinylora/backend/cpu/packed_gemm.hpp"
#include "tinylora/backend/cpu/sampling.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/core/parallel.hpp"

namespace tinylora::backend {

struct Cpu : cpu::Gemm {
  static constexpr std::string_view name = "cpu";

  template <class T>
  using Buffer = std::vector<T>;

  template <class T>
  static Buffer<T> zeros(Index n) {
    return Buffer<T>(static_cast<std::size_t>(n), T(0.0f));
  }
  template <class T>
  static Buffer<T> upload(std::span<T const> host) {
    return Buffer<T>(host.begin(), host.end());
  }
  template <class T>
  static std::vector<T> download(Buffer<T> const& buf) {
    return buf;
  }
  template <class T>
  static T* data(Buffer<T>& buf) {
    return buf.data();
  }
  template <class T>
  static T const* data(Buffer<T> const& buf) {
    return buf.data();
  }
  template <class T>
  static Index size(Buffer<T> const& buf) {
    return static_cast<Index>(buf.size());
  }
  static void synchronize() {}

  // ---- the decoder's operations (the second table of backend/concepts.hpp)
  using Matrix = HostMatrix;
  static Matrix matrix(Index rows, Index cols) { return Matrix(rows, cols); }  // uninitialized
  static Matrix zero_matrix(Index rows, Index cols) { return Matrix::Zero(rows, cols); }
  static HostMatrix to_host(Matrix const& m) { return m; }
  static HostMatrix to_host(Matrix&& m) { return std::move(m); }
  static void copy(ConstMatrixView<float> src, MatrixView<float> dst) {
    TINYLORA_CHECK(src.rows == dst.rows && src.cols == dst.cols, "Cpu::copy(): ", src.rows, "x", src.cols, " into ", dst.rows,
                   "x", dst.cols);
    eigen(dst) = eigen(src);
  }
  static Index max_parts() { return parallel::available_threads(); }

  template <class W>
  static void embedding(ConstMatrixView<W> table, std::int32_t const* ids, MatrixView<float> out) {
    cpu::embedding_forward(table, std::span<std::int32_t const>(ids, static_cast<std::size_t>(out.rows)), out);
  }
  template <class W>
  static void rmsnorm(ConstMatrixView<float> x, W const* weight, float eps, MatrixView<float> y, float* rstd) {
    cpu::rmsnorm_forward(x, weight, eps, y, rstd != nullptr ? std::span<float>(rstd, static_cast<std::size_t>(x.rows)) : std::span<float>());
  }
  template <class W>
  static void rmsnorm_backward(ConstMatrixView<float> x, W const* weight, float const* rstd, ConstMatrixView<float> dy,
                               MatrixView<float> dx) {
    cpu::rmsnorm_backward(x, weight, std::span<float const>(rstd, static_cast<std::size_t>(x.rows)), dy, dx);
  }
  static void rope(MatrixView<float> x, std::int32_t const* positions, int n_heads, Index head_dim, float theta) {
    cpu::rope_forward(x, positions_of(positions, x.rows), n_heads, head_dim, theta);
  }
  static void rope_backward(MatrixView<float> dx, std::int32_t const* positions, int n_heads, Index head_dim, float theta) {
    cpu::rope_backward(dx, positions_of(positions, dx.rows), n_heads, head_dim, theta);
  }
  static void attention(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v, Index const* offsets,
                        Index n_seq, int n_heads, int n_kv_heads, Index head_dim, MatrixView<float> out) {
    cpu::attention_forward(q, k, v, offsets_of(offsets, n_seq), n_heads, n_kv_heads, head_dim, out);
  }
  static void attention_backward(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                                 Index const* offsets, Index n_seq, int n_heads, int n_kv_heads, Index head_dim,
                                 ConstMatrixView<float> dout, MatrixView<float> dq, MatrixView<float> dk, MatrixView<float> dv) {
    cpu::attention_backward(q, k, v, offsets_of(offsets, n_seq), n_heads, n_kv_heads, head_dim, dout, dq, dk, dv);
  }
  static void attention_decode(ConstMatrixView<float> q, ConstMatrixView<float> cache_k, ConstMatrixView<float> cache_v,
                               Index capacity, Index const* lengths, Index const* slots, int n_heads, int n_kv_heads,
                               Index head_dim, MatrixView<float> out) {
    auto const n = static_cast<std::size_t>(q.rows);
    cpu::attention_decode(q, cache_k, cache_v, capacity, std::span<Index const>(lengths, n), std::span<Index const>(slots, n),
                          n_heads, n_kv_heads, head_dim, out);
  }
  static void swiglu(ConstMatrixView<float> gate, ConstMatrixView<float> up, MatrixView<float> out) {
    cpu::swiglu_forward(gate, up, out);
  }
  static void swiglu_backward(ConstMatrixView<float> gate, ConstMatrixView<float> up, ConstMatrixView<float> dout,
                              MatrixView<float> dgate, MatrixView<float> dup) {
    cpu::swiglu_backward(gate, up, dout, dgate, dup);
  }
  template <class W>
  static void add_bias(MatrixView<float> y, W const* bias) {
    cpu::add_bias(y, bias);
  }
  /// dst[i, :] = src[rows[i], :].   src: (n, d), rows: (m), dst: (m, d)
  static void gather_rows(ConstMatrixView<float> src, Index const* rows, MatrixView<float> dst) {
    TINYLORA_CHECK(src.cols == dst.cols, "Cpu::gather_rows(): ", src.cols, " columns into ", dst.cols);
    for (Index i = 0; i < dst.rows; ++i) std::copy_n(src.data + rows[i] * src.ld, src.cols, dst.data + i * dst.ld);
  }
  /// dst[rows[i], :] = src[i, :], or += with `accumulate`; rows distinct.   src: (m, d), rows: (m), dst: (n, d)
  static void scatter_rows(ConstMatrixView<float> src, Index const* rows, MatrixView<float> dst, bool accumulate = false) {
    TINYLORA_CHECK(src.cols == dst.cols, "Cpu::scatter_rows(): ", src.cols, " columns into ", dst.cols);
    for (Index i = 0; i < src.rows; ++i) {
      float const* from = src.data + i * src.ld;
      float* to = dst.data + rows[i] * dst.ld;
      if (accumulate)
        for (Index j = 0; j < src.cols; ++j) to[j] += from[j];
      else
        std::copy_n(from, src.cols, to);
    }
  }
  static void cross_entropy(ConstMatrixView<float> logits, std::int32_t const* targets, double* nll) {
    auto const n = static_cast<std::size_t>(logits.rows);
    std::vector<double> const out = cpu::cross_entropy_forward(logits, std::span<std::int32_t const>(targets, n));
    std::copy(out.begin(), out.end(), nll);
  }
  static void cross_entropy_backward(ConstMatrixView<float> z, std::int32_t const* targets, float scale, MatrixView<float> dlogits,
                                     float const* weights = nullptr) {
    auto const n = static_cast<std::size_t>(z.rows);
    cpu::cross_entropy_backward(z, std::span<std::int32_t const>(targets, n), scale, dlogits,
                                weights != nullptr ? std::span<float const>(weights, n) : std::span<float const>());
  }
  static void divide(MatrixView<float> x, float by) { eigen(x) /= by; }
  template <class W>
  static void head_backward(ConstMatrixView<float> dlogits, ConstMatrixView<W> E_head, MatrixView<float> dh) {
    cpu::head_backward(dlogits, E_head, dh);
  }
  static void sample_tokens(ConstMatrixView<float> logits, SamplingOptions const& o, std::uint64_t const* sequences,
                            std::uint64_t step, std::int32_t* token, float* logprob, float* policy_logprob) {
    cpu::sample_tokens(logits, o, sequences, step, token, logprob, policy_logprob);
  }

  // ---- optional: decode steps multiply a few rows by every weight; fp32 weights packed into panels
  // once (as much memory as the weights) make those products ~2x faster than a general GEMM, which
  // would repack them on every call. The decoder uses these when the backend has them.
  using PackedWeight = cpu::PanelPackedWeight;
  static PackedWeight pack(ConstMatrixView<float> W) { return PackedWeight(W); }
  /// Y = X W^T through W's packed copy.   X: (n, d_in), Y: (n, d_out)
  static void gemm_packed(ConstMatrixView<float> X, PackedWeight const& W, MatrixView<float> Y) { cpu::gemm_packed(X, W, Y); }

 private:
  static std::span<std::int32_t const> positions_of(std::int32_t const* p, Index n) {
    return {p, static_cast<std::size_t>(n)};
  }
  static std::span<Index const> offsets_of(Index const* offsets, Index n_seq) {
    return {offsets, static_cast<std::size_t>(n_seq + 1)};
  }
};

static_assert(Backend<Cpu>, "backend::Cpu must satisfy the Backend concept");

}  // namespace tinylora::backend
