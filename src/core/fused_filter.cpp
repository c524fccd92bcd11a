// The default definition of Backend<T>::filter_block_forward / filter_block_backward
// (include/ada/backend.hpp): the composition of the primitive ops, exactly the sequence
// AdaSasRec::ira_forward / ira_backward ran before the op existed (same ops, same order, same
// arguments; G is computed into Rr and dropped out in place, which gives the same values), so a
// backend that does not override it (the CPU backend) computes bit for bit what it computed
// before. The CUDA backend overrides it with fused kernels (kernels/fused_filter.cu) and falls back
// to this outside their limits (K > 64, D > 128, or shared memory).
//
// Scratch: the backward needs d G and d F [n, D]: local buffers in the backend's memory (allocated
// per call: this path is the specification and the fallback, not the fast path).
#include <cstdint>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/tensor.hpp"

namespace ada {

template <class T>
void Backend<T>::filter_block_forward(T* Et, T* F, T* Rr, T* mean, T* rstd, const T* E, const T* cw,
                                      const T* dense_w, const T* dense_b, const T* ln_w,
                                      const T* ln_b, int64_t R, int64_t K, int64_t D, T eps,
                                      float p, uint64_t seed, uint64_t stream) {
  ADA_CHECK(K >= 1 && D >= 1 && R >= 0,
            "filter_block_forward: bad sizes R=" << R << " K=" << K << " D=" << D);
  const int64_t n = R * K;
  if (n == 0) return;
  filter_forward(F, E, cw, R, K, D);
  linear_forward(Rr, F, dense_w, dense_b, n, D, D);  // G, dropped out in place
  dropout_forward(Rr, Rr, n * D, p, seed, stream);
  add_inplace(Rr, E, n * D);
  layernorm_forward(Et, mean, rstd, Rr, ln_w, ln_b, n, D, eps);
}

template <class T>
void Backend<T>::filter_block_backward(T* dE, T* d_cw, T* d_dense_w, T* d_dense_b, T* d_ln_w,
                                       T* d_ln_b, const T* dEt, const T* E, const T* F,
                                       const T* Rr, const T* mean, const T* rstd, const T* cw,
                                       const T* dense_w, const T* ln_w, int64_t R, int64_t K,
                                       int64_t D, float p, uint64_t seed, uint64_t stream) {
  ADA_CHECK(K >= 1 && D >= 1 && R >= 0,
            "filter_block_backward: bad sizes R=" << R << " K=" << K << " D=" << D);
  const int64_t n = R * K;
  if (n == 0) return;
  DeviceMemory* mem = device_memory();
  // d Rr (LayerNorm backward) is the residual's gradient: dE starts as it
  layernorm_backward(dE, d_ln_w, d_ln_b, dEt, Rr, ln_w, mean, rstd, n, D);
  Buffer<T> d_g(size_t(n * D), mem), d_f(size_t(n * D), mem);
  dropout_backward(d_g.data(), dE, n * D, p, seed, stream);
  linear_backward(d_f.data(), d_dense_w, d_dense_b, d_g.data(), F, dense_w, n, D, D, false);
  filter_backward(d_g.data(), d_cw, d_f.data(), E, cw, R, K, D);  // d E through the filter
  add_inplace(dE, d_g.data(), n * D);
}

template void Backend<float>::filter_block_forward(float*, float*, float*, float*, float*,
                                                   const float*, const float*, const float*,
                                                   const float*, const float*, const float*,
                                                   int64_t, int64_t, int64_t, float, float,
                                                   uint64_t, uint64_t);
template void Backend<double>::filter_block_forward(double*, double*, double*, double*, double*,
                                                    const double*, const double*, const double*,
                                                    const double*, const double*, const double*,
                                                    int64_t, int64_t, int64_t, double, float,
                                                    uint64_t, uint64_t);
template void Backend<float>::filter_block_backward(float*, float*, float*, float*, float*, float*,
                                                    const float*, const float*, const float*,
                                                    const float*, const float*, const float*,
                                                    const float*, const float*, const float*,
                                                    int64_t, int64_t, int64_t, float, uint64_t,
                                                    uint64_t);
template void Backend<double>::filter_block_backward(double*, double*, double*, double*, double*,
                                                     double*, const double*, const double*,
                                                     const double*, const double*, const double*,
                                                     const double*, const double*, const double*,
                                                     const double*, int64_t, int64_t, int64_t,
                                                     float, uint64_t, uint64_t);

}  // namespace ada
