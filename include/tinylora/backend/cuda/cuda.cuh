// tinylora/backend/cuda/cuda.cuh: the CUDA backend. Storage is thrust::device_vector, products go
// through cuBLAS (fp32; two 16-bit operands of one type through cublasGemmEx with fp32 compute), and
// element-wise work is Thrust algorithms over __host__ __device__ functors.
//
// Two configurations compile this header, chosen by Thrust's device system:
//   - nvcc (THRUST_DEVICE_SYSTEM_CUDA, the `cuda` preset): device memory and cuBLAS;
//   - g++ with -DTHRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_OMP (`thrust-omp`, built by CI): device
//     memory is host memory, the Thrust algorithms run on OpenMP threads, and a host column-major
//     sgemm stands in for cuBLAS with the same arguments. This is how the backend's row-major to
//     column-major mapping, its functors and its storage are tested on a machine without a GPU.
// Either way the type is backend::Cuda, so switching a recipe's backend is one `using` line.
//
// This header: backend::Cuda, the Backend concept's two tables: storage from one memory pool per run
// (runtime.cuh), transfers, gemm, add, fill, synchronize; and the decoder's operations, which forward
// to kernels.cuh, kernels_backward.cuh and sampling.cuh. The decoder itself is model/decoder.hpp's,
// the same class as on the CPU.
#pragma once

#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tinylora/backend/concepts.hpp"
#include "tinylora/backend/cuda/kernels_backward.cuh"
#include "tinylora/backend/cuda/runtime.cuh"
#include "tinylora/backend/cuda/sampling.cuh"
#include "tinylora/core/error.hpp"
#include "tinylora/core/host_matrix.hpp"

namespace tinylora::backend {

struct Cuda {
#if TINYLORA_CUDA_DEVICE
  static constexpr std::string_view name = "cuda";
  static constexpr std::string_view gemm_library = "cublas";
#else
  static constexpr std::string_view name = "thrust-omp";
#if defined(TINYLORA_HAS_OPENBLAS)
  static constexpr std::string_view gemm_library = "openblas (cuBLAS stand-in)";
#else
  static constexpr std::string_view gemm_library = "eigen (cuBLAS stand-in)";
#endif
#endif

  /// Device storage from the run's pool (cuda_detail::device_pool()).
  template <class T>
  using Buffer = cuda::Buffer<T>;

  /// Whether this process can run the backend: a visible GPU under CUDA; always under OpenMP.
  static bool available() {
#if TINYLORA_CUDA_DEVICE
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
#else
    return true;
#endif
  }

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
    std::vector<T> out(buf.size());
    thrust::copy(buf.begin(), buf.end(), out.begin());
    return out;
  }
  template <class T>
  static T* data(Buffer<T>& buf) {
    return thrust::raw_pointer_cast(buf.data());
  }
  template <class T>
  static T const* data(Buffer<T> const& buf) {
    return thrust::raw_pointer_cast(buf.data());
  }
  template <class T>
  static Index size(Buffer<T> const& buf) {
    return static_cast<Index>(buf.size());
  }
  static void synchronize() {
#if TINYLORA_CUDA_DEVICE
    TINYLORA_CUDA_CHECK(cudaDeviceSynchronize());
#endif
  }

