// tinylora/backend/concepts.hpp: the Backend axis: where tensors live and who does the arithmetic.
// Callers (adapters, the model, trainers) only ever use the expressions below, so a CUDA backend
// satisfies the same concept with device buffers and cuBLAS, and no caller changes.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "tinylora/backend/sampling.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/core/tensor.hpp"
#include "tinylora/precision/types.hpp"

namespace tinylora::backend {

/// Backend<B>. Let T be any of float, bf16, fp16; `buf` a `B::Buffer<T>`; `host` a `std::span<T const>`;
/// `A`, `Bm` read-only views of storage types TA, TB; `C` a `MatrixView<float>`; all views point to
/// memory owned by this backend's buffers.
///
/// | expression                              | returns               | semantics                                                        |
/// |-----------------------------------------|-----------------------|------------------------------------------------------------------|
/// | `B::name`                               | `std::string_view`    | "cpu", "cuda", ... (recorded in result files)                    |
/// | `B::Buffer<T>`                          | type                  | owning contiguous storage of T in the backend's memory; movable  |
/// | `B::template zeros<T>(n)`               | `Buffer<T>`           | n elements, all zero                                             |
/// | `B::upload(host)`                       | `Buffer<T>`           | a copy of host numbers in backend memory                         |
/// | `B::download(buf)`                      | `std::vector<T>`      | a host copy of the buffer (used outside token loops only)        |
/// | `B::data(buf)`                          | `T*`                  | pointer for building views; valid until the buffer is destroyed  |
/// | `B::size(buf)`                          | `Index`               | number of elements                                               |
/// | `B::gemm(opA, opB, alpha, A, Bm, beta, C)` | `void`             | C = alpha * op(A) op(Bm) + beta * C, fp32 accumulation; when beta == 0, C is not read (may hold NaN) |
/// | `B::add(alpha, X, Y)`                   | `void`                | Y(i,j) = T(Y(i,j) + alpha * X(i,j)) for X float, Y of storage type T (round to nearest even) |
/// | `B::fill(C, value)`                     | `void`                | every element of the view set to value                           |
/// | `B::synchronize()`                      | `void`                | returns when all queued work is done (no-op on the CPU)          |
///
/// The decoder's operations (model/decoder.hpp is written once over these; `m` a `B::Matrix`, W the
/// weights' storage type, every pointer into this backend's memory, index arrays uploaded by the caller
/// with B::upload):
///
/// | expression                                               | semantics                                                          |
/// |----------------------------------------------------------|--------------------------------------------------------------------|
/// | `B::Matrix`                                              | dense row-major float activations; copyable; `m.rows()`, `m.cols()`, `view_of(m)` |
/// | `B::matrix(r, c)`, `B::zero_matrix(r, c)`                | a new (r, c) Matrix: contents unspecified / all zero               |
/// | `B::to_host(m)`                                          | `HostMatrix` copy (outside token loops, or the result a caller asked for) |
/// | `B::copy(src, dst)`                                      | dst = src, views of one shape (row blocks: `view.row_block(first, count)`) |
/// | `B::max_parts()`                                         | how many parts of a batch may run the whole stack side by side (threads on the CPU, 1 on a GPU) |
/// | `B::embedding(E, ids, out)`                              | out[t] = E[ids[t]] (ids checked by the caller)                     |
/// | `B::rmsnorm(x, g, eps, y, rstd)` / `_backward(x, g, rstd, dy, dx)` | y = x / rms(x) * g, rstd (n) or null / dx += dRMSNorm^T dy |
/// | `B::rope(x, pos, H, hd, theta)` / `B::rope_backward`     | rotate-half RoPE in place / its transpose                          |
/// | `B::attention(q, k, v, offsets, n_seq, H, H_kv, hd, out)` | causal GQA over packed sequences                                  |
/// | `B::attention_backward(q, k, v, offsets, n_seq, H, H_kv, hd, dout, dq, dk, dv)` | its gradients (overwrite)          |
/// | `B::attention_decode(q, K, V, capacity, lengths, slots, H, H_kv, hd, out)` | one query row per sequence against the cache |
/// | `B::swiglu(gate, up, out)` / `_backward(gate, up, dout, dgate, dup)` | out = silu(gate) up / its gradients (overwrite)        |
/// | `B::add_bias(y, bias)`                                   | y[t] += bias                                                       |
/// | `B::gather_rows(src, rows, dst)` / `B::scatter_rows(src, rows, dst, accumulate)` | dst[i] = src[rows[i]] / dst[rows[i]] (+)= src[i] |
/// | `B::cross_entropy(z, targets, nll)`                      | nll[t] = logsumexp(z[t]) - z[t, targets[t]], in double             |
/// | `B::cross_entropy_backward(z, targets, scale, dz, w)`    | dz[t] = scale w_t (softmax(z[t]) - onehot), w null: 1 (overwrite, may alias z) |
/// | `B::divide(x, by)`                                       | x /= by element by element (logits / T)                           |
/// | `B::head_backward(dlogits, E_head, dh)`                  | dh += dlogits E_head (bounded scratch for 16-bit E_head)           |
/// | `B::sample_tokens(z, o, sequences, step, token, logprob, policy_logprob)` | one token per row, as backend/cpu/sampling.hpp's sample_token draws it |
///
/// Every entry is a static member, so a backend is a stateless tag type chosen at compile time:
/// backend::Cpu (backend/cpu/cpu.hpp, host memory, OpenBLAS) and backend::Cuda (backend/cuda/cuda.cuh,
/// device memory, cuBLAS and Thrust). Nothing above the backend (adapters, the decoder, AdaptedModel,
/// trainers, generate()) uses anything else of it, so a new backend is these two tables, not a new decoder.
template <class B>
concept Backend = requires(typename B::template Buffer<float> buf, typename B::template Buffer<bf16> buf16,
                           std::span<float const> host, ConstMatrixView<float> A, ConstMatrixView<bf16> A16,
                           ConstMatrixView<fp16> Ah, MatrixView<float> C, MatrixView<bf16> C16,
                           MatrixView<fp16> Ch, float alpha, Index n) {
  { B::name } -> std::convertible_to<std::string_view>;
  { B::template zeros<float>(n) } -> std::same_as<typename B::template Buffer<float>>;
  { B::template zeros<bf16>(n) } -> std::same_as<typename B::template Buffer<bf16>>;
  { B::upload(host) } -> std::same_as<typename B::template Buffer<float>>;
  { B::download(buf) } -> std::same_as<std::vector<float>>;
  { B::data(buf) } -> std::same_as<float*>;
  { B::data(buf16) } -> std::same_as<bf16*>;
  { B::size(buf) } -> std::same_as<Index>;
  B::gemm(Op::N, Op::T, alpha, A, A, alpha, C);
  B::gemm(Op::N, Op::T, alpha, A, A16, alpha, C);
  B::gemm(Op::N, Op::N, alpha, A, Ah, alpha, C);
  B::add(alpha, A, C);
  B::add(alpha, A, C16);
  B::add(alpha, A, Ch);
  B::fill(C, alpha);
  B::synchronize();
} && requires(typename B::Matrix m, typename B::Matrix const cm, ConstMatrixView<float> x, MatrixView<float> y,
              float const* w, float* f, std::int32_t const* ids, std::int32_t* out_ids, Index const* rows, double* nll,
              std::uint64_t const* sequences, SamplingOptions const& o, Index n, int heads, float eps) {
  { B::matrix(n, n) } -> std::same_as<typename B::Matrix>;
  { B::zero_matrix(n, n) } -> std::same_as<typename B::Matrix>;
  { cm.rows() } -> std::convertible_to<Index>;
  { cm.cols() } -> std::convertible_to<Index>;
  { view_of(m) } -> std::same_as<MatrixView<float>>;
  { view_of(cm) } -> std::same_as<ConstMatrixView<float>>;
  { B::to_host(cm) } -> std::same_as<HostMatrix>;
  B::copy(x, y);
  { B::max_parts() } -> std::convertible_to<Index>;
  B::embedding(x, ids, y);
  B::rmsnorm(x, w, eps, y, f);
  B::rmsnorm_backward(x, w, w, x, y);
  B::rope(y, ids, heads, n, eps);
  B::rope_backward(y, ids, heads, n, eps);
  B::attention(x, x, x, rows, n, heads, heads, n, y);
  B::attention_backward(x, x, x, rows, n, heads, heads, n, x, y, y, y);
  B::attention_decode(x, x, x, n, rows, rows, heads, heads, n, y);
  B::swiglu(x, x, y);
  B::swiglu_backward(x, x, x, y, y);
  B::add_bias(y, w);
  B::gather_rows(x, rows, y);
  B::scatter_rows(x, rows, y, true);
  B::cross_entropy(x, ids, nll);
  B::cross_entropy_backward(x, ids, eps, y, w);
  B::divide(y, eps);
  B::head_backward(x, x, y);
  B::sample_tokens(x, o, sequences, n, out_ids, f, f);
};

}  // namespace tinylora::backend
