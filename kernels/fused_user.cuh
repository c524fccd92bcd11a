// The fused user representation adapter (Backend::user_adapter_forward/backward, reference-spec 3.2)
// for the CUDA backend: launchers of the kernels in kernels/fused_user.cu. Device pointers as every
// CUDA backend op (include/ada/cuda_backend.hpp); everything is queued on `stream`.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ada/backend.hpp"

namespace ada {
namespace cuda {

// Whether the fused kernels take this shape (1 <= D <= 128, t >= 1); otherwise the backend runs the
// composition (Backend's default definition).
bool user_fused_supported(const UserAdapterShape& sh);

// Forward: one kernel (GRU over t steps, MLP, dropout, residual, LayerNorm per tile of 8 rows).
void user_fused_forward(cudaStream_t stream, float* out, const UserAdapterSaved<float>& saved,
                        const float* users, const float* v, const UserAdapterTensors<const float*>& w,
                        const UserAdapterShape& sh);

// Backward: one kernel for every data gradient (per tile of 8 rows), then the weight gradients as
// cuBLAS GEMMs (FP32, `blas` bound to `stream`) on the saved activations and the data gradients the
// kernel left in `work`, and the bias / LayerNorm gradients as one column-sum kernel (its last CTA
// adds the per-chunk partials in order).
void user_fused_backward(cudaStream_t stream, cublasHandle_t blas, float* d_v, float* d_users,
                         const UserAdapterTensors<float*>& g, float* work, const float* d_out,
                         const UserAdapterSaved<float>& saved, const float* users, const float* v,
                         const UserAdapterTensors<const float*>& w, const UserAdapterShape& sh);

}  // namespace cuda
}  // namespace ada