  /// C = alpha * op(A) op(B) + beta * C, fp32 accumulation; C is not read when beta == 0.
  /// Row-major C (m, n) is column-major C^T, and C^T = op(B)^T op(A)^T: one column-major call with
  /// the operands swapped and the same transpose flags, as for cuBLAS.
  template <class TA, class TB>
  static void gemm(Op op_a, Op op_b, float alpha, MatrixView<TA> A, MatrixView<TB> B, float beta, MatrixView<float> C) {
    Index const m = op_a == Op::N ? A.rows : A.cols;
    Index const k = op_a == Op::N ? A.cols : A.rows;
    Index const k2 = op_b == Op::N ? B.rows : B.cols;
    Index const n = op_b == Op::N ? B.cols : B.rows;
    TINYLORA_CHECK(k == k2 && C.rows == m && C.cols == n, "Cuda::gemm(): shape mismatch (op(A) is ", m, "x", k,
                   ", op(B) is ", k2, "x", n, ", C is ", C.rows, "x", C.cols, ")");
    if (m == 0 || n == 0) return;
    if (k == 0) {  // C = beta C (an empty sum)
      if (beta == 0.0f) fill(C, 0.0f);
      else if (beta != 1.0f) scale(C, beta);
      return;
    }
    using A_t = std::remove_const_t<TA>;
    using B_t = std::remove_const_t<TB>;
#if TINYLORA_CUDA_DEVICE
    if constexpr (std::is_same_v<A_t, B_t> && !std::is_same_v<A_t, float>) {
      // Two 16-bit operands: cublasGemmEx reads them as they are and accumulates in fp32.
      cudaDataType_t const type = std::is_same_v<A_t, bf16> ? CUDA_R_16BF : CUDA_R_16F;
      TINYLORA_CUBLAS_CHECK(cublasGemmEx(handle(), trans(op_b), trans(op_a), static_cast<int>(n), static_cast<int>(m),
                                         static_cast<int>(k), &alpha, B.data, type, static_cast<int>(B.ld), A.data, type,
                                         static_cast<int>(A.ld), &beta, C.data, CUDA_R_32F, static_cast<int>(C.ld),
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return;
    }
#endif
    // One float operand and one 16-bit (or both float): the 16-bit one is widened on the device.
    Buffer<float> wide_a, wide_b;
    float const* a = nullptr;
    float const* b = nullptr;
    Index lda = 0, ldb = 0;
    if constexpr (std::is_same_v<A_t, float>) a = A.data, lda = A.ld;
    else wide_a = widen(ConstMatrixView<A_t>(A)), a = data(wide_a), lda = A.cols;
    if constexpr (std::is_same_v<B_t, float>) b = B.data, ldb = B.ld;
    else wide_b = widen(ConstMatrixView<B_t>(B)), b = data(wide_b), ldb = B.cols;
    column_major_sgemm(op_b, op_a, n, m, k, alpha, b, ldb, a, lda, beta, C.data, C.ld);
  }

  /// Y = T(Y + alpha * X), element by element, rounding to Y's storage type.
  template <class TX, class T>
    requires std::is_same_v<std::remove_const_t<TX>, float>
  static void add(float alpha, MatrixView<TX> X, MatrixView<T> Y) {
    TINYLORA_CHECK(X.rows == Y.rows && X.cols == Y.cols, "Cuda::add(): shape mismatch (X is ", X.rows, "x", X.cols,
                   ", Y is ", Y.rows, "x", Y.cols, ")");
    cuda_detail::for_each_index(Y.size(), cuda_detail::AddScaled<T>{ConstMatrixView<float>(X), Y, alpha});
  }

  static void fill(MatrixView<float> C, float value) { cuda_detail::for_each_index(C.size(), cuda_detail::Fill{C, value}); }

  // ---- the decoder's operations (the second table of backend/concepts.hpp): backend/cuda/kernels*.cuh
  // and sampling.cuh. The whole batch is one part: every operation covers it at once on one stream.
  using Matrix = cuda::DeviceMatrix;
  static Matrix matrix(Index rows, Index cols) { return Matrix(rows, cols); }
  static Matrix zero_matrix(Index rows, Index cols) { return Matrix(rows, cols); }
  static HostMatrix to_host(Matrix const& m) {
    HostMatrix out(m.rows(), m.cols());
    ConstMatrixView<float> const v = view_of(m);
    thrust::copy(thrust::device, v.data, v.data + v.size(), out.data());
    return out;
  }
  static void copy(ConstMatrixView<float> src, MatrixView<float> dst) {
    TINYLORA_CHECK(src.rows == dst.rows && src.cols == dst.cols, "Cuda::copy(): ", src.rows, "x", src.cols, " into ", dst.rows,
                   "x", dst.cols);
    if (src.ld == src.cols && dst.ld == dst.cols) {
      thrust::copy_n(thrust::device, src.data, src.size(), dst.data);
      return;
    }
    fill(dst, 0.0f);
    add(1.0f, src, dst);
  }
  static Index max_parts() { return 1; }

  template <class W>
  static void embedding(ConstMatrixView<W> table, std::int32_t const* ids, MatrixView<float> out) {
    cuda::embedding_forward(table, ids, out);
  }
  template <class W>
  static void rmsnorm(ConstMatrixView<float> x, W const* weight, float eps, MatrixView<float> y, float* rstd) {
    cuda::rmsnorm_forward(x, weight, eps, y, rstd);
  }
  template <class W>
  static void rmsnorm_backward(ConstMatrixView<float> x, W const* weight, float const* rstd, ConstMatrixView<float> dy,
                               MatrixView<float> dx) {
    cuda::rmsnorm_backward(x, weight, rstd, dy, dx);
  }
  static void rope(MatrixView<float> x, std::int32_t const* positions, int n_heads, Index head_dim, float theta) {
    cuda::rope_forward(x, positions, n_heads, head_dim, theta);
  }
  static void rope_backward(MatrixView<float> dx, std::int32_t const* positions, int n_heads, Index head_dim, float theta) {
    cuda::rope_backward(dx, positions, n_heads, head_dim, theta);
  }
  static void attention(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v, Index const* offsets,
                        Index n_seq, int n_heads, int n_kv_heads, Index head_dim, MatrixView<float> out) {
    cuda::attention_forward(q, k, v, offsets, n_seq, n_heads, n_kv_heads, head_dim, out);
  }
  static void attention_backward(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                                 Index const* offsets, Index n_seq, int n_heads, int n_kv_heads, Index head_dim,
                                 ConstMatrixView<float> dout, MatrixView<float> dq, MatrixView<float> dk, MatrixView<float> dv) {
    cuda::attention_backward(q, k, v, offsets, n_seq, n_heads, n_kv_heads, head_dim, dout, dq, dk, dv);
  }
  static void attention_decode(ConstMatrixView<float> q, ConstMatrixView<float> cache_k, ConstMatrixView<float> cache_v,
                               Index capacity, Index const* lengths, Index const* slots, int n_heads, int n_kv_heads,
                               Index head_dim, MatrixView<float> out) {
    cuda::attention_decode(q, cache_k, cache_v, capacity, lengths, slots, n_heads, n_kv_heads, head_dim, out);
  }
  static void swiglu(ConstMatrixView<float> gate, ConstMatrixView<float> up, MatrixView<float> out) {
    cuda::swiglu_forward(gate, up, out);
  }
  static void swiglu_backward(ConstMatrixView<float> gate, ConstMatrixView<float> up, ConstMatrixView<float> dout,
                              MatrixView<float> dgate, MatrixView<float> dup) {
    cuda::swiglu_backward(gate, up, dout, dgate, dup);
  }
  template <class W>
  static void add_bias(MatrixView<float> y, W const* bias) {
    cuda::add_bias(y, bias);
  }
  static void gather_rows(ConstMatrixView<float> src, Index const* rows, MatrixView<float> dst) {
    cuda::gather_rows(src, rows, dst);
  }
  static void scatter_rows(ConstMatrixView<float> src, Index const* rows, MatrixView<float> dst, bool accumulate = false) {
    cuda::scatter_rows(src, rows, dst, accumulate);
  }
  static void cross_entropy(ConstMatrixView<float> logits, std::int32_t const* targets, double* nll) {
    cuda::cross_entropy_forward(logits, targets, nll);
  }
  static void cross_entropy_backward(ConstMatrixView<float> z, std::int32_t const* targets, float scale, MatrixView<float> dlogits,
                                     float const* weights = nullptr) {
    cuda::cross_entropy_backward(z, targets, scale, dlogits, weights);
  }
  static void divide(MatrixView<float> x, float by) { cuda::divide(x, by); }
  /// dh += dlogits E_head (cuBLAS reads a 16-bit E_head widened once on the device).
  template <class W>
  static void head_backward(ConstMatrixView<float> dlogits, ConstMatrixView<W> E_head, MatrixView<float> dh) {
    gemm(Op::N, Op::N, 1.0f, dlogits, E_head, 1.0f, dh);
  }
  static void sample_tokens(ConstMatrixView<float> logits, SamplingOptions const& o, std::uint64_t const* sequences,
                            std::uint64_t step, std::int32_t* token, float* logprob, float* policy_logprob) {
    cuda::sample_tokens(logits, o, sequences, step, token, logprob, policy_logprob);
  }

 private:
  /// C = beta C.
  static void scale(MatrixView<float> C, float beta) {
    // AddScaled with X = C: C = C + (beta - 1) C, exact for beta = 0 and 1 and within one rounding otherwise.
    cuda_detail::for_each_index(C.size(), cuda_detail::AddScaled<float>{ConstMatrixView<float>(C), C, beta - 1.0f});
  }

  /// A dense float copy of a (strided) 16-bit view.   returns (rows, cols)
  template <class T>
  static Buffer<float> widen(ConstMatrixView<T> V) {
    Buffer<float> out(static_cast<std::size_t>(V.size()));
    cuda_detail::for_each_index(V.size(), cuda_detail::Widen<T>{V, data(out)});
    return out;
  }

#if TINYLORA_CUDA_DEVICE
  static cublasOperation_t trans(Op op) { return op == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T; }

  /// One cuBLAS handle per process, made on first use.
  static cublasHandle_t handle() {
    static cublasHandle_t const h = [] {
      cublasHandle_t made = nullptr;
      TINYLORA_CUBLAS_CHECK(cublasCreate(&made));
      return made;
    }();
    return h;
  }
#endif

  /// Column-major C (rows, cols) = alpha op(X) op(Y) + beta C, cublasSgemm's arguments; C is not read when beta == 0.
  static void column_major_sgemm(Op op_x, Op op_y, Index rows, Index cols, Index k, float alpha, float const* X, Index ldx,
                                 float const* Y, Index ldy, float beta, float* C, Index ldc) {
#if TINYLORA_CUDA_DEVICE
    TINYLORA_CUBLAS_CHECK(cublasSgemm(handle(), trans(op_x), trans(op_y), static_cast<int>(rows), static_cast<int>(cols),
                                      static_cast<int>(k), &alpha, X, static_cast<int>(ldx), Y, static_cast<int>(ldy), &beta,
                                      C, static_cast<int>(ldc)));
#else
    if (beta == 0.0f) fill(MatrixView<float>{C, cols, rows, ldc}, 0.0f);  // BLAS may read C even then
#if defined(TINYLORA_HAS_OPENBLAS)
    auto const t = [](Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; };
    cblas_sgemm(CblasColMajor, t(op_x), t(op_y), static_cast<blasint>(rows), static_cast<blasint>(cols),
                static_cast<blasint>(k), alpha, X, static_cast<blasint>(ldx), Y, static_cast<blasint>(ldy), beta, C,
                static_cast<blasint>(ldc));
#else
    using ColMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
    using ConstMap = Eigen::Map<ColMajor const, 0, Eigen::OuterStride<>>;
    ConstMap const x(X, op_x == Op::N ? rows : k, op_x == Op::N ? k : rows, Eigen::OuterStride<>(ldx));
    ConstMap const y(Y, op_y == Op::N ? k : cols, op_y == Op::N ? cols : k, Eigen::OuterStride<>(ldy));
    Eigen::Map<ColMajor, 0, Eigen::OuterStride<>> c(C, rows, cols, Eigen::OuterStride<>(ldc));
    ColMajor const product = op_x == Op::N ? (op_y == Op::N ? ColMajor(x * y) : ColMajor(x * y.transpose()))
                                           : (op_y == Op::N ? ColMajor(x.transpose() * y) : ColMajor(x.transpose() * y.transpose()));
    c = alpha * product + beta * c;
#endif
#endif
  }
};

static_assert(Backend<Cuda>, "backend::Cuda must satisfy the Backend concept");

}  // namespace tinylora::backend
