// Small helpers shared by the CUDA sources: error checks that throw ada::Error, warp reductions,
// launch sizes. Device code only in kernels/; public headers never include this file.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "ada/check.hpp"

// Throws ada::Error naming the failed call and CUDA's message.
#define ADA_CUDA_CHECK(expr)                                                            \
  do {                                                                                  \
    const cudaError_t ada_cuda_err_ = (expr);                                           \
    if (ada_cuda_err_ != cudaSuccess)                                                   \
      ADA_FAIL("CUDA error in " << #expr << ": " << cudaGetErrorString(ada_cuda_err_)); \
  } while (0)

#define ADA_CUBLAS_CHECK(expr)                                                              \
  do {                                                                                      \
    const cublasStatus_t ada_blas_st_ = (expr);                                             \
    if (ada_blas_st_ != CUBLAS_STATUS_SUCCESS)                                              \
      ADA_FAIL("cuBLAS error in " << #expr << ": " << cublasGetStatusString(ada_blas_st_)); \
  } while (0)

// After a kernel launch: a bad launch configuration is reported here (execution errors surface at
// the next synchronising call).
#define ADA_CUDA_LAUNCHED() ADA_CUDA_CHECK(cudaGetLastError())

// for (i = global thread index; i < n; i += total threads), 64-bit.
#define ADA_GRID_STRIDE(i, n)                                               \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

namespace ada {
namespace cuda {

constexpr int kThreads = 256;

// The current device's opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin;
// remembered per thread and device).
inline size_t smem_optin_bytes() {
  thread_local int cached_dev = -1;
  thread_local size_t cached = 0;
  int dev = 0;
  ADA_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev != cached_dev) {
    int v = 0;
    ADA_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    cached = size_t(v);
    cached_dev = dev;
  }
  return cached;
}

// Blocks for a grid-stride loop over n items (at least 1, at most 2^20: the loops stride beyond).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > (int64_t(1) << 20)) b = int64_t(1) << 20;
  return unsigned(b);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Softmax in place over p[0..n) by one warp: lane l owns the entries l, l + 32, ... (it wrote them
// and lane_max is its maximum of them) and touches only those; sync the warp before lanes read
// each other's entries.
__device__ __forceinline__ void warp_softmax_own(float* p, int64_t n, int lane, float lane_max) {
  const float mx = warp_max(lane_max);
  float sum = 0.f;
  for (int64_t j = lane; j < n; j += 32) {
    const float e = expf(p[j] - mx);
    p[j] = e;
    sum += e;
  }
  const float inv = 1.f / warp_sum(sum);
  for (int64_t j = lane; j < n; j += 32) p[j] *= inv;
}

}  // namespace cuda
}  // namespace ada
