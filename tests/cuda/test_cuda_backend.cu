// tests/cuda/test_cuda_backend.cu: the parity tests of test_cuda_backend.cpp compiled by nvcc as CUDA
// (the cuda preset), so the same checks run on a GPU; they skip without one.
#include "test_cuda_backend.cpp"
