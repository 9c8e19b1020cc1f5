// cmake/eigen_svd_instances.cpp: the one instantiation of the Eigen SVDs that
// cmake/eigen_svd_extern.hpp declares extern (see there).
#include "tinylora/core/eigen.hpp"  // first: GCC 12's AVX-512 intrinsics, warnings scoped (see there)
#include <Eigen/SVD>

template class Eigen::BDCSVD<Eigen::MatrixXd>;
template class Eigen::JacobiSVD<Eigen::MatrixXd>;
template class Eigen::JacobiSVD<Eigen::MatrixXf>;
