// The default definition of Backend<T>::context_block_forward / context_block_backward
// (include/ada/backend.hpp): the composition of the primitive ops, exactly the sequence
// AdaSasRec::ira_forward / ira_backward ran before the op existed (same ops, same order, same
// arguments), so a backend that does not override it (the CPU backend) computes bit for bit what
// it computed before. The CUDA backend overrides it with fused kernels (kernels/fused_context.cu)
// and falls back to this where shared memory does not fit.
//
// Scratch: the forward needs none except, without attention, a zero query tensor; the backward
// needs d att and d queries [Ntok, D]. They are local buffers in the backend's memory (allocated per
// call: this path is the specification and the fallback, not the fast path).
#include <cstdint>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/tensor.hpp"

namespace ada {

template <class T>
void Backend<T>::context_block_forward(T* out, T* probs, T* r, T* mean, T* rstd, const T* X,
                                       const T* C, const T* ln_w, const T* ln_b,
                                       const int64_t* q_offsets, int64_t B, int64_t Nc, int64_t D,
                                       bool attention, float p, uint64_t seed, uint64_t stream,
                                       T eps) {
  ADA_CHECK(Nc >= 1, "context_block_forward: needs at least one context row, Nc=" << Nc);
  if (B <= 0) return;
  const int64_t Ntok = q_offsets[B];
  if (Ntok <= 0 || D <= 0) return;
  DeviceMemory* mem = device_memory();
  Buffer<T> zeros;
  const T* queries = X;
  if (!attention) {
    zeros.ensure(size_t(Ntok * D), mem);
    mem_zero(mem, zeros.data(), Ntok * D);
    queries = zeros.data();
  }
  // att is computed into r, then dropped out in place and the residual added
  context_attention_forward(r, probs, queries, C, q_offsets, B, Nc, D);
  dropout_forward(r, r, Ntok * D, p, seed, stream);
  add_inplace(r, X, Ntok * D);
  layernorm_forward(out, mean, rstd, r, ln_w, ln_b, Ntok, D, eps);
}

template <class T>
void Backend<T>::context_block_backward(T* dX, T* dC, T* d_ln_w, T* d_ln_b, const T* dout,
                                        const T* probs, const T* r, const T* mean, const T* rstd,
                                        const T* X, const T* C, const T* ln_w,
                                        const int64_t* q_offsets, int64_t B, int64_t Nc, int64_t D,
                                        bool attention, float p, uint64_t seed, uint64_t stream) {
  ADA_CHECK(Nc >= 1, "context_block_backward: needs at least one context row, Nc=" << Nc);
  if (B <= 0) return;
  const int64_t Ntok = q_offsets[B];
  if (Ntok <= 0 || D <= 0) return;
  DeviceMemory* mem = device_memory();
  // d r (LayerNorm backward) is the residual's gradient: dX starts as it
  layernorm_backward(dX, d_ln_w, d_ln_b, dout, r, ln_w, mean, rstd, Ntok, D);
  Buffer<T> d_att(size_t(Ntok * D), mem), d_q(size_t(Ntok * D), mem), zeros;
  dropout_backward(d_att.data(), dX, Ntok * D, p, seed, stream);
  const T* queries = X;
  if (!attention) {
    zeros.ensure(size_t(Ntok * D), mem);
    mem_zero(mem, zeros.data(), Ntok * D);
    queries = zeros.data();
  }
  context_attention_backward(d_q.data(), dC, d_att.data(), probs, queries, C, q_offsets, B, Nc, D);
  if (attention) add_inplace(dX, d_q.data(), Ntok * D);
}

template void Backend<float>::context_block_forward(float*, float*, float*, float*, float*,
                                                    const float*, const float*, const float*,
                                                    const float*, const int64_t*, int64_t, int64_t,
                                                    int64_t, bool, float, uint64_t, uint64_t, float);
template void Backend<double>::context_block_forward(double*, double*, double*, double*, double*,
                                                     const double*, const double*, const double*,
                                                     const double*, const int64_t*, int64_t,
                                                     int64_t, int64_t, bool, float, uint64_t,
                                                     uint64_t, double);
template void Backend<float>::context_block_backward(float*, float*, float*, float*, const float*,
                                                     const float*, const float*, const float*,
                                                     const float*, const float*, const float*,
                                                     const float*, const int64_t*, int64_t, int64_t,
                                                     int64_t, bool, float, uint64_t, uint64_t);
template void Backend<double>::context_block_backward(double*, double*, double*, double*,
                                                      const double*, const double*, const double*,
                                                      const double*, const double*, const double*,
                                                      const double*, const double*, const int64_t*,
                                                      int64_t, int64_t, int64_t, bool, float,
                                                      uint64_t, uint64_t);

}  // namespace ada
