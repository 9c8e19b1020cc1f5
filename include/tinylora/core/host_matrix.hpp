// tinylora/core/host_matrix.hpp: the dense host matrix type used for explicit results
// (Delta W for tests and merging, SVD factors) and the bridge from views to Eigen.
#pragma once

#include "tinylora/core/eigen.hpp"

#include "tinylora/core/tensor.hpp"

namespace tinylora {

/// A dense row-major float matrix in host memory.
using HostMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A read-only view of a host matrix.
inline ConstMatrixView<float> view_of(HostMatrix const& m) { return {m.data(), m.rows(), m.cols()}; }
/// A writable view of a host matrix.
inline MatrixView<float> view_of(HostMatrix& m) { return {m.data(), m.rows(), m.cols()}; }

}  // namespace tinylora
