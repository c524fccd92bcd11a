// ADA_HOST_DEVICE: marks the inline functions that the CPU backend and the CUDA kernels share, so
// both compute an op with the same expressions. Under nvcc they compile as host and device code; in
// a plain C++ compiler (and in tools/cuda-emu) the macro is empty.
#pragma once

#ifndef ADA_HOST_DEVICE
#if defined(__CUDACC__)
#define ADA_HOST_DEVICE __host__ __device__
#else
#define ADA_HOST_DEVICE
#endif
#endif
