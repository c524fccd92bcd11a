// The fused learnable-filter block of IRA (Backend::filter_block_forward / filter_block_backward,
// include/ada/backend.hpp) on the GPU: one kernel for the forward (DFT along the K items, the
// complex weight, inverse DFT, Linear D->D, bias, dropout, residual, LayerNorm), one for the backward
// plus a small kernel that reduces the per-CTA parameter-gradient partials. Design notes at the top
// of kernels/fused_filter.cu. Device code only in kernels/; public headers never include this file.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>

namespace ada {
namespace cuda {

// What the fused kernels support; outside it the launchers return false and the backend runs the
// composed default (Backend<float>::filter_block_forward / _backward).
constexpr int64_t kFusedFilterMaxK = 64, kFusedFilterMaxD = 128;

// Device state of the fused filter block, owned by the CUDA backend: the DFT tables per K (uploaded
// once), the per-CTA partial sums of the backward, and the device limits (read once).
class FilterBlockWorkspace {
 public:
  FilterBlockWorkspace() = default;
  ~FilterBlockWorkspace();
  FilterBlockWorkspace(const FilterBlockWorkspace&) = delete;
  FilterBlockWorkspace& operator=(const FilterBlockWorkspace&) = delete;

  // Tables for K (device): forward twiddles (cos, sin) [K/2+1, K] pairs, inverse twiddles
  // (coef cos s, coef sin s), adjoint twiddles (cos s, sin s), each 2 (K/2+1) K floats in that order.
  const float* tables(int64_t K);
  // At least n floats of device scratch; a growth waits for `stream` first (queued kernels may use it).
  float* partials(size_t n, cudaStream_t stream);
  int sms();
  size_t smem_optin();
  // Sets the kernel's dynamic shared memory limit to the device's opt-in maximum once.
  void allow_smem(const void* kernel);

 private:
  std::map<int64_t, float*> tables_;
  std::map<const void*, bool> smem_set_;
  float* partial_ = nullptr;
  size_t partial_cap_ = 0;
  int sms_ = 0;
};

// Et, F, Rr, mean, rstd = filter_block_forward(E, ...), all device pointers, queued on `stream`.
// Returns false (and does nothing) when K > kFusedFilterMaxK, D > kFusedFilterMaxD or the shared
// memory does not fit; throws ada::Error on bad sizes.
bool filter_block_forward_fused(FilterBlockWorkspace& ws, cudaStream_t stream, float* Et, float* F,
                                float* Rr, float* mean, float* rstd, const float* E,
                                const float* cw, const float* dense_w, const float* dense_b,
                                const float* ln_w, const float* ln_b, int64_t R, int64_t K,
                                int64_t D, float eps, float p, uint64_t seed, uint64_t rng_stream);

// The backward (dE =, parameter gradients +=); same contract.
bool filter_block_backward_fused(FilterBlockWorkspace& ws, cudaStream_t stream, float* dE,
                                 float* d_cw, float* d_dense_w, float* d_dense_b, float* d_ln_w,
                                 float* d_ln_b, const float* dEt, const float* E, const float* F,
                                 const float* Rr, const float* mean, const float* rstd,
                                 const float* cw, const float* dense_w, const float* ln_w,
                                 int64_t R, int64_t K, int64_t D, float p, uint64_t seed,
                                 uint64_t rng_stream);

}  // namespace cuda
}  // namespace ada
