// The GRU cell's element-wise math (nn.GRU: gates r, z, n in PyTorch's order and formulas), written
// once for the CPU backend, the CUDA op (kernels/cuda_backend.cu) and the fused user adapter
// (kernels/fused_user.cu). Per batch row, gi = W_ih x + b_ih and gh = W_hh h_prev + b_hh are [3D]
// rows laid out [r | z | n]; the functions below handle one column d of one row.
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r gh_n),
//   h = (1 - z) n + z h_prev.
#pragma once
#include <math.h>

#include "ada/host_device.hpp"

namespace ada {

ADA_HOST_DEVICE inline float gru_sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
ADA_HOST_DEVICE inline double gru_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
ADA_HOST_DEVICE inline float gru_tanh(float x) { return tanhf(x); }
ADA_HOST_DEVICE inline double gru_tanh(double x) { return tanh(x); }

template <class T>
struct GruGates {
  T r, z, n;  // saved for the backward
  T h;        // the new hidden state
};

// Column d of one row: gi3 and gh3 point at the row's [3D] pre-activations.
// (I: the caller's index type; the kernels keep theirs.)
template <class T, class I>
ADA_HOST_DEVICE inline GruGates<T> gru_cell_gates(const T* gi3, const T* gh3, I D, I d, T h_prev) {
  GruGates<T> g;
  g.r = gru_sigmoid(gi3[d] + gh3[d]);
  g.z = gru_sigmoid(gi3[D + d] + gh3[D + d]);
  g.n = gru_tanh(gi3[2 * D + d] + g.r * gh3[2 * D + d]);
  g.h = (T(1) - g.z) * g.n + g.z * h_prev;
  return g;
}

// The backward of column d: dn = dh (1 - z), dz = dh (h_prev - n), d h_prev = dh z (the direct
// path; W_hh's adds to it); da_n = dn (1 - n^2), dr = da_n gh_n, da_z = dz z (1 - z), da_r = dr r
// (1 - r). The r and z pre-activations are sums gi + gh, so both get da_r and da_z; of n's, gi_n
// gets da_n and gh_n (inside r *) gets da_n r.
template <class T>
struct GruGrads {
  T ar, az, an;  // d of the pre-activations through gi (and through gh for r and z)
  T gh_n;        // d gh_n = da_n r
  T h_prev;      // the direct part of d h_prev
};

template <class T>
ADA_HOST_DEVICE inline GruGrads<T> gru_cell_grads(T r, T z, T n, T gh_n, T h_prev, T dh) {
  const T dn = dh * (T(1) - z);
  const T dz = dh * (h_prev - n);
  const T dan = dn * (T(1) - n * n);
  const T dr = dan * gh_n;
  GruGrads<T> g;
  g.ar = dr * r * (T(1) - r);
  g.az = dz * z * (T(1) - z);
  g.an = dan;
  g.gh_n = dan * r;
  g.h_prev = dh * z;
  return g;
}

// Writes column d of a row's d gi and d gh ([3D] each, [r | z | n]).
template <class T, class I>
ADA_HOST_DEVICE inline void gru_store_grads(T* dgi3, T* dgh3, I D, I d, const GruGrads<T>& g) {
  dgi3[d] = g.ar;
  dgh3[d] = g.ar;
  dgi3[D + d] = g.az;
  dgh3[D + d] = g.az;
  dgi3[2 * D + d] = g.an;
  dgh3[2 * D + d] = g.gh_n;
}

}  // namespace ada
