// The fused context-aware attention block of IRA (Backend::context_block_forward/backward,
// include/ada/backend.hpp): context attention + dropout + residual + LayerNorm in one kernel per
// direction (kernels/fused_context.cu). Device code only in kernels/; called by CudaBackend.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ada {
namespace cuda {

// Whether the fused kernels take this shape (D <= kCtxBlockMaxD and the context fits the shared
// memory of a block on the current device); otherwise the caller runs the composition.
constexpr int64_t kCtxBlockMaxD = 256;
bool context_block_fused_fits(int64_t Nc, int64_t D);

// Forward over B samples; q_offsets is a DEVICE copy (B+1), max_queries the most queries of one
// sample (q_offsets[b+1] - q_offsets[b], from the host copy). Every other pointer as in
// Backend::context_block_forward (device memory). Queued on `stream`.
void context_block_forward_launch(float* out, float* probs, float* r, float* mean, float* rstd,
                                  const float* X, const float* C, const float* ln_w,
                                  const float* ln_b, const int64_t* q_offsets, int64_t B,
                                  int64_t max_queries, int64_t Nc, int64_t D, bool attention,
                                  float p, uint64_t seed, uint64_t rng_stream, float eps,
                                  cudaStream_t stream);

// Backward; `partial` is device scratch of context_block_partial_size(B, D) floats (the per-sample
// LayerNorm parameter-gradient partials, reduced in a fixed order: deterministic). `order` is a
// DEVICE permutation of the B samples, the order their blocks are launched in: the samples with the
// most queries first (ada::order_by_span_desc of the host offsets, src/core/work_order.hpp), so a
// 50-query sample does not start in the grid's last wave. Any permutation gives the same results.
int64_t context_block_partial_size(int64_t B, int64_t D);
void context_block_backward_launch(float* dX, float* dC, float* d_ln_w, float* d_ln_b,
                                   const float* dout, const float* probs, const float* r,
                                   const float* mean, const float* rstd, const float* X,
                                   const float* C, const float* ln_w, const int64_t* q_offsets,
                                   const int32_t* order, int64_t B, int64_t Nc, int64_t D,
                                   bool attention, float p, uint64_t seed, uint64_t rng_stream,
                                   float* partial, cudaStream_t stream);

}  // namespace cuda
}  // namespace ada
