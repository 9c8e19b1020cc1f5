// tinylora/backend/concepts.hpp: the Backend axis: where tensors live and who does the arithmetic.
// Callers (adapters, the model, trainers) only ever use the expressions below, so a CUDA backend
// satisfies the same concept with device buffers and cuBLAS, and no caller changes.
#pragma once

#include <concepts>
#include <span>
#include <string_view>
#include <vector>

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
/// Every entry is a static member, so a backend is a stateless tag type chosen at compile time. The
/// decoder's own operations (embedding gather, RMSNorm, RoPE, attention, SwiGLU, cross-entropy,
/// sampling) are not in this table: each memory has its decoder with one interface, Decoder<B, P> in
/// model/decoder.hpp for host memory (backend/cpu/kernels*.hpp) and Decoder<Cuda, P> in
/// backend/cuda/decoder.cuh (backend/cuda/kernels*.cuh), and what sits above the decoder (adapters,
/// AdaptedModel, trainers, generate()) uses only this table and that interface.
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
};

}  // namespace tinylora::backend
