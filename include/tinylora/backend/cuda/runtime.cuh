// tinylora/backend/cuda/runtime.cuh: what every CUDA-side header stands on: Thrust's device system
// (CUDA under nvcc, OpenMP under the C++ compiler: see cuda.cuh), the error-checking macros, the
// run's one device memory pool, device buffers (cuda::Buffer<T>), device matrices (the backend's
// activations) and the element-wise functors of the Backend primitives.
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

#include "tinylora/core/tensor.hpp"
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

namespace cuda {

/// Device storage from the run's pool (cuda_detail::device_pool()); backend::Cuda::Buffer<T>.
template <class T>
using Buffer = thrust::device_vector<T, cuda_detail::PoolAllocator<T>>;

template <class T>
T* data(Buffer<T>& buf) {
  return thrust::raw_pointer_cast(buf.data());
}
template <class T>
T const* data(Buffer<T> const& buf) {
  return thrust::raw_pointer_cast(buf.data());
}

/// A dense row-major float matrix in device memory: backend::Cuda's activations (Cuda::Matrix).
/// Zero on creation: device memory has no cheaper "uninitialized" that would matter here.
class DeviceMatrix {
 public:
  DeviceMatrix() = default;
  DeviceMatrix(Index rows, Index cols) : data_(static_cast<std::size_t>(rows * cols), 0.0f), rows_(rows), cols_(cols) {}
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  friend MatrixView<float> view_of(DeviceMatrix& m) { return {data(m.data_), m.rows_, m.cols_}; }
  friend ConstMatrixView<float> view_of(DeviceMatrix const& m) { return {data(m.data_), m.rows_, m.cols_}; }

 private:
  Buffer<float> data_;  // (rows cols)
  Index rows_ = 0, cols_ = 0;
};

}  // namespace cuda

}  // namespace tinylora::backend
