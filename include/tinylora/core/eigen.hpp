// tinylora/core/eigen.hpp: Eigen's core, as every tinylora header includes it: after the SIMD
// intrinsics headers, so that GCC 12's false -Wmaybe-uninitialized inside them never fails an
// AVX-512 build (see core/intrinsics.hpp).
#pragma once

#include "tinylora/core/intrinsics.hpp"

#include <Eigen/Core>
