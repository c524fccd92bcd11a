// The default definition of Backend<T>::user_adapter_forward/backward (include/ada/backend.hpp): the
// composition of the primitive ops, exactly the sequence AdaSasRec::ura_forward/ura_backward ran
// before the op existed, so a backend that does not override it (the CPU backend) computes bit for
// bit what it computed before. Two changes of storage only: gi lives in `work` (the backward never
// read it), and the MLP input z = [v; h_t] and pre-activation a1 are scratch too (the backward
// rebuilds z with concat_cols, an exact copy, and takes relu' from a1r: a1r > 0 iff a1 > 0).
#include <utility>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/tensor.hpp"

namespace ada {

template <class T>
void Backend<T>::user_adapter_forward(T* out, const UserAdapterSaved<T>& sv, T* work, const T* users,
                                      const T* v, const UserAdapterTensors<const T*>& w,
                                      const UserAdapterShape& sh) {
  const int64_t B = sh.B, D = sh.D;
  const int t = sh.t;
  ADA_CHECK(t >= 1 && B >= 0 && D >= 1, "user_adapter_forward: bad shape t=" << t << " B=" << B << " D=" << D);
  if (B == 0) return;
  DeviceMemory* mem = device_memory();
  T* gi = work;               // [B, 3D] per step
  T* z = gi + B * 3 * D;      // [B, 2D]
  T* a1 = z + B * 2 * D;      // [B, 2D]
  T* a2 = a1 + B * 2 * D;     // [B, D]
  mem_zero(mem, sv.hs, B * D);
  for (int s = 0; s < t; ++s) {
    T* gh = sv.gh + int64_t(s) * B * 3 * D;
    linear_forward(gi, users + int64_t(s) * B * D, w.w_ih, w.b_ih, B, D, 3 * D);
    linear_forward(gh, sv.hs + int64_t(s) * B * D, w.w_hh, w.b_hh, B, D, 3 * D);
    gru_cell_forward(sv.hs + int64_t(s + 1) * B * D, sv.gates + int64_t(s) * B * 3 * D, gi, gh,
                     sv.hs + int64_t(s) * B * D, B, D);
  }
  const T* h = sv.hs + int64_t(t) * B * D;
  concat_cols(z, v, h, B, D, D);
  linear_forward(a1, z, w.w1, w.b1, B, 2 * D, 2 * D);
  activation_forward(sv.a1r, a1, B * 2 * D, Activation::kRelu);
  linear_forward(a2, sv.a1r, w.w2, w.b2, B, 2 * D, D);
  dropout_forward(sv.r2, a2, B * D, sh.p, sh.seed, sh.stream);
  add_inplace(sv.r2, v, B * D);
  layernorm_forward(out, sv.mean, sv.rstd, sv.r2, w.ln_w, w.ln_b, B, D, T(sh.eps));
}

template <class T>
void Backend<T>::user_adapter_backward(T* d_v, T* d_users, const UserAdapterTensors<T*>& g, T* work,
                                       const T* d_out, const UserAdapterSaved<T>& sv, const T* users,
                                       const T* v, const UserAdapterTensors<const T*>& w,
                                       const UserAdapterShape& sh) {
  const int64_t B = sh.B, D = sh.D;
  const int t = sh.t;
  ADA_CHECK(t >= 1 && B >= 0 && D >= 1, "user_adapter_backward: bad shape t=" << t << " B=" << B << " D=" << D);
  if (B == 0) return;
  DeviceMemory* mem = device_memory();
  T* d_r2 = work;               // [B, D]
  T* d_a2 = d_r2 + B * D;       // [B, D]
  T* d_a1r = d_a2 + B * D;      // [B, 2D]
  T* d_a1 = d_a1r + B * 2 * D;  // [B, 2D]
  T* d_z = d_a1 + B * 2 * D;    // [B, 2D]
  T* z = d_z + B * 2 * D;       // [B, 2D]
  T* d_h = z + B * 2 * D;       // [B, D]
  T* d_hprev = d_h + B * D;     // [B, D]
  T* d_gi = d_hprev + B * D;    // [B, 3D]
  T* d_gh = d_gi + B * 3 * D;   // [B, 3D]
  layernorm_backward(d_r2, g.ln_w, g.ln_b, d_out, sv.r2, w.ln_w, sv.mean, sv.rstd, B, D);
  mem_copy(mem, d_v, d_r2, B * D);  // the residual
  dropout_backward(d_a2, d_r2, B * D, sh.p, sh.seed, sh.stream);
  linear_backward(d_a1r, g.w2, g.b2, d_a2, sv.a1r, w.w2, B, 2 * D, D, false);
  activation_backward(d_a1, d_a1r, sv.a1r, B * 2 * D, Activation::kRelu);
  concat_cols(z, v, sv.hs + int64_t(t) * B * D, B, D, D);
  linear_backward(d_z, g.w1, g.b1, d_a1, z, w.w1, B, 2 * D, 2 * D, false);
  mem_zero(mem, d_h, B * D);
  split_cols_add(d_v, d_h, d_z, B, D, D);
  for (int s = t - 1; s >= 0; --s) {
    gru_cell_backward(d_gi, d_gh, d_hprev, d_h, sv.gates + int64_t(s) * B * 3 * D,
                      sv.gh + int64_t(s) * B * 3 * D, sv.hs + int64_t(s) * B * D, B, D);
    linear_backward(d_hprev, g.w_hh, g.b_hh, d_gh, sv.hs + int64_t(s) * B * D, w.w_hh, B, D, 3 * D, true);
    linear_backward(d_users + int64_t(s) * B * D, g.w_ih, g.b_ih, d_gi, users + int64_t(s) * B * D, w.w_ih, B, D,
                    3 * D, true);
    std::swap(d_h, d_hprev);
  }
}

template void Backend<float>::user_adapter_forward(float*, const UserAdapterSaved<float>&, float*, const float*,
                                                   const float*, const UserAdapterTensors<const float*>&,
                                                   const UserAdapterShape&);
template void Backend<double>::user_adapter_forward(double*, const UserAdapterSaved<double>&, double*,
                                                    const double*, const double*,
                                                    const UserAdapterTensors<const double*>&,
                                                    const UserAdapterShape&);
template void Backend<float>::user_adapter_backward(float*, float*, const UserAdapterTensors<float*>&, float*,
                                                    const float*, const UserAdapterSaved<float>&, const float*,
                                                    const float*, const UserAdapterTensors<const float*>&,
                                                    const UserAdapterShape&);
template void Backend<double>::user_adapter_backward(double*, double*, const UserAdapterTensors<double*>&, double*,
                                                     const double*, const UserAdapterSaved<double>&, const double*,
                                                     const double*, const UserAdapterTensors<const double*>&,
                                                     const UserAdapterShape&);

}  // namespace ada
