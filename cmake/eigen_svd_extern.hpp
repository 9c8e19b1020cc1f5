// cmake/eigen_svd_extern.hpp: force-included (through the precompiled header) into every test,
// experiment and benchmark translation unit. Eigen's SVDs are declared instantiated elsewhere
// (cmake/eigen_svd_instances.cpp, linked into each executable), so that a TU which includes
// tinylora/linalg/svd.hpp no longer instantiates and optimizes BDCSVD<MatrixXd> itself: that one
// instantiation was ~25 CPU-s of front end plus its -O3 code generation in every such TU.
// Build-time only: the same code runs, compiled once with the same flags.
#pragma once

#include "tinylora/core/eigen.hpp"  // first: GCC 12's AVX-512 intrinsics, warnings scoped (see there)
#include <Eigen/SVD>

extern template class Eigen::BDCSVD<Eigen::MatrixXd>;
extern template class Eigen::JacobiSVD<Eigen::MatrixXd>;
extern template class Eigen::JacobiSVD<Eigen::MatrixXf>;
