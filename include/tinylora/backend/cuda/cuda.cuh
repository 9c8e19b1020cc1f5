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
// This header: the Backend concept's primitives (storage from one memory pool per run, transfers,
// gemm, add, fill, synchronize). The decoder's operations are in kernels.cuh and kernels_backward.cuh,
// sampling in sampling.cuh, and the decoder itself, Decoder<Cuda, P>, in decoder.cuh.
#pragma once

#if !defined(__CUDACC__) && !defined(THRUST_DEVICE_SYSTEM)
#error "tinylora/backend/cuda/cuda.cuh: compile with nvcc, or define THRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_OMP for the C++ compiler (CMake does: TINYLORA_THRUST_OMP)"
#endif

#include <thrust/copy.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/mr/allocator.h>
#include <thrust/mr/device_memory_resource.h>
#include <thrust/mr/disjoint_sync_pool.h>
#include <thrust/mr/new.h>

#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tinylora/backend/concepts.hpp"
#include "tinylora/core/error.hpp"

#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#define TINYLORA_CUDA_DEVICE 1
#else
#define TINYLORA_CUDA_DEVICE 0
#if defined(TINYLORA_HAS_OPENBLAS)
#include <cblas.h>
#else
#include "tinylora/core/eigen.hpp"
#endif
#endif

#if TINYLORA_CUDA_DEVICE
/// Throws tinylora::Error naming the call, file:line and CUDA's error string when a runtime call fails.
#define TINYLORA_CUDA_CHECK(call)                                                                             \
  do {                                                                                                      \
    cudaError_t const tinylora_cuda_status = (call);                                                        \
    if (tinylora_cuda_status != cudaSuccess)                                                                \
      ::tinylora::fail(#call, " failed at ", __FILE__, ":", __LINE__, ": ", cudaGetErrorString(tinylora_cuda_status), \
                       ". Hint: check that a GPU is visible (nvidia-smi) and has free memory.");           \
  } while (0)
/// The same for cuBLAS calls.
#define TINYLORA_CUBLAS_CHECK(call)                                                                           \
  do {                                                                                                      \
    cublasStatus_t const tinylora_cublas_status = (call);                                                   \
    if (tinylora_cublas_status != CUBLAS_STATUS_SUCCESS)                                                    \
      ::tinylora::fail(#call, " failed at ", __FILE__, ":", __LINE__, ": ",                                 \
                       cublasGetStatusString(tinylora_cublas_status));                                      \
  } while (0)
#endif

namespace tinylora::backend {

namespace cuda_detail {

/// Y(i, j) = T(Y(i, j) + alpha X(i, j)) at flat index e = i cols + j.
template <class T>
struct AddScaled {
  ConstMatrixView<float> X;
  MatrixView<T> Y;
  float alpha;
  TINYLORA_HOST_DEVICE void operator()(Index e) const {
    Index const i = e / Y.cols, j = e % Y.cols;
    Y(i, j) = T(static_cast<float>(Y(i, j)) + alpha * X(i, j));
  }
};

/// C(i, j) = value.
struct Fill {
  MatrixView<float> C;
  float value;
  TINYLORA_HOST_DEVICE void operator()(Index e) const { C(e / C.cols, e % C.cols) = value; }
};

/// dense(i, j) = float(V(i, j)): a strided 16-bit view widened into a dense float block.
template <class T>
struct Widen {
  ConstMatrixView<T> V;
  float* dense;
  TINYLORA_HOST_DEVICE void operator()(Index e) const { dense[e] = static_cast<float>(V(e / V.cols, e % V.cols)); }
};

/// f(e) for e in [0, n) on the device system.
template <class F>
void for_each_index(Index n, F f) {
  if (n > 0) thrust::for_each_n(thrust::device, thrust::counting_iterator<Index>(0), n, f);
}

/// The run's one device memory pool. Every Cuda::Buffer takes its memory here: blocks come from the
/// device system (cudaMalloc) the first time a size is needed and are reused after, so the token
/// loop and the training steps, which allocate the same activations again and again, make no
/// cudaMalloc or cudaFree calls (each of which waits for the device) once warm. Bookkeeping lives
/// in host memory; a mutex guards it. The pool is never destroyed: freed from a static destructor,
/// its blocks could outlive the CUDA runtime at exit.
using DevicePool = thrust::mr::disjoint_synchronized_pool_resource<thrust::device_memory_resource, thrust::mr::new_delete_resource>;
inline DevicePool* device_pool() {
  static DevicePool* const pool = new DevicePool();  // NOLINT: leaked on purpose (see above)
  return pool;
}

/// An allocator of T from device_pool(): thrust::mr::allocator bound to the one pool, default-
/// constructible so that Buffer<T>(n) needs no allocator argument.
template <class T>
class PoolAllocator : public thrust::mr::allocator<T, DevicePool> {
  using Base = thrust::mr::allocator<T, DevicePool>;

 public:
  template <class U>
  struct rebind {
    using other = PoolAllocator<U>;
  };
  PoolAllocator() : Base(device_pool()) {}
  template <class U>
  TINYLORA_HOST_DEVICE PoolAllocator(PoolAllocator<U> const& other) : Base(other) {}
};

}  // namespace cuda_detail

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
  using Buffer = thrust::device_vector<T, cuda_detail::PoolAllocator<T>>;

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
