// tinylora/core/intrinsics.hpp: <immintrin.h>, included once, before Eigen, from one place.
//
// Why this header exists: GCC 12's AVX-512 intrinsics (avx512fintrin.h) build "undefined" vectors
// as `__m512 __Y = __Y;`, and GCC 12 reports -Wmaybe-uninitialized / -Wuninitialized on them
// once they are inlined into Eigen's packing and transposition code (GCC bug 105593, fixed in
// GCC 13), although every location in the chain is in a system header. With -march=native on an
// AVX-512 CPU and -Werror, that failed our build in TUs that instantiate Eigen's float GEMM
// packing (cmake/eigen_svd_instances.cpp, the Thrust-OMP test) and never on AVX2-only CPUs.
//
// GCC decides such a warning by the #pragma state at the innermost inlined location, here a line
// of avx512fintrin.h: the state in force where that header was first included. So the fix is
// scoped to exactly those headers: they are included here, between push and pop, and every
// tinylora header that reaches Eigen or intrinsics includes this one first (core/eigen.hpp,
// backend/cpu/packed_gemm.hpp); so do cmake/eigen_svd_extern.hpp (force-included into every test,
// experiment and benchmark) and cmake/eigen_svd_instances.cpp. The project's own code keeps
// -Werror and both warnings: the pragmas cover only lines of GCC's intrinsic headers.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && !defined(__CUDACC__)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#endif
