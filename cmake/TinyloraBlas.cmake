# cmake/TinyloraBlas.cmake: OpenBLAS for the CPU backend's fp32 GEMM (backend::Cpu::gemm).
# Only OpenBLAS's OpenMP build is accepted: it shares libgomp's thread pool with our OpenMP kernels
# and with Eigen, so GEMM and kernels never fight over the two cores (the pthreads build does, and
# made decoding 4-6x slower when it was tried). Debian 12: libopenblas-openmp-dev (scripts/setup).
# TINYLORA_BLAS=OFF, or the library missing, falls back to Eigen's product (same results to
# rounding); the choice is printed here and recorded by backend::Cpu::gemm_library.
option(TINYLORA_BLAS "Use OpenBLAS (OpenMP build) for the CPU backend's GEMM when it is installed" ON)

if(TINYLORA_BLAS)
  set(_tl_arch_dirs /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp /usr/lib64/openblas-openmp)
  find_library(TINYLORA_OPENBLAS_LIBRARY NAMES openblas PATHS ${_tl_arch_dirs} NO_DEFAULT_PATH)
  find_path(TINYLORA_OPENBLAS_INCLUDE_DIR NAMES cblas.h
            PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp /usr/include/openblas-openmp
            NO_DEFAULT_PATH)
  if(TINYLORA_OPENBLAS_LIBRARY AND TINYLORA_OPENBLAS_INCLUDE_DIR)
    message(STATUS "tinylora: CPU GEMM through OpenBLAS (OpenMP build): ${TINYLORA_OPENBLAS_LIBRARY}")
    target_link_libraries(tinylora INTERFACE ${TINYLORA_OPENBLAS_LIBRARY})
    target_include_directories(tinylora SYSTEM INTERFACE ${TINYLORA_OPENBLAS_INCLUDE_DIR})
    target_compile_definitions(tinylora INTERFACE TINYLORA_HAS_OPENBLAS=1)
  else()
    message(WARNING "tinylora: OpenBLAS's OpenMP build was not found; the CPU backend uses Eigen's GEMM "
                    "(about 1.5x slower on model shapes). Install it with scripts/setup "
                    "(Debian: libopenblas-openmp-dev), or pass -DTINYLORA_BLAS=OFF to silence this.")
  endif()
endif()
