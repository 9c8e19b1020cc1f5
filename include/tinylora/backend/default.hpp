// tinylora/backend/default.hpp: backend::Default, the backend a recipe gets when it does not name
// one: backend::Cuda where the build chose it (the `cuda` preset compiles the experiments with nvcc
// and defines TINYLORA_DEFAULT_BACKEND_CUDA; CI also builds one experiment so under Thrust's OpenMP
// system), backend::Cpu otherwise. An experiment writes `using Backend = backend::Default;` and
// switches by preset, or names backend::Cpu or backend::Cuda itself: one line either way.
#pragma once

#if defined(TINYLORA_DEFAULT_BACKEND_CUDA)
#include "tinylora/backend/cuda/cuda.cuh"
namespace tinylora::backend {
using Default = Cuda;
}
#else
#include "tinylora/backend/cpu/cpu.hpp"
namespace tinylora::backend {
using Default = Cpu;
}
#endif
