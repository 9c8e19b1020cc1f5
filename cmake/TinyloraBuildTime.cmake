# cmake/TinyloraBuildTime.cmake: what keeps our own executables (tests, experiments, benchmarks)
# cheap to compile. Nothing here changes what the code computes: same sources, same flags.
#
#   tinylora_build_time(<target> [PCH <group>])
#     1. Eigen's SVDs are instantiated once, in the static library tinylora_eigen_svd
#        (cmake/eigen_svd_instances.cpp), and declared `extern template` in every TU of <target>
#        (cmake/eigen_svd_extern.hpp, force-included). tinylora/linalg/svd.hpp's BDCSVD<MatrixXd>
#        otherwise costs each TU that includes it ~25 CPU-s of template instantiation plus its
#        -O3 code generation: most of the 4-minute TUs (00_adapter_anatomy, test_tying, ...).
#     2. With PCH <group> (and TINYLORA_PCH on), the third-party headers are precompiled once
#        per group: the first target of a group builds the PCH, the others reuse it (the targets
#        of a group must share compile flags and definitions, as each test, or each experiment,
#        does). A TU must not define configuration macros of those libraries before including
#        them (none does: tests/main.cpp, which defines DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN, is
#        not given a PCH).
#
# Measured on the 2-core CI machine (g++ 12, -O3 -march=native), CPU seconds: test_tying 59 -> 16,
# 00_adapter_anatomy 130 -> 41 from (1) alone. tinylora_header_check (top-level CMakeLists.txt)
# and the compile-fail tests (tests/CMakeLists.txt) use eigen_svd_extern.hpp their own way.
include_guard(GLOBAL)

option(TINYLORA_PCH "Precompile the third-party headers of the tests, experiments and benchmarks" ON)

set(TINYLORA_EIGEN_SVD_EXTERN ${CMAKE_CURRENT_LIST_DIR}/eigen_svd_extern.hpp)

# Same usage requirements as its users (OpenMP, -march=native, ...): the instantiated code is
# the code each TU would otherwise have instantiated itself.
add_library(tinylora_eigen_svd STATIC EXCLUDE_FROM_ALL ${CMAKE_CURRENT_LIST_DIR}/eigen_svd_instances.cpp)
target_link_libraries(tinylora_eigen_svd PRIVATE tinylora::tinylora tinylora_flags)

# Third-party and standard headers that the tests, experiments and benchmarks include.
set(TINYLORA_PCH_HEADERS
  ${TINYLORA_EIGEN_SVD_EXTERN}
  <Eigen/Core> <Eigen/SVD> <H5Cpp.h> <nlohmann/json.hpp> <xtensor/xtensor.hpp> <xtensor/xarray.hpp>
  <omp.h> <algorithm> <array> <chrono> <cmath> <cstdint> <cstring> <filesystem> <fstream>
  <functional> <iostream> <map> <memory> <numeric> <optional> <regex> <set> <span> <sstream>
  <string> <string_view> <unordered_map> <utility> <variant> <vector>)

# GCC 12 and AVX-512 (GCC bug 105593, see include/tinylora/core/intrinsics.hpp): the suppression of
# -Wuninitialized/-Wmaybe-uninitialized that core/intrinsics.hpp scopes around <immintrin.h> does not
# survive precompilation: GCC before 13 does not keep `#pragma GCC diagnostic` state in a PCH, so a TU
# built with the PCH sees avx512fintrin.h's `__m512 __Y = __Y;` reported again wherever Eigen's AVX-512
# packets are inlined (measured on an AMD EPYC with AVX-512, family 26: test_adapter_record.cpp fails
# with the PCH and compiles clean with the same flags and `-include eigen_svd_extern.hpp`). Only there
# (GCC < 13, PCH on, a default -march that enables AVX-512F) the targets that use the PCH get those two
# warnings off on the command line. Everything else keeps them under -Werror: every AVX2 build, the
# x86-64-v3/v4 variants and header checks (no PCH), the library instances, and every TU on GCC >= 13.
set(TINYLORA_PCH_AVX512_GCC12 OFF)
if(TINYLORA_PCH AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13
   AND TINYLORA_DEFAULT_MARCH)
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS "-march=${TINYLORA_DEFAULT_MARCH}")
  check_cxx_source_compiles("#ifndef __AVX512F__\n#error no AVX-512F\n#endif\nint main() { return 0; }"
                            TINYLORA_DEFAULT_MARCH_HAS_AVX512F)
  unset(CMAKE_REQUIRED_FLAGS)
  if(TINYLORA_DEFAULT_MARCH_HAS_AVX512F)
    set(TINYLORA_PCH_AVX512_GCC12 ON)
    message(STATUS "tinylora: GCC ${CMAKE_CXX_COMPILER_VERSION} with AVX-512 (-march=${TINYLORA_DEFAULT_MARCH}): "
                   "targets built with the PCH compile with -Wno-uninitialized -Wno-maybe-uninitialized "
                   "(GCC < 13 drops diagnostic pragmas from PCHs; cmake/TinyloraBuildTime.cmake)")
  endif()
endif()

function(tinylora_build_time target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "PCH" "EXTRA_HEADERS")
  target_link_libraries(${target} PRIVATE tinylora_eigen_svd)
  if(TINYLORA_PCH AND arg_PCH)
    if(TINYLORA_PCH_AVX512_GCC12)
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-uninitialized -Wno-maybe-uninitialized>)
    endif()
    get_property(owner GLOBAL PROPERTY TINYLORA_PCH_OWNER_${arg_PCH})
    if(owner)
      target_precompile_headers(${target} REUSE_FROM ${owner})
    else()
      set_property(GLOBAL PROPERTY TINYLORA_PCH_OWNER_${arg_PCH} ${target})
      target_precompile_headers(${target} PRIVATE ${TINYLORA_PCH_HEADERS} ${arg_EXTRA_HEADERS})
    endif()
  else()
    target_compile_options(${target} PRIVATE
      "$<$<COMPILE_LANGUAGE:CXX>:SHELL:-include ${TINYLORA_EIGEN_SVD_EXTERN}>")
  endif()
endfunction()
