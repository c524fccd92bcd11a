// The CUDA Backend<float>: the ops of include/ada/backend.hpp with the semantics of the CPU backend
// (host/cpu_backend.cpp, the specification). Pointer, stream and synchronisation rules: see
// include/ada/cuda_backend.hpp. Matrix products go to cuBLAS (FP32, no TF32); everything else is a
// hand-written kernel below. Where the CPU sums in a fixed order over rows (bias and LayerNorm
// parameter gradients, the filter's dW chunks, attention dk/dv, context attention dC), the kernels
// keep one thread per output and sum in the same order, so results are deterministic; the
// embedding/sampled-BCE table gradients use atomicAdd (order not fixed, as in every GPU trainer).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"
#include "ada/gru_cell.hpp"
#include "ada/rng.hpp"
#include "ada/tensor.hpp"
#include "ada/topk.hpp"
#include "kernels/cuda_util.cuh"
#include "kernels/fused_context.cuh"
#include "kernels/fused_filter.cuh"
#include "kernels/fused_user.cuh"
#include "kernels/phase_clock.cuh"
#include "kernels/topk.cuh"
#include "src/core/work_order.hpp"

namespace ada {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// out[m, o] = b[o]
__global__ void k_fill_rows(float* out, const float* b, int64_t M, int64_t O) {
  ADA_GRID_STRIDE(i, M * O) out[i] = b[i % O];
}

// dst[o] += sum_m src[m, o], rows summed by 8 threads (rows m = ty mod 8) then the 8 partials in
// order: deterministic. Block (32, 8), grid ceil(O / 32).
__global__ void k_col_sum_add(float* dst, const float* src, int64_t M, int64_t O) {
  __shared__ float part[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t o = int64_t(blockIdx.x) * 32 + tx;
  float acc = 0.f;
  if (o < O)
    for (int64_t m = ty; m < M; m += 8) acc += src[m * O + o];
  part[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && o < O) {
    float s = 0.f;
    for (int k = 0; k < 8; ++k) s += part[k][tx];
    dst[o] += s;
  }
}

// LayerNorm forward: one warp per row (two passes: mean, then variance of x - mean).
__global__ void k_ln_fwd(float* out, float* mean, float* rstd, const float* in, const float* w,
                         const float* b, int64_t M, int64_t C, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t m = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; m < M; m += warps) {
    const float* x = in + m * C;
    float s = 0.f;
    for (int64_t c = lane; c < C; c += 32) s += x[c];
    const float mu = warp_sum(s) / float(C);
    float v = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float d = x[c] - mu;
      v += d * d;
    }
    const float var = warp_sum(v) / float(C);
    const float rs = 1.0f / sqrtf(var + eps);
    float* y = out + m * C;
    for (int64_t c = lane; c < C; c += 32) y[c] = (x[c] - mu) * rs * w[c] + b[c];
    if (lane == 0) {
      if (mean) mean[m] = mu;
      if (rstd) rstd[m] = rs;
    }
  }
}

// LayerNorm backward, input gradient: one warp per row.
__global__ void k_ln_bwd_din(float* din, const float* dout, const float* in, const float* w,
                             const float* mean, const float* rstd, int64_t M, int64_t C) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t m = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; m < M; m += warps) {
    const float* x = in + m * C;
    const float* dy = dout + m * C;
    const float mu = mean[m], rs = rstd[m];
    float a = 0.f, bsum = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float xhat = (x[c] - mu) * rs;
      const float dn = w[c] * dy[c];
      a += dn;
      bsum += dn * xhat;
    }
    const float dnorm_mean = warp_sum(a) / float(C);
    const float dnorm_norm_mean = warp_sum(bsum) / float(C);
    float* dx = din + m * C;
    for (int64_t c = lane; c < C; c += 32) {
      const float xhat = (x[c] - mu) * rs;
      dx[c] = (w[c] * dy[c] - dnorm_mean - xhat * dnorm_norm_mean) * rs;
    }
  }
}

// LayerNorm parameter gradients dw[c] += sum_m xhat dy, db[c] += sum_m dy. Block (32, 8).
__global__ void k_ln_bwd_params(float* dw, float* db, const float* dout, const float* in,
                                const float* mean, const float* rstd, int64_t M, int64_t C) {
  __shared__ float pw[8][33], pb[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  float aw = 0.f, ab = 0.f;
  if (c < C)
    for (int64_t m = ty; m < M; m += 8) {
      const float dy = dout[m * C + c];
      aw += (in[m * C + c] - mean[m]) * rstd[m] * dy;
      ab += dy;
    }
  pw[ty][tx] = aw;
  pb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && c < C) {
    float sw = 0.f, sb = 0.f;
    for (int k = 0; k < 8; ++k) {
      sw += pw[k][tx];
      sb += pb[k][tx];
    }
    if (dw) dw[c] += sw;
    if (db) db[c] += sb;
  }
}

__global__ void k_embed_fwd(float* out, const int32_t* ids, const float* table, const int32_t* pos,
                            const float* pos_table, int64_t M, int64_t D) {
  ADA_GRID_STRIDE(i, M * D) {
    const int64_t m = i / D, d = i % D;
    float y = table[int64_t(ids[m]) * D + d];
    if (pos_table) y += pos_table[int64_t(pos[m]) * D + d];
    out[i] = y;
  }
}

__global__ void k_embed_bwd(float* dtable, float* dpos, const float* dout, const int32_t* ids,
                            const int32_t* pos, int64_t M, int64_t D) {
  ADA_GRID_STRIDE(i, M * D) {
    const int64_t m = i / D, d = i % D;
    const float g = dout[i];
    if (dtable && ids[m] != 0) atomicAdd(dtable + int64_t(ids[m]) * D + d, g);
    if (dpos) atomicAdd(dpos + int64_t(pos[m]) * D + d, g);
  }
}

// Activation codes: 0 silu, 1 gelu, 2 relu.
__device__ __forceinline__ float act_f(float x, int a) {
  if (a == 2) return x > 0.f ? x : 0.f;
  if (a == 0) return x / (1.f + expf(-x));
  return 0.5f * x * (1.f + erff(x * 0.70710678118654752440f));
}
__device__ __forceinline__ float act_grad_f(float x, int a) {
  if (a == 2) return x > 0.f ? 1.f : 0.f;
  if (a == 0) {
    const float s = 1.f / (1.f + expf(-x));
    return s * (1.f + x * (1.f - s));
  }
  const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752440f));
  const float pdf = expf(-0.5f * x * x) * 0.39894228040143267794f;
  return cdf + x * pdf;
}
__global__ void k_act_fwd(float* out, const float* in, int64_t n, int a) {
  ADA_GRID_STRIDE(i, n) out[i] = act_f(in[i], a);
}
__global__ void k_act_bwd(float* din, const float* dout, const float* in, int64_t n, int a) {
  ADA_GRID_STRIDE(i, n) din[i] = dout[i] * act_grad_f(in[i], a);
}

// Dropout: one thread per Philox block of 4 consecutive elements, as the CPU's for_each_uniform.
__global__ void k_dropout(float* out, const float* in, int64_t n, float p, float keep_scale,
                          uint64_t seed, uint64_t stream) {
  ADA_GRID_STRIDE(blk, (n + 3) / 4) {
    const Philox4 r = philox4x32_10(uint32_t(blk), uint32_t(uint64_t(blk) >> 32), uint32_t(stream),
                                    uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
    const int64_t end = min(n, blk * 4 + 4);
    for (int64_t i = blk * 4; i < end; ++i)
      out[i] = u32_to_unit_float(r.v[i & 3]) >= p ? in[i] * keep_scale : 0.f;
  }
}

__global__ void k_add(float* y, const float* x, int64_t n) { ADA_GRID_STRIDE(i, n) y[i] += x[i]; }
__global__ void k_scale(float* x, int64_t n, float s) { ADA_GRID_STRIDE(i, n) x[i] *= s; }

__global__ void k_gather_last(float* out, const float* in, const int64_t* tok, int64_t S,
                              int64_t D) {
  ADA_GRID_STRIDE(i, S * D) {
    const int64_t s = i / D, d = i % D;
    out[i] = in[(tok[s + 1] - 1) * D + d];
  }
}
__global__ void k_scatter_last_add(float* din, const float* dout, const int64_t* tok, int64_t S,
                                   int64_t D) {
  ADA_GRID_STRIDE(i, S * D) {
    const int64_t s = i / D, d = i % D;
    atomicAdd(din + (tok[s + 1] - 1) * D + d,
              dout[i]);  // atomic only for empty sequences' aliasing
  }
}

// ---- jagged causal multi-head attention ----

struct AttnArgs {
  const int64_t* tok;     // (S+1) token offsets
  const int64_t* poff;    // (S+1) probability offsets (heads * keys of the sequences before)
  const uint8_t* masked;  // (S)
  const int32_t* order;   // (S) block i takes sequence order[i]: the most probabilities first
  int H, hd;
  bool last_only;
  float scale, p, keep_scale;
  uint64_t seed, stream;
};

// Keys (per head) stored before query i of a sequence of n tokens (the CPU's pbase walk).
__device__ __forceinline__ int64_t attn_query_base(int64_t i, int64_t n, bool masked,
                                                   bool last_only) {
  return last_only ? 0 : (masked ? i * n : i * (i + 1) / 2);
}

// The Philox block of the last index asked for: the dropout words of consecutive probability
// indices (4 per block) cost one Philox call, not four.
struct PhiloxCache {
  uint64_t block = ~uint64_t(0);
  Philox4 r{};
  __device__ __forceinline__ uint32_t word(const AttnArgs& a, uint64_t idx) {
    if ((idx >> 2) != block) {
      block = idx >> 2;
      r = philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(a.stream), uint32_t(a.stream >> 32),
                        uint32_t(a.seed), uint32_t(a.seed >> 32));
    }
    const uint32_t w = idx & 3;
    return w == 0 ? r.v[0] : w == 1 ? r.v[1] : w == 2 ? r.v[2] : r.v[3];
  }
  // The dropout factor of probability idx: keep_scale or 0 (1 without dropout).
  __device__ __forceinline__ float keep(const AttnArgs& a, uint64_t idx) {
    if (a.p <= 0.f) return 1.f;
    return u32_to_unit_float(word(a, idx)) >= a.p ? a.keep_scale : 0.f;
  }
};

// The dropout factor of probability idx without a cache (one Philox block per call).
__device__ __forceinline__ float attn_keep(const AttnArgs& a, int64_t idx) {
  PhiloxCache c;
  return c.keep(a, uint64_t(idx));
}

constexpr int kChunk = 8;  // head-dim values accumulated per lane per pass

// One warp: out[d] = sum_j weight(j) rows[j W + d] for d < hd and keys j < nk (a head's slice of
// the value or key rows); lane l takes keys l, l + 32, ..., kChunk values of d per pass, then warp
// sums; lane 0 writes.
template <class Weight>
__device__ __forceinline__ void warp_weighted_rows(float* out, const float* rows, int64_t W, int hd,
                                                   int64_t nk, int lane, Weight weight) {
  for (int d0 = 0; d0 < hd; d0 += kChunk) {
    float acc[kChunk];
#pragma unroll
    for (int c = 0; c < kChunk; ++c) acc[c] = 0.f;
    for (int64_t j = lane; j < nk; j += 32) {
      const float wj = weight(j);
      const float* r = rows + j * W + d0;
#pragma unroll
      for (int c = 0; c < kChunk; ++c)
        if (d0 + c < hd) acc[c] += wj * r[c];
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c) acc[c] = warp_sum(acc[c]);
    if (lane == 0)
      for (int c = 0; c < kChunk && d0 + c < hd; ++c) out[d0 + c] = acc[c];
  }
}

// One block per sequence; its warps take the (query, head) pairs in turn. Lanes split the keys:
// scores and probabilities go straight into `probs` (CPU layout), the softmax max/sum and the
// output are warp reductions.
__global__ void k_attn_fwd(float* out, float* probs, const float* q, const float* k, const float* v,
                           AttnArgs a) {
  const int64_t s = a.order[blockIdx.x];
  const int64_t t0 = a.tok[s], n = a.tok[s + 1] - t0;
  const bool masked = a.masked[s] != 0;
  const float mask_add = masked ? -10000.f : 0.f;
  const int64_t i_begin = a.last_only ? n - 1 : 0;
  const int64_t W = int64_t(a.H) * a.hd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int64_t pairs = (n - i_begin) * a.H;
  for (int64_t pr = warp; pr < pairs; pr += nw) {
    const int64_t i = i_begin + pr / a.H;
    const int h = int(pr % a.H);
    const int64_t qrow = a.last_only ? s : t0 + i;
    const int64_t nk = masked ? n : i + 1;
    const int64_t off =
        a.poff[s] + int64_t(a.H) * attn_query_base(i, n, masked, a.last_only) + int64_t(h) * nk;
    float* ph = probs + off;
    const float* qh = q + qrow * W + int64_t(h) * a.hd;
    float mx = -INFINITY;
    for (int64_t j = lane; j < nk; j += 32) {
      const float* kh = k + (t0 + j) * W + int64_t(h) * a.hd;
      float dot = 0.f;
      for (int d = 0; d < a.hd; ++d) dot += qh[d] * kh[d];
      const float sc = dot * a.scale + mask_add;
      ph[j] = sc;
      mx = fmaxf(mx, sc);
    }
    warp_softmax_own(ph, nk, lane, mx);
    warp_weighted_rows(out + qrow * W + int64_t(h) * a.hd, v + t0 * W + int64_t(h) * a.hd, W, a.hd,
                       nk, lane, [&](int64_t j) {
                         const float keep = attn_keep(a, off + j);
                         return a.p > 0.f ? (keep != 0.f ? ph[j] * keep : 0.f) : ph[j];
                       });
  }
}

// Backward, one block per sequence. Phase 1 (warp per (query, head)): dp_j = <dout, v_j> * mask,
// ds_j = p_j (dp_j - sum_k p_k dp_k) * scale into `ds` (probability layout), dq = sum_j ds_j k_j.
// Phase 2 (thread per key element): dk += sum_i ds_ij q_i, dv += sum_i p_ij mask_ij dout_i, queries
// in increasing order as the CPU adds them.
__global__ void k_attn_bwd(float* dq, float* dk, float* dv, float* ds, const float* dout,
                           const float* probs, const float* q, const float* k, const float* v,
                           AttnArgs a) {
  const int64_t s = a.order[blockIdx.x];
  const int64_t t0 = a.tok[s], n = a.tok[s + 1] - t0;
  const bool masked = a.masked[s] != 0;
  const int64_t i_begin = a.last_only ? n - 1 : 0;
  const int64_t W = int64_t(a.H) * a.hd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int64_t pairs = (n - i_begin) * a.H;
  const int64_t pbase = a.poff[s];
  for (int64_t pr = warp; pr < pairs; pr += nw) {
    const int64_t i = i_begin + pr / a.H;
    const int h = int(pr % a.H);
    const int64_t qrow = a.last_only ? s : t0 + i;
    const int64_t nk = masked ? n : i + 1;
    const int64_t off =
        pbase + int64_t(a.H) * attn_query_base(i, n, masked, a.last_only) + int64_t(h) * nk;
    const float* ph = probs + off;
    float* dsr = ds + off;
    const float* doh = dout + qrow * W + int64_t(h) * a.hd;
    float dot_sum = 0.f;
    for (int64_t j = lane; j < nk; j += 32) {
      const float m = attn_keep(a, off + j);
      const float* vh = v + (t0 + j) * W + int64_t(h) * a.hd;
      float g = 0.f;
      for (int d = 0; d < a.hd; ++d) g += doh[d] * vh[d];
      const float dpj = g * m;
      dsr[j] = dpj;
      dot_sum += ph[j] * dpj;
    }
    dot_sum = warp_sum(dot_sum);
    for (int64_t j = lane; j < nk; j += 32) dsr[j] = ph[j] * (dsr[j] - dot_sum) * a.scale;
    warp_weighted_rows(dq + qrow * W + int64_t(h) * a.hd, k + t0 * W + int64_t(h) * a.hd, W, a.hd,
                       nk, lane, [&](int64_t j) { return dsr[j]; });
  }
  __syncthreads();  // ds of every query of this sequence is in global memory, visible to the block
  for (int64_t e = threadIdx.x; e < n * W; e += blockDim.x) {
    const int64_t j = e / W, r = e % W;
    const int h = int(r / a.hd);
    const int64_t i_lo = a.last_only ? n - 1 : (masked ? 0 : j);
    float ak = dk[(t0 + j) * W + r], av = dv[(t0 + j) * W + r];
    for (int64_t i = i_lo; i < n; ++i) {
      const int64_t nk = masked ? n : i + 1;
      const int64_t idx =
          pbase + int64_t(a.H) * attn_query_base(i, n, masked, a.last_only) + int64_t(h) * nk + j;
      const int64_t qrow = a.last_only ? s : t0 + i;
      const float m = attn_keep(a, idx);
      av += probs[idx] * m * dout[qrow * W + r];
      ak += ds[idx] * q[qrow * W + r];
    }
    dk[(t0 + j) * W + r] = ak;
    dv[(t0 + j) * W + r] = av;
  }
}

// The same two ops with a thread per (query, head) instead of a warp (k_attn_fwd_pairs,
// k_attn_bwd_pairs; head_dim <= 32, the sequence's rows in shared memory): at SASRec's shapes (16
// heads of 4, sequences of up to 50 tokens) a warp per pair left most lanes idle on a handful of
// keys and went through global memory between its reductions, so the all-masked sequences (50 x
// 50 keys per head) made the critical path. Here a thread walks its keys in order, as the CPU does:
// scores from shared memory (recomputed per pass: hd multiply-adds), the max, the sum of exp, then
// p = exp(s - max) * (1 / sum) and the output; the dropout factor from one Philox block per 4
// consecutive keys (PhiloxCache: the words the CPU draws for the same probability indices).
// All four attention kernels take the sequences in the order a.order, the most probabilities first
// (src/core/work_order.hpp): a block per sequence, and the all-masked 50-token ones (2,500 keys a
// head) would otherwise start wherever they happen to sit in the batch, the last of them in the
// grid's final wave.

// The pair kernel for a head_dim (instantiated for up to 4, 8 and 32), the phase-clocked one when
// `clocked`.
template <class K>
K pick_attn_kernel(int hd, bool clocked, K k4, K k8, K k32, K c4, K c8, K c32) {
  if (clocked) return hd <= 4 ? c4 : hd <= 8 ? c8 : c32;
  return hd <= 4 ? k4 : hd <= 8 ? k8 : k32;
}

// Whether the thread-per-pair kernels take a shape: head_dim up to 32 and the longest sequence's
// rows (two [n, W] arrays) in the default 48 KB of shared memory.
inline bool attn_pairs_fit(int hd, int64_t W, int64_t max_len) {
  return hd >= 1 && hd <= 32 && size_t(2 * max_len * W) * sizeof(float) <= 48 * 1024;
}

// A head's slice (hd <= HDMAX values) in registers: loaded, o += w row, stored.
template <int HDMAX>
__device__ __forceinline__ void head_load(float (&r)[HDMAX], const float* src, int hd) {
#pragma unroll
  for (int d = 0; d < HDMAX; ++d) r[d] = d < hd ? src[d] : 0.f;
}
template <int HDMAX>
__device__ __forceinline__ void head_axpy(float (&o)[HDMAX], float w, const float* row, int hd) {
#pragma unroll
  for (int d = 0; d < HDMAX; ++d)
    if (d < hd) o[d] += w * row[d];
}
template <int HDMAX>
__device__ __forceinline__ void head_store(float* dst, const float (&o)[HDMAX], int hd) {
#pragma unroll
  for (int d = 0; d < HDMAX; ++d)
    if (d < hd) dst[d] = o[d];
}

// Rows t0 .. t0 + n - 1 of a and b ([*, W]) into as and bs ([n][W] each); the caller's barrier follows.
__device__ __forceinline__ void stage_rows2(float* as, float* bs, const float* a, const float* b, int64_t t0, int64_t n,
                                            int64_t W) {
  for (int64_t e = threadIdx.x; e < n * W; e += blockDim.x) {
    as[e] = a[t0 * W + e];
    bs[e] = b[t0 * W + e];
  }
}

// The pair kernels' phase clocks (kernels/phase_clock.cuh; "attention_forward" and
// "attention_backward", per sequence): forward, the k and v rows staged, then the thread's pairs;
// backward, the k and v rows staged, phase 1 (queries), the q and dout rows staged, phase 2 (keys);
// both, the slowest block.
enum AttnFwdSlot { kAfStage = 1, kAfPairs, kAfMaxBlock };
enum AttnBwdSlot { kAbStage = 1, kAbQueries, kAbRestage, kAbKeys, kAbMaxBlock };

template <int HDMAX, bool kClock>
__global__ void __launch_bounds__(kThreads)
k_attn_fwd_pairs(float* out, float* probs, const float* q, const float* k, const float* v, AttnArgs a,
                 unsigned long long* prof) {
  extern __shared__ float sm[];  // k rows then v rows of the sequence, [n][W] each
  PhaseClock<kClock> clk(prof);
  const int64_t s = a.order[blockIdx.x];
  const int64_t t0 = a.tok[s], n = a.tok[s + 1] - t0;
  const bool masked = a.masked[s] != 0;
  const float mask_add = masked ? -10000.f : 0.f;
  const int64_t i_begin = a.last_only ? n - 1 : 0;
  const int hd = a.hd;
  const int64_t W = int64_t(a.H) * hd;
  float* ks = sm;
  float* vs = sm + n * W;
  stage_rows2(ks, vs, k, v, t0, n, W);
  __syncthreads();
  clk.lap(kAfStage);
  const int64_t pairs = (n - i_begin) * a.H;
  for (int64_t pr = threadIdx.x; pr < pairs; pr += blockDim.x) {
    const int64_t i = i_begin + pr / a.H;
    const int h = int(pr % a.H);
    const int64_t qrow = a.last_only ? s : t0 + i;
    const int64_t nk = masked ? n : i + 1;
    const int64_t off = a.poff[s] + int64_t(a.H) * attn_query_base(i, n, masked, a.last_only) + int64_t(h) * nk;
    float qr[HDMAX];
    head_load(qr, q + qrow * W + int64_t(h) * hd, hd);
    auto score = [&](int64_t j) {
      const float* kj = ks + j * W + int64_t(h) * hd;
      float acc = 0.f;
#pragma unroll
      for (int d = 0; d < HDMAX; ++d)
        if (d < hd) acc += qr[d] * kj[d];
      return acc * a.scale + mask_add;
    };
    float mx = -INFINITY;
    for (int64_t j = 0; j < nk; ++j) mx = fmaxf(mx, score(j));
    float sum = 0.f;
    for (int64_t j = 0; j < nk; ++j) sum += expf(score(j) - mx);
    const float inv = 1.f / sum;
    float o[HDMAX];
#pragma unroll
    for (int d = 0; d < HDMAX; ++d) o[d] = 0.f;
    PhiloxCache rng;
    for (int64_t j = 0; j < nk; ++j) {
      const float pj = expf(score(j) - mx) * inv;
      probs[off + j] = pj;
      float w = pj;
      if (a.p > 0.f) {
        const float m = rng.keep(a, uint64_t(off + j));
        w = m != 0.f ? pj * m : 0.f;
      }
      head_axpy(o, w, vs + j * W + int64_t(h) * hd, hd);
    }
    head_store(out + qrow * W + int64_t(h) * hd, o, hd);
  }
  clk.lap(kAfPairs);
  clk.max_since_start(kAfMaxBlock);
  clk.unit();
}

// Backward. Phase 1, thread per (query, head), k and v rows in shared memory: dp_j = <dout, v_j> m_j
// into `ds`, their sum weighted by p, then ds_j = p_j (dp_j - sum) scale over them and dq = sum_j
// ds_j k_j (keys in order). Phase 2, thread per (key, head), the queries' q and dout rows in the
// same shared memory: dv_j += sum_i p_ij m_ij dout_i and dk_j += sum_i ds_ij q_i over the queries
// in increasing order, as the CPU adds them; the loads of four queries are issued together.
template <int HDMAX, bool kClock>
__global__ void __launch_bounds__(kThreads)
k_attn_bwd_pairs(float* dq, float* dk, float* dv, float* ds, const float* dout, const float* probs, const float* q,
                 const float* k, const float* v, AttnArgs a, unsigned long long* prof) {
  extern __shared__ float sm[];
  PhaseClock<kClock> clk(prof);
  const int64_t s = a.order[blockIdx.x];
  const int64_t t0 = a.tok[s], n = a.tok[s + 1] - t0;
  const bool masked = a.masked[s] != 0;
  const int64_t i_begin = a.last_only ? n - 1 : 0, nq = n - i_begin;
  const int hd = a.hd;
  const int64_t W = int64_t(a.H) * hd;
  const int64_t pbase = a.poff[s];
  auto qrow_of = [&](int64_t i) { return a.last_only ? s : t0 + i; };
  float* ks = sm;
  float* vs = sm + n * W;
  stage_rows2(ks, vs, k, v, t0, n, W);
  __syncthreads();
  clk.lap(kAbStage);
  for (int64_t pr = threadIdx.x; pr < nq * a.H; pr += blockDim.x) {
    const int64_t i = i_begin + pr / a.H;
    const int h = int(pr % a.H);
    const int64_t qrow = qrow_of(i);
    const int64_t nk = masked ? n : i + 1;
    const int64_t off = pbase + int64_t(a.H) * attn_query_base(i, n, masked, a.last_only) + int64_t(h) * nk;
    float g[HDMAX];
    head_load(g, dout + qrow * W + int64_t(h) * hd, hd);
    PhiloxCache rng;
    float dot_sum = 0.f;
    for (int64_t j = 0; j < nk; ++j) {
      const float* vj = vs + j * W + int64_t(h) * hd;
      float dp = 0.f;
#pragma unroll
      for (int d = 0; d < HDMAX; ++d)
        if (d < hd) dp += g[d] * vj[d];
      dp *= rng.keep(a, uint64_t(off + j));
      ds[off + j] = dp;
      dot_sum += probs[off + j] * dp;
    }
    float acc[HDMAX];
#pragma unroll
    for (int d = 0; d < HDMAX; ++d) acc[d] = 0.f;
    for (int64_t j = 0; j < nk; ++j) {
      const float dsj = probs[off + j] * (ds[off + j] - dot_sum) * a.scale;
      ds[off + j] = dsj;
      head_axpy(acc, dsj, ks + j * W + int64_t(h) * hd, hd);
    }
    head_store(dq + qrow * W + int64_t(h) * hd, acc, hd);
  }
  __syncthreads();  // every ds of the sequence is written (and visible to the block); k, v rows done with
  clk.lap(kAbQueries);
  float* qs = sm;            // [nq][W]: the queries' q rows
  float* gs = sm + nq * W;   // [nq][W]: their dout rows
  stage_rows2(qs, gs, q, dout, qrow_of(i_begin), nq, W);  // the query rows are consecutive (one if last_only)
  __syncthreads();
  clk.lap(kAbRestage);
  for (int64_t pr = threadIdx.x; pr < n * a.H; pr += blockDim.x) {
    const int64_t j = pr / a.H;
    const int h = int(pr % a.H);
    float* dkj = dk + (t0 + j) * W + int64_t(h) * hd;
    float* dvj = dv + (t0 + j) * W + int64_t(h) * hd;
    float ak[HDMAX], av[HDMAX];
    head_load(ak, dkj, hd);
    head_load(av, dvj, hd);
    const int64_t i_lo = a.last_only ? n - 1 : (masked ? 0 : j);
    PhiloxCache rng;
    for (int64_t i0 = i_lo; i0 < n; i0 += 4) {
      float pm[4], dsv[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int64_t i = i0 + u;
        if (i < n) {
          const int64_t nk = masked ? n : i + 1;
          const int64_t idx = pbase + int64_t(a.H) * attn_query_base(i, n, masked, a.last_only) + int64_t(h) * nk + j;
          pm[u] = probs[idx];
          dsv[u] = ds[idx];
          pm[u] *= rng.keep(a, uint64_t(idx));
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int64_t i = i0 + u;
        if (i < n) {
          head_axpy(av, pm[u], gs + (i - i_begin) * W + int64_t(h) * hd, hd);
          head_axpy(ak, dsv[u], qs + (i - i_begin) * W + int64_t(h) * hd, hd);
        }
      }
    }
    head_store(dkj, ak, hd);
    head_store(dvj, av, hd);
  }
  clk.lap(kAbKeys);
  clk.max_since_start(kAbMaxBlock);
  clk.unit();
}

// ---- sampled scorer + BCE ----

// One warp per (b, c): logit, the BCE term (summed in double per block into partial[blockIdx.x]),
// and when want_grad the gradient d loss / d logit written over the logit (as the CPU does).
__global__ void k_bce_logits(float* logits, double* partial, const float* u, const float* table,
                             const float* bias, const int32_t* items, int64_t B, int64_t C,
                             int64_t D, bool want_grad, float gscale) {
  __shared__ double wsum[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  double local = 0.0;
  for (int64_t pi = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; pi < B * C;
       pi += warps) {
    const int64_t b = pi / C, c = pi % C;
    const int32_t j = items[pi];
    const float* ub = u + b * D;
    const float* e = table + int64_t(j) * D;
    float dot = 0.f;
    for (int64_t d = lane; d < D; d += 32) dot += ub[d] * e[d];
    dot = warp_sum(dot);
    if (lane == 0) {
      const float s = (bias ? bias[j] : 0.f) + dot;
      const float pr = 1.f / (1.f + expf(-s));
      const float y = c == 0 ? 1.f : 0.f;
      const float lp = fmaxf(logf(pr), -100.f);
      const float l1p = fmaxf(logf(1.f - pr), -100.f);
      local -= double(y * lp + (1.f - y) * l1p);
      if (want_grad) {
        const float qv = pr * (1.f - pr);
        const float g = qv >= 1e-12f ? (pr - y) : (pr - y) * qv / 1e-12f;
        logits[pi] = g * gscale;
      } else {
        logits[pi] = s;
      }
    }
  }
  if (lane == 0) wsum[warp] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) t += wsum[w];
    partial[blockIdx.x] = t;
  }
}

// out[0] = sum of partial[0..n) in order (one thread: deterministic, n <= a few thousand).
__global__ void k_sum_partials(double* out, const double* partial, int n) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double t = 0.0;
    for (int i = 0; i < n; ++i) t += partial[i];
    out[0] = t;
  }
}

// du[b, d] = sum_c g[b, c] table[items[b, c], d]  (c in order, as the CPU)
__global__ void k_bce_du(float* du, const float* g, const float* table, const int32_t* items,
                         int64_t B, int64_t C, int64_t D) {
  ADA_GRID_STRIDE(i, B * D) {
    const int64_t b = i / D, d = i % D;
    float acc = 0.f;
    for (int64_t c = 0; c < C; ++c) acc += g[b * C + c] * table[int64_t(items[b * C + c]) * D + d];
    du[i] = acc;
  }
}
// dtable[items[b, c]] += g[b, c] u[b] except the padding row 0.
__global__ void k_bce_dtable(float* dtable, const float* g, const float* u, const int32_t* items,
                             int64_t B, int64_t C, int64_t D) {
  ADA_GRID_STRIDE(i, B * C * D) {
    const int64_t pi = i / D, d = i % D;
    const int32_t j = items[pi];
    if (j != 0) atomicAdd(dtable + int64_t(j) * D + d, g[pi] * u[(pi / C) * D + d]);
  }
}
__global__ void k_bce_dbias(float* dbias, const float* g, const int32_t* items, int64_t n) {
  ADA_GRID_STRIDE(i, n) atomicAdd(dbias + items[i], g[i]);
}

// sum of x^2 in double: grid-stride per thread, warp then block reduction into partial[blockIdx.x].
__global__ void k_sum_squares(double* partial, const float* x, int64_t n) {
  __shared__ double wsum[32];
  double acc = 0.0;
  ADA_GRID_STRIDE(i, n) acc += double(x[i]) * double(x[i]);
  acc = warp_sum(acc);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) wsum[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) t += wsum[w];
    partial[blockIdx.x] = t;
  }
}

// ---- learnable frequency filter (direct DFT) ----

// Tables as the CPU's DftTables: cos [Kf*K], sin [Kf*K] (0 at DC/Nyquist), coef [Kf].
struct DftDev {
  const float* cos_t;
  const float* sin_t;
  const float* coef;
  int64_t K, Kf;
};

// One block per (block r, tile of TD channels); threads: TD channels x (blockDim / TD) rows that
// split the frequencies (rfft) and then the items (irfft). Shared: x [K, TD], G [Kf, TD] x 2.
__global__ void k_filter_fwd(float* out, const float* in, const float* W, DftDev t, int64_t D,
                             int TD, float s) {
  extern __shared__ float sm[];
  const int64_t K = t.K, Kf = t.Kf;
  float* x = sm;
  float* Gr = x + K * TD;
  float* Gi = Gr + Kf * TD;
  const int64_t r = blockIdx.x;
  const int tx = threadIdx.x % TD, ty = threadIdx.x / TD, TY = blockDim.x / TD;
  const int64_t d = int64_t(blockIdx.y) * TD + tx;
  const bool valid = d < D;
  for (int64_t n = ty; n < K; n += TY) x[n * TD + tx] = valid ? in[(r * K + n) * D + d] : 0.f;
  __syncthreads();
  for (int64_t f = ty; f < Kf; f += TY) {
    float fr = 0.f, fi = 0.f;
    for (int64_t n = 0; n < K; ++n) {
      const float xv = x[n * TD + tx];
      fr += t.cos_t[f * K + n] * xv;
      fi -= t.sin_t[f * K + n] * xv;
    }
    fr *= s;
    fi *= s;
    const float wr = valid ? W[2 * (f * D + d)] : 0.f, wi = valid ? W[2 * (f * D + d) + 1] : 0.f;
    Gr[f * TD + tx] = fr * wr - fi * wi;
    Gi[f * TD + tx] = fr * wi + fi * wr;
  }
  __syncthreads();
  for (int64_t n = ty; n < K; n += TY) {
    float y = 0.f;
    for (int64_t f = 0; f < Kf; ++f) {
      const float c = t.coef[f] * t.cos_t[f * K + n] * s, sn = t.coef[f] * t.sin_t[f * K + n] * s;
      y += c * Gr[f * TD + tx] - sn * Gi[f * TD + tx];
    }
    if (valid) out[(r * K + n) * D + d] = y;
  }
}

constexpr int64_t kFilterChunk = 32;  // blocks per dW partial, as the CPU backend

// Backward: one block per (chunk of kFilterChunk blocks, channel tile). Per block r: F = rfft(x),
// dG = coef * rfft(dout), dW partial += (dGr Fr + dGi Fi, dGi Fr - dGr Fi), dF = dG conj(W),
// din = rfft adjoint (coef 1) of dF. The chunk's dW partial goes to partial[chunk][Kf][D][2].
// Shared: x, g [K, TD]; dFr, dFi [Kf, TD]; pW [Kf, TD, 2] (each entry owned by one thread).
__global__ void k_filter_bwd(float* din, float* partial, const float* dout, const float* in,
                             const float* W, DftDev t, int64_t R, int64_t D, int TD, float s) {
  extern __shared__ float sm[];
  const int64_t K = t.K, Kf = t.Kf;
  float* x = sm;
  float* g = x + K * TD;
  float* dFr = g + K * TD;
  float* dFi = dFr + Kf * TD;
  float* pW = dFi + Kf * TD;
  const int64_t ch = blockIdx.x;
  const int tx = threadIdx.x % TD, ty = threadIdx.x / TD, TY = blockDim.x / TD;
  const int64_t d = int64_t(blockIdx.y) * TD + tx;
  const bool valid = d < D;
  for (int64_t f = ty; f < Kf; f += TY) pW[2 * (f * TD + tx)] = pW[2 * (f * TD + tx) + 1] = 0.f;
  const int64_t r_end = min(R, (ch + 1) * kFilterChunk);
  for (int64_t r = ch * kFilterChunk; r < r_end; ++r) {
    for (int64_t n = ty; n < K; n += TY) {
      x[n * TD + tx] = valid ? in[(r * K + n) * D + d] : 0.f;
      g[n * TD + tx] = valid ? dout[(r * K + n) * D + d] : 0.f;
    }
    __syncthreads();
    for (int64_t f = ty; f < Kf; f += TY) {
      float fr = 0.f, fi = 0.f, gr = 0.f, gi = 0.f;
      for (int64_t n = 0; n < K; ++n) {
        const float c = t.cos_t[f * K + n], sn = t.sin_t[f * K + n];
        const float xv = x[n * TD + tx], gv = g[n * TD + tx];
        fr += c * xv;
        fi -= sn * xv;
        gr += c * gv;
        gi -= sn * gv;
      }
      fr *= s;
      fi *= s;
      gr *= s;
      gi *= s;
      const float dgr = gr * t.coef[f], dgi = gi * t.coef[f];
      pW[2 * (f * TD + tx)] += dgr * fr + dgi * fi;
      pW[2 * (f * TD + tx) + 1] += dgi * fr - dgr * fi;
      const float wr = valid ? W[2 * (f * D + d)] : 0.f, wi = valid ? W[2 * (f * D + d) + 1] : 0.f;
      dFr[f * TD + tx] = dgr * wr + dgi * wi;
      dFi[f * TD + tx] = dgi * wr - dgr * wi;
    }
    __syncthreads();
    for (int64_t n = ty; n < K; n += TY) {
      float y = 0.f;
      for (int64_t f = 0; f < Kf; ++f) {
        const float c = 1.f * t.cos_t[f * K + n] * s, sn = 1.f * t.sin_t[f * K + n] * s;
        y += c * dFr[f * TD + tx] - sn * dFi[f * TD + tx];
      }
      if (valid) din[(r * K + n) * D + d] = y;
    }
    __syncthreads();  // x, g, dF are overwritten by the next block
  }
  const int64_t WN = Kf * D * 2;
  if (valid)
    for (int64_t f = ty; f < Kf; f += TY) {
      partial[ch * WN + 2 * (f * D + d)] = pW[2 * (f * TD + tx)];
      partial[ch * WN + 2 * (f * D + d) + 1] = pW[2 * (f * TD + tx) + 1];
    }
}

// dW[i] += partial[0][i] + partial[1][i] + ... in chunk order (the CPU's order).
__global__ void k_filter_dw_reduce(float* dW, const float* partial, int64_t chunks, int64_t WN) {
  ADA_GRID_STRIDE(i, WN) {
    float acc = dW[i];
    for (int64_t c = 0; c < chunks; ++c) acc += partial[c * WN + i];
    dW[i] = acc;
  }
}

// ---- context attention ----

// The CPU's dot_product: 8 partial sums in a fixed order.
__device__ __forceinline__ float dot8(const float* a, const float* b, int64_t n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// One block per row b; a warp per query: lanes split the Nc context rows for the scores and the
// softmax, then the D output channels (context rows summed in order).
__global__ void k_ctx_fwd(float* out, float* probs, const float* X, const float* C,
                          const int64_t* qo, int64_t Nc, int64_t D, float scale) {
  const int64_t b = blockIdx.x;
  const float* Cb = C + b * Nc * D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int64_t q = qo[b] + warp; q < qo[b + 1]; q += nw) {
    const float* x = X + q * D;
    float* p = probs + q * Nc;
    float mx = -INFINITY;
    for (int64_t j = lane; j < Nc; j += 32) {
      const float sc = dot8(x, Cb + j * D, D) * scale;
      p[j] = sc;
      mx = fmaxf(mx, sc);
    }
    warp_softmax_own(p, Nc, lane, mx);
    __syncwarp();
    for (int64_t d = lane; d < D; d += 32) {
      float o = 0.f;
      for (int64_t j = 0; j < Nc; ++j) o += p[j] * Cb[j * D + d];
      out[q * D + d] = o;
    }
    __syncwarp();
  }
}

// Backward, one block per row b. Phase 1 (warp per query): dp_j = <dout, C_j>,
// ds_j = p_j (dp_j - sum_k p_k dp_k) * scale into ds [q, Nc]; dX = sum_j ds_j C_j. Phase 2 (thread
// per element of C[b]): dC += sum over the row's queries, in order, of p_j dout + ds_j x.
__global__ void k_ctx_bwd(float* dX, float* dC, float* ds, const float* dout, const float* probs,
                          const float* X, const float* C, const int64_t* qo, int64_t Nc, int64_t D,
                          float scale) {
  const int64_t b = blockIdx.x;
  const float* Cb = C + b * Nc * D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int64_t q0 = qo[b], q1 = qo[b + 1];
  for (int64_t q = q0 + warp; q < q1; q += nw) {
    const float* g = dout + q * D;
    const float* p = probs + q * Nc;
    float* dsr = ds + q * Nc;
    float dot_sum = 0.f;
    for (int64_t j = lane; j < Nc; j += 32) {
      const float acc = dot8(g, Cb + j * D, D);
      dsr[j] = acc;
      dot_sum += p[j] * acc;
    }
    dot_sum = warp_sum(dot_sum);
    for (int64_t j = lane; j < Nc; j += 32) dsr[j] = p[j] * (dsr[j] - dot_sum) * scale;
    __syncwarp();
    for (int64_t d = lane; d < D; d += 32) {
      float dx = 0.f;
      for (int64_t j = 0; j < Nc; ++j) dx += dsr[j] * Cb[j * D + d];
      dX[q * D + d] = dx;
    }
    __syncwarp();
  }
  __syncthreads();
  float* dCb = dC + b * Nc * D;
  for (int64_t e = threadIdx.x; e < Nc * D; e += blockDim.x) {
    const int64_t j = e / D, d = e % D;
    float acc = dCb[e];
    for (int64_t q = q0; q < q1; ++q) {
      acc += probs[q * Nc + j] * dout[q * D + d];
      acc += ds[q * Nc + j] * X[q * D + d];
    }
    dCb[e] = acc;
  }
}

// ---- GRU cell, concat/split, Adam ----

// The math of ada/gru_cell.hpp (the CPU backend's too), one (b, d) per thread.
__global__ void k_gru_fwd(float* h_new, float* gates, const float* gi, const float* gh,
                          const float* h_prev, int64_t B, int64_t D) {
  ADA_GRID_STRIDE(i, B * D) {
    const int64_t b = i / D, d = i % D;
    const GruGates<float> o = gru_cell_gates(gi + b * 3 * D, gh + b * 3 * D, D, d, h_prev[i]);
    float* g = gates + b * 3 * D;
    g[d] = o.r;
    g[D + d] = o.z;
    g[2 * D + d] = o.n;
    h_new[i] = o.h;
  }
}

__global__ void k_gru_bwd(float* d_gi, float* d_gh, float* d_hprev, const float* d_hnew,
                          const float* gates, const float* gh, const float* h_prev, int64_t B,
                          int64_t D) {
  ADA_GRID_STRIDE(i, B * D) {
    const int64_t b = i / D, d = i % D;
    const float* g = gates + b * 3 * D;
    const GruGrads<float> o = gru_cell_grads(g[d], g[D + d], g[2 * D + d],
                                             gh[b * 3 * D + 2 * D + d], h_prev[i], d_hnew[i]);
    d_hprev[i] = o.h_prev;
    gru_store_grads(d_gi + b * 3 * D, d_gh + b * 3 * D, D, d, o);
  }
}

__global__ void k_concat(float* out, const float* a, const float* b, int64_t M, int64_t Da,
                         int64_t Db) {
  const int64_t Wd = Da + Db;
  ADA_GRID_STRIDE(i, M * Wd) {
    const int64_t m = i / Wd, c = i % Wd;
    out[i] = c < Da ? a[m * Da + c] : b[m * Db + (c - Da)];
  }
}
__global__ void k_split_add(float* da, float* db, const float* dout, int64_t M, int64_t Da,
                            int64_t Db) {
  const int64_t Wd = Da + Db;
  ADA_GRID_STRIDE(i, M * Wd) {
    const int64_t m = i / Wd, c = i % Wd;
    if (c < Da) {
      if (da) da[m * Da + c] += dout[i];
    } else if (db) {
      db[m * Db + (c - Da)] += dout[i];
    }
  }
}

__global__ void k_adam(float* param, float* m, float* v, const float* grad, int64_t n, float b1,
                       float b2, float e, float step_size, float bc2_sqrt) {
  ADA_GRID_STRIDE(i, n) {
    const float g = grad[i];
    const float mi = b1 * m[i] + (1.f - b1) * g;
    const float vi = b2 * v[i] + (1.f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + e;
    param[i] -= step_size * mi / denom;
  }
}

// dst[r * dst_stride + c] = src[r * src_stride + c] for rows x words 32-bit words (strides in words).
__global__ void k_copy_rows32(uint32_t* dst, int64_t dst_stride, const uint32_t* src,
                              int64_t src_stride, int64_t words, int64_t rows) {
  ADA_GRID_STRIDE(i, rows * words) {
    const int64_t r = i / words, c = i % words;
    dst[r * dst_stride + c] = src[r * src_stride + c];
  }
}

// ---------------------------------------------------------------------------------------------
// Device memory of the backend (Backend::device_memory()): everything on the backend's stream.
// ---------------------------------------------------------------------------------------------

class CudaDeviceMemory final : public DeviceMemory {
 public:
  void bind(cudaStream_t stream) { stream_ = stream; }

  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    ADA_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
  }
  // cudaFree waits for the device, so kernels still queued on the memory finish first.
  void release(void* p) noexcept override {
    if (p) cudaFree(p);
  }
  // Pageable source: cudaMemcpyAsync returns once it has staged the bytes (reusable at once).
  void upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    ADA_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    ADA_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    ADA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0 || dst == src) return;
    ADA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void zero(void* p, size_t bytes) override {
    if (bytes == 0) return;
    ADA_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
  }
  // Source and destination rows must not overlap.
  void copy_rows(void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t row_bytes,
                 size_t rows) override {
    if (row_bytes == 0 || rows == 0) return;
    ADA_CHECK(row_bytes % 4 == 0 && dst_stride % 4 == 0 && src_stride % 4 == 0 &&
                  reinterpret_cast<uintptr_t>(dst) % 4 == 0 &&
                  reinterpret_cast<uintptr_t>(src) % 4 == 0,
              "cuda copy_rows: sizes and pointers must be multiples of 4 bytes (row_bytes "
                  << row_bytes << ", strides " << dst_stride << " and " << src_stride << ")");
    if (dst_stride == row_bytes && src_stride == row_bytes) {  // one contiguous block
      copy(dst, src, rows * row_bytes);
      return;
    }
    const int64_t words = int64_t(row_bytes / 4), n = int64_t(rows);
    k_copy_rows32<<<grid_for(words * n), kThreads, 0, stream_>>>(
        static_cast<uint32_t*>(dst), int64_t(dst_stride / 4), static_cast<const uint32_t*>(src),
        int64_t(src_stride / 4), words, n);
    ADA_CUDA_LAUNCHED();
  }
  void synchronize() override { ADA_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

constexpr int kRedBlocks = 1024;  // partial sums of the reductions (fixed: deterministic results)
constexpr size_t kSmemLimit = 48 * 1024;

class CudaBackend final : public Backend<float> {
 public:
  explicit CudaBackend(int device) : device_(device) {
    ADA_CUDA_CHECK(cudaSetDevice(device));
    ADA_CUDA_CHECK(cudaStreamCreate(&stream_));  // blocking: orders with the legacy stream
    ADA_CUBLAS_CHECK(cublasCreate(&blas_));
    ADA_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    ADA_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));  // FP32, no TF32
    ADA_CUBLAS_CHECK(cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_HOST));
    ADA_CUDA_CHECK(cudaMalloc(&red_, sizeof(double) * (kRedBlocks + 1)));
    memory_.bind(stream_);
  }
  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& kv : filter_tables_) cudaFree(kv.second);
    if (meta_) cudaFree(meta_);
    if (work_) cudaFree(work_);
    if (red_) cudaFree(red_);
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  const char* name() const override { return "cuda"; }

  DeviceMemory* device_memory() override { return &memory_; }

  // U, table, bias: device; exclude, out_ids, out_scores: host. Exclusions (ids in 0..N-1 as the CPU's
  // topk_excluding requires; sorted, deduplicated, id 0 dropped) and the row offsets go through the meta scratch, the kernel's outputs through
  // the work scratch; waits for the stream (the ids come back to the host).
  void topk(ItemId* out_ids, const float* U, int64_t B, const float* table, const float* bias,
            int64_t N, int64_t D, int k, const Ragged& exclude, float* out_scores) override {
    ADA_CHECK(k >= 1 && k <= kGpuTopkMaxK,
              "cuda topk: k = " << k << " outside 1.." << kGpuTopkMaxK << " (the GPU kernel's limit)");
    ADA_CHECK(B >= 0 && B <= INT32_MAX, "cuda topk: bad number of rows B = " << B);
    ADA_CHECK(N >= 1 && N <= INT32_MAX, "cuda topk: bad number of items N = " << N);
    ADA_CHECK(D >= 1 && D <= INT32_MAX, "cuda topk: bad embedding size D = " << D);
    ADA_CHECK(!exclude.offsets.empty() && int64_t(exclude.rows()) == B,
              "cuda topk: exclude has " << (exclude.offsets.empty() ? 0 : exclude.rows())
                                        << " rows, expected " << B);
    ADA_CHECK(exclude.offsets.front() == 0 && exclude.offsets.back() == int64_t(exclude.ids.size()),
              "cuda topk: exclude offsets do not span its " << exclude.ids.size() << " ids");
    for (int64_t b = 0; b < B; ++b)
      ADA_CHECK(exclude.offsets[size_t(b)] <= exclude.offsets[size_t(b) + 1],
                "cuda topk: exclude offsets decrease at row " << b);
    if (B == 0) return;
    ADA_CHECK(out_ids != nullptr && U != nullptr && table != nullptr, "cuda topk: null pointer");
    if (D % 4 == 0)  // the kernel reads U and table as float4 then
      ADA_CHECK(reinterpret_cast<uintptr_t>(U) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(table) % 16 == 0,
                "cuda topk: U and table must be 16-byte aligned when D % 4 == 0 (D = " << D << ")");

    // Per row: the excluded ids in [1, N), sorted and unique; every row needs k candidates.
    ex_off_.assign(1, 0);
    ex_ids_.clear();
    for (int64_t b = 0; b < B; ++b) {
      const size_t start = ex_ids_.size();
      for (const ItemId* p = exclude.row_begin(size_t(b)); p != exclude.row_end(size_t(b)); ++p) {
        ADA_CHECK(*p >= 0 && int64_t(*p) < N, "cuda topk: excluded id " << *p << " in row " << b
                                                                       << " is outside 0.." << N - 1);
        if (*p >= 1) ex_ids_.push_back(*p);
      }
      std::sort(ex_ids_.begin() + std::ptrdiff_t(start), ex_ids_.end());
      ex_ids_.erase(std::unique(ex_ids_.begin() + std::ptrdiff_t(start), ex_ids_.end()),
                    ex_ids_.end());
      ex_off_.push_back(int64_t(ex_ids_.size()));
      const int64_t excluded = int64_t(ex_ids_.size() - start), candidates = N - 1 - excluded;
      ADA_CHECK(k <= candidates, "cuda topk: row " << b << " has " << candidates
                                                   << " candidate items (" << N - 1
                                                   << " items minus " << excluded
                                                   << " excluded), fewer than k = " << k);
    }

    const size_t b_off = sizeof(int64_t) * ex_off_.size();
    const size_t bytes = align8(b_off) + sizeof(int32_t) * std::max<size_t>(ex_ids_.size(), 1);
    host_.assign(bytes, 0);
    std::memcpy(host_.data(), ex_off_.data(), b_off);
    if (!ex_ids_.empty())
      std::memcpy(host_.data() + align8(b_off), ex_ids_.data(), sizeof(int32_t) * ex_ids_.size());
    const size_t nk = size_t(B) * size_t(k);
    float* out = work(2 * nk + size_t(B));  // before upload_meta: a growth waits for the stream
    unsigned char* dev = upload_meta(bytes);
    const int64_t* d_off = reinterpret_cast<const int64_t*>(dev);
    const int32_t* d_ids = reinterpret_cast<const int32_t*>(dev + align8(b_off));
    float* d_scores = out;
    int32_t* d_out_ids = reinterpret_cast<int32_t*>(out + nk);
    int32_t* d_count = reinterpret_cast<int32_t*>(out + 2 * nk);
    topk_device(U, B, int(D), table, bias, 0, N, k, d_off, d_ids, d_scores, d_out_ids, d_count,
                topk_ws_, stream_);
    counts_.resize(size_t(B));
    static_assert(sizeof(ItemId) == sizeof(int32_t), "ItemId is int32_t");
    ADA_CUDA_CHECK(cudaMemcpyAsync(out_ids, d_out_ids, sizeof(int32_t) * nk,
                                   cudaMemcpyDeviceToHost, stream_));
    ADA_CUDA_CHECK(cudaMemcpyAsync(counts_.data(), d_count, sizeof(int32_t) * size_t(B),
                                   cudaMemcpyDeviceToHost, stream_));
    if (out_scores)
      ADA_CUDA_CHECK(cudaMemcpyAsync(out_scores, d_scores, sizeof(float) * nk, cudaMemcpyDeviceToHost,
                                     stream_));
    ADA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (int64_t b = 0; b < B; ++b)
      ADA_CHECK(counts_[size_t(b)] >= k, "cuda topk: row " << b << " has " << counts_[size_t(b)]
                                                            << " candidates, fewer than k = " << k);
  }

  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
            const float* B, float beta, float* C) override {
    if (M == 0 || N == 0) return;
    ADA_CHECK(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31),
              "cuda gemm: sizes beyond int range M=" << M << " N=" << N << " K=" << K);
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const int lda = int(ta ? M : K), ldb = int(tb ? K : N);
    ADA_CUBLAS_CHECK(cublasSgemm(blas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B,
                                 ldb, A, lda, &beta, C, int(N)));
  }

  void linear_forward(float* out, const float* in, const float* W, const float* b, int64_t M,
                      int64_t I, int64_t O) override {
    if (M == 0) return;
    if (b) {
      k_fill_rows<<<grid_for(M * O), kThreads, 0, stream_>>>(out, b, M, O);
      ADA_CUDA_LAUNCHED();
    }
    gemm(false, true, M, O, I, 1.f, in, W, b ? 1.f : 0.f, out);
  }

  void linear_backward(float* din, float* dW, float* db, const float* dout, const float* in,
                       const float* W, int64_t M, int64_t I, int64_t O, bool accumulate) override {
    if (M == 0) return;
    if (din) gemm(false, false, M, I, O, 1.f, dout, W, accumulate ? 1.f : 0.f, din);
    if (dW) gemm(true, false, O, I, M, 1.f, dout, in, 1.f, dW);
    if (db && O > 0) {
      k_col_sum_add<<<unsigned((O + 31) / 32), dim3(32, 8), 0, stream_>>>(db, dout, M, O);
      ADA_CUDA_LAUNCHED();
    }
  }

  void layernorm_forward(float* out, float* mean, float* rstd, const float* in, const float* w,
                         const float* b, int64_t M, int64_t C, float eps) override {
    if (M == 0) return;
    k_ln_fwd<<<grid_for(M * 32), kThreads, 0, stream_>>>(out, mean, rstd, in, w, b, M, C, eps);
    ADA_CUDA_LAUNCHED();
  }

  void layernorm_backward(float* din, float* dw, float* db, const float* dout, const float* in,
                          const float* w, const float* mean, const float* rstd, int64_t M,
                          int64_t C) override {
    if (M == 0 || C == 0) return;
    if (din) {
      k_ln_bwd_din<<<grid_for(M * 32), kThreads, 0, stream_>>>(din, dout, in, w, mean, rstd, M, C);
      ADA_CUDA_LAUNCHED();
    }
    if (dw || db) {
      k_ln_bwd_params<<<unsigned((C + 31) / 32), dim3(32, 8), 0, stream_>>>(dw, db, dout, in, mean,
                                                                            rstd, M, C);
      ADA_CUDA_LAUNCHED();
    }
  }

  void embedding_forward(float* out, const int32_t* ids, const float* table, const int32_t* pos,
                         const float* pos_table, int64_t M, int64_t D) override {
    if (M * D == 0) return;
    k_embed_fwd<<<grid_for(M * D), kThreads, 0, stream_>>>(out, ids, table, pos, pos_table, M, D);
    ADA_CUDA_LAUNCHED();
  }
  void embedding_backward(float* dtable, float* dpos_table, const float* dout, const int32_t* ids,
                          const int32_t* pos, int64_t M, int64_t D) override {
    if (M * D == 0 || (!dtable && !dpos_table)) return;
    k_embed_bwd<<<grid_for(M * D), kThreads, 0, stream_>>>(dtable, dpos_table, dout, ids, pos, M,
                                                           D);
    ADA_CUDA_LAUNCHED();
  }

  static int act_code(Activation a) {
    return a == Activation::kSilu ? 0 : a == Activation::kGelu ? 1 : 2;
  }
  void activation_forward(float* out, const float* in, int64_t n, Activation a) override {
    if (n == 0) return;
    k_act_fwd<<<grid_for(n), kThreads, 0, stream_>>>(out, in, n, act_code(a));
    ADA_CUDA_LAUNCHED();
  }
  void activation_backward(float* din, const float* dout, const float* in, int64_t n,
                           Activation a) override {
    if (n == 0) return;
    k_act_bwd<<<grid_for(n), kThreads, 0, stream_>>>(din, dout, in, n, act_code(a));
    ADA_CUDA_LAUNCHED();
  }

  void dropout_forward(float* out, const float* in, int64_t n, float p, uint64_t seed,
                       uint64_t stream) override {
    if (n == 0) return;
    if (p <= 0.0f) {
      if (out != in)
        ADA_CUDA_CHECK(
            cudaMemcpyAsync(out, in, sizeof(float) * size_t(n), cudaMemcpyDeviceToDevice, stream_));
      return;
    }
    const float keep_scale = 1.0f / (1.0f - p);  // the CPU's T(1) / (T(1) - T(p))
    k_dropout<<<grid_for((n + 3) / 4), kThreads, 0, stream_>>>(out, in, n, p, keep_scale, seed,
                                                               stream);
    ADA_CUDA_LAUNCHED();
  }
  void dropout_backward(float* din, const float* dout, int64_t n, float p, uint64_t seed,
                        uint64_t stream) override {
    dropout_forward(din, dout, n, p, seed, stream);
  }

  void add_inplace(float* y, const float* x, int64_t n) override {
    if (n == 0) return;
    k_add<<<grid_for(n), kThreads, 0, stream_>>>(y, x, n);
    ADA_CUDA_LAUNCHED();
  }

  void gather_last(float* out, const float* in, const JaggedLayout& L, int64_t D) override {
    if (L.num_seqs == 0 || D == 0) return;
    const LayoutDev m = upload_layout(L, nullptr);
    k_gather_last<<<grid_for(L.num_seqs * D), kThreads, 0, stream_>>>(out, in, m.tok, L.num_seqs,
                                                                      D);
    ADA_CUDA_LAUNCHED();
  }
  void scatter_last_add(float* din, const float* dout, const JaggedLayout& L, int64_t D) override {
    if (L.num_seqs == 0 || D == 0) return;
    const LayoutDev m = upload_layout(L, nullptr);
    k_scatter_last_add<<<grid_for(L.num_seqs * D), kThreads, 0, stream_>>>(din, dout, m.tok,
                                                                           L.num_seqs, D);
    ADA_CUDA_LAUNCHED();
  }

  void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                         const AttentionShape& sh) override {
    if (sh.layout.num_seqs == 0) return;
    const LayoutDev m = upload_layout(sh.layout, &sh);
    const AttnArgs a = attn_args(m, sh);
    const unsigned S = unsigned(sh.layout.num_seqs);
    const int64_t W = int64_t(sh.heads) * sh.head_dim;
    if (attn_pairs_fit(sh.head_dim, W, m.max_len)) {
      const size_t bytes = size_t(2 * m.max_len * W) * sizeof(float);
      unsigned long long* prof = phase_sums(Clocked::kAttentionForward);
      auto* kernel = pick_attn_kernel(sh.head_dim, prof != nullptr, k_attn_fwd_pairs<4, false>,
                                      k_attn_fwd_pairs<8, false>, k_attn_fwd_pairs<32, false>,
                                      k_attn_fwd_pairs<4, true>, k_attn_fwd_pairs<8, true>,
                                      k_attn_fwd_pairs<32, true>);
      kernel<<<S, kThreads, bytes, stream_>>>(out, probs, q, k, v, a, prof);
    } else {
      k_attn_fwd<<<S, kThreads, 0, stream_>>>(out, probs, q, k, v, a);
    }
    ADA_CUDA_LAUNCHED();
  }

  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                          const float* q, const float* k, const float* v,
                          const AttentionShape& sh) override {
    if (sh.layout.num_seqs == 0) return;
    const LayoutDev m = upload_layout(sh.layout, &sh);
    float* ds = work(size_t(m.prob_total));
    const AttnArgs a = attn_args(m, sh);
    const unsigned S = unsigned(sh.layout.num_seqs);
    const int64_t W = int64_t(sh.heads) * sh.head_dim;
    if (attn_pairs_fit(sh.head_dim, W, m.max_len)) {
      const size_t bytes = size_t(2 * m.max_len * W) * sizeof(float);
      unsigned long long* prof = phase_sums(Clocked::kAttentionBackward);
      auto* kernel = pick_attn_kernel(sh.head_dim, prof != nullptr, k_attn_bwd_pairs<4, false>,
                                      k_attn_bwd_pairs<8, false>, k_attn_bwd_pairs<32, false>,
                                      k_attn_bwd_pairs<4, true>, k_attn_bwd_pairs<8, true>,
                                      k_attn_bwd_pairs<32, true>);
      kernel<<<S, kThreads, bytes, stream_>>>(dq, dk, dv, ds, dout, probs, q, k, v, a, prof);
    } else {
      k_attn_bwd<<<S, kThreads, 0, stream_>>>(dq, dk, dv, ds, dout, probs, q, k, v, a);
    }
    ADA_CUDA_LAUNCHED();
  }

  double sampled_bce(float* logits, float* du, float* dtable, float* dbias, const float* u,
                     const float* table, const float* bias, const int32_t* items, int64_t B,
                     int64_t C, int64_t D, double weight) override {
    if (B * C == 0) return 0.0;  // the CPU's 0 * weight / 0 would be NaN; no caller has B*C = 0
    const float gscale = float(weight / double(B * C));
    const int blocks = int(std::min<int64_t>(kRedBlocks, (B * C + 7) / 8));  // 8 warps per block
    k_bce_logits<<<unsigned(blocks), kThreads, 0, stream_>>>(logits, red_, u, table, bias, items, B,
                                                             C, D, du != nullptr, gscale);
    ADA_CUDA_LAUNCHED();
    const double total = reduce_partials(blocks);
    const double loss = total * weight / double(B * C);
    if (!du) return loss;
    if (B * D > 0) {
      k_bce_du<<<grid_for(B * D), kThreads, 0, stream_>>>(du, logits, table, items, B, C, D);
      ADA_CUDA_LAUNCHED();
    }
    if (dbias) {
      k_bce_dbias<<<grid_for(B * C), kThreads, 0, stream_>>>(dbias, logits, items, B * C);
      ADA_CUDA_LAUNCHED();
    }
    if (dtable && D > 0) {
      k_bce_dtable<<<grid_for(B * C * D), kThreads, 0, stream_>>>(dtable, logits, u, items, B, C,
                                                                  D);
      ADA_CUDA_LAUNCHED();
    }
    return loss;
  }

  void filter_forward(float* out, const float* in, const float* W, int64_t R, int64_t K,
                      int64_t D) override {
    ADA_CHECK(K >= 1 && D >= 0 && R >= 0,
              "filter_forward: bad sizes R=" << R << " K=" << K << " D=" << D);
    if (R == 0 || D == 0) return;
    const DftDev t = dft_tables(K);
    const int TD = filter_tile(K, t.Kf, D, /*backward=*/false);
    const size_t smem = sizeof(float) * size_t((K + 2 * t.Kf) * TD);
    const float s = 1.0f / std::sqrt(float(K));
    const dim3 grid(unsigned(R), unsigned((D + TD - 1) / TD));
    k_filter_fwd<<<grid, kThreads, smem, stream_>>>(out, in, W, t, D, TD, s);
    ADA_CUDA_LAUNCHED();
  }

  void filter_backward(float* din, float* dW, const float* dout, const float* in, const float* W,
                       int64_t R, int64_t K, int64_t D) override {
    ADA_CHECK(K >= 1 && D >= 0 && R >= 0,
              "filter_backward: bad sizes R=" << R << " K=" << K << " D=" << D);
    if (R == 0 || D == 0) return;
    const DftDev t = dft_tables(K);
    const int TD = filter_tile(K, t.Kf, D, /*backward=*/true);
    const size_t smem = sizeof(float) * size_t((2 * K + 4 * t.Kf) * TD);
    const float s = 1.0f / std::sqrt(float(K));
    const int64_t chunks = (R + kFilterChunk - 1) / kFilterChunk, WN = t.Kf * D * 2;
    float* partial = work(size_t(chunks * WN));
    const dim3 grid(unsigned(chunks), unsigned((D + TD - 1) / TD));
    k_filter_bwd<<<grid, kThreads, smem, stream_>>>(din, partial, dout, in, W, t, R, D, TD, s);
    ADA_CUDA_LAUNCHED();
    k_filter_dw_reduce<<<grid_for(WN), kThreads, 0, stream_>>>(dW, partial, chunks, WN);
    ADA_CUDA_LAUNCHED();
  }

  // The fused filter block (kernels/fused_filter.cu); the composition (Backend's default) where
  // the fused kernels do not apply (K > 64, D > 128, shared memory).
  void filter_block_forward(float* Et, float* F, float* Rr, float* mean, float* rstd,
                            const float* E, const float* cw, const float* dense_w,
                            const float* dense_b, const float* ln_w, const float* ln_b, int64_t R,
                            int64_t K, int64_t D, float eps, float p, uint64_t seed,
                            uint64_t stream) override {
    if (!filter_block_forward_fused(filter_block_ws_, stream_, Et, F, Rr, mean, rstd, E, cw,
                                    dense_w, dense_b, ln_w, ln_b, R, K, D, eps, p, seed, stream))
      Backend<float>::filter_block_forward(Et, F, Rr, mean, rstd, E, cw, dense_w, dense_b, ln_w,
                                           ln_b, R, K, D, eps, p, seed, stream);
  }
  void filter_block_backward(float* dE, float* d_cw, float* d_dense_w, float* d_dense_b,
                             float* d_ln_w, float* d_ln_b, const float* dEt, const float* E,
                             const float* F, const float* Rr, const float* mean, const float* rstd,
                             const float* cw, const float* dense_w, const float* ln_w, int64_t R,
                             int64_t K, int64_t D, float p, uint64_t seed,
                             uint64_t stream) override {
    if (!filter_block_backward_fused(filter_block_ws_, stream_, dE, d_cw, d_dense_w, d_dense_b,
                                     d_ln_w, d_ln_b, dEt, E, F, Rr, mean, rstd, cw, dense_w, ln_w,
                                     R, K, D, p, seed, stream))
      Backend<float>::filter_block_backward(dE, d_cw, d_dense_w, d_dense_b, d_ln_w, d_ln_b, dEt, E,
                                            F, Rr, mean, rstd, cw, dense_w, ln_w, R, K, D, p, seed,
                                            stream);
  }

  void context_attention_forward(float* out, float* probs, const float* X, const float* C,
                                 const int64_t* q_offsets, int64_t B, int64_t Nc,
                                 int64_t D) override {
    ADA_CHECK(Nc >= 1, "context_attention_forward: needs at least one context row, Nc=" << Nc);
    if (B == 0) return;
    const int64_t* qo = upload_offsets(q_offsets, B);
    const float scale = 1.0f / std::sqrt(float(D));
    k_ctx_fwd<<<unsigned(B), kThreads, 0, stream_>>>(out, probs, X, C, qo, Nc, D, scale);
    ADA_CUDA_LAUNCHED();
  }

  void context_attention_backward(float* dX, float* dC, const float* dout, const float* probs,
                                  const float* X, const float* C, const int64_t* q_offsets,
                                  int64_t B, int64_t Nc, int64_t D) override {
    ADA_CHECK(Nc >= 1, "context_attention_backward: needs at least one context row, Nc=" << Nc);
    if (B == 0) return;
    const int64_t* qo = upload_offsets(q_offsets, B);
    float* ds = work(size_t(std::max<int64_t>(q_offsets[B], 1) * Nc));
    const float scale = 1.0f / std::sqrt(float(D));
    k_ctx_bwd<<<unsigned(B), kThreads, 0, stream_>>>(dX, dC, ds, dout, probs, X, C, qo, Nc, D,
                                                     scale);
    ADA_CUDA_LAUNCHED();
  }

  // The fused context block (kernels/fused_context.cu); the composition (Backend's default) where
  // the context does not fit a block's shared memory.
  void context_block_forward(float* out, float* probs, float* r, float* mean, float* rstd,
                             const float* X, const float* C, const float* ln_w, const float* ln_b,
                             const int64_t* q_offsets, int64_t B, int64_t Nc, int64_t D,
                             bool attention, float p, uint64_t seed, uint64_t stream,
                             float eps) override {
    ADA_CHECK(Nc >= 1, "context_block_forward: needs at least one context row, Nc=" << Nc);
    if (B <= 0 || q_offsets[B] <= 0 || D <= 0) return;
    if (!context_block_fused_fits(Nc, D))
      return Backend<float>::context_block_forward(out, probs, r, mean, rstd, X, C, ln_w, ln_b,
                                                   q_offsets, B, Nc, D, attention, p, seed,
                                                   stream, eps);
    int64_t max_queries = 0;
    for (int64_t b = 0; b < B; ++b) max_queries = std::max(max_queries, q_offsets[b + 1] - q_offsets[b]);
    const int64_t* qo = upload_offsets(q_offsets, B);
    context_block_forward_launch(out, probs, r, mean, rstd, X, C, ln_w, ln_b, qo, B, max_queries, Nc,
                                 D, attention, p, seed, stream, eps, stream_);
  }

  void context_block_backward(float* dX, float* dC, float* d_ln_w, float* d_ln_b,
                              const float* dout, const float* probs, const float* r,
                              const float* mean, const float* rstd, const float* X, const float* C,
                              const float* ln_w, const int64_t* q_offsets, int64_t B, int64_t Nc,
                              int64_t D, bool attention, float p, uint64_t seed,
                              uint64_t stream) override {
    ADA_CHECK(Nc >= 1, "context_block_backward: needs at least one context row, Nc=" << Nc);
    if (B <= 0 || q_offsets[B] <= 0 || D <= 0) return;
    if (!context_block_fused_fits(Nc, D))
      return Backend<float>::context_block_backward(dX, dC, d_ln_w, d_ln_b, dout, probs, r, mean,
                                                    rstd, X, C, ln_w, q_offsets, B, Nc, D,
                                                    attention, p, seed, stream);
    float* partial = work(size_t(context_block_partial_size(B, D)));  // before the upload: a
    const int32_t* order = nullptr;                                   // growth waits for the stream
    const int64_t* qo = upload_offsets(q_offsets, B, &order);
    context_block_backward_launch(dX, dC, d_ln_w, d_ln_b, dout, probs, r, mean, rstd, X, C, ln_w,
                                  qo, order, B, Nc, D, attention, p, seed, stream, partial, stream_);
  }

  void gru_cell_forward(float* h_new, float* gates, const float* gi, const float* gh,
                        const float* h_prev, int64_t B, int64_t D) override {
    if (B * D == 0) return;
    k_gru_fwd<<<grid_for(B * D), kThreads, 0, stream_>>>(h_new, gates, gi, gh, h_prev, B, D);
    ADA_CUDA_LAUNCHED();
  }
  void gru_cell_backward(float* d_gi, float* d_gh, float* d_hprev, const float* d_hnew,
                         const float* gates, const float* gh, const float* h_prev, int64_t B,
                         int64_t D) override {
    if (B * D == 0) return;
    k_gru_bwd<<<grid_for(B * D), kThreads, 0, stream_>>>(d_gi, d_gh, d_hprev, d_hnew, gates, gh,
                                                         h_prev, B, D);
    ADA_CUDA_LAUNCHED();
  }

  // The fused user adapter (kernels/fused_user.cu); the composition where it does not apply.
  void user_adapter_forward(float* out, const UserAdapterSaved<float>& saved, float* work,
                            const float* users, const float* v,
                            const UserAdapterTensors<const float*>& w,
                            const UserAdapterShape& sh) override {
    if (!user_fused_supported(sh))
      return Backend<float>::user_adapter_forward(out, saved, work, users, v, w, sh);
    user_fused_forward(stream_, out, saved, users, v, w, sh);
  }
  void user_adapter_backward(float* d_v, float* d_users, const UserAdapterTensors<float*>& g,
                             float* work, const float* d_out, const UserAdapterSaved<float>& saved,
                             const float* users, const float* v,
                             const UserAdapterTensors<const float*>& w,
                             const UserAdapterShape& sh) override {
    if (!user_fused_supported(sh))
      return Backend<float>::user_adapter_backward(d_v, d_users, g, work, d_out, saved, users, v, w,
                                                   sh);
    user_fused_backward(stream_, blas_, d_v, d_users, g, work, d_out, saved, users, v, w, sh);
  }

  void concat_cols(float* out, const float* a, const float* b, int64_t M, int64_t Da,
                   int64_t Db) override {
    if (M * (Da + Db) == 0) return;
    k_concat<<<grid_for(M * (Da + Db)), kThreads, 0, stream_>>>(out, a, b, M, Da, Db);
    ADA_CUDA_LAUNCHED();
  }
  void split_cols_add(float* da, float* db, const float* dout, int64_t M, int64_t Da,
                      int64_t Db) override {
    if (M * (Da + Db) == 0 || (!da && !db)) return;
    k_split_add<<<grid_for(M * (Da + Db)), kThreads, 0, stream_>>>(da, db, dout, M, Da, Db);
    ADA_CUDA_LAUNCHED();
  }

  double sum_squares(const float* x, int64_t n) override {
    if (n == 0) return 0.0;
    const int blocks = int(std::min<int64_t>(kRedBlocks, (n + kThreads - 1) / kThreads));
    k_sum_squares<<<unsigned(blocks), kThreads, 0, stream_>>>(red_, x, n);
    ADA_CUDA_LAUNCHED();
    return reduce_partials(blocks);
  }

  void scale(float* x, int64_t n, float s) override {
    if (n == 0) return;
    k_scale<<<grid_for(n), kThreads, 0, stream_>>>(x, n, s);
    ADA_CUDA_LAUNCHED();
  }

  void adam_update(float* param, float* m, float* v, const float* grad, int64_t n, double lr,
                   double beta1, double beta2, double eps, int64_t step) override {
    if (n == 0) return;
    // the CPU's constants, computed the same way on the host
    const double bc1 = 1.0 - std::pow(beta1, double(step));
    const double bc2 = 1.0 - std::pow(beta2, double(step));
    const float step_size = float(lr / bc1);
    const float bc2_sqrt = float(std::sqrt(bc2));
    k_adam<<<grid_for(n), kThreads, 0, stream_>>>(param, m, v, grad, n, float(beta1), float(beta2),
                                                  float(eps), step_size, bc2_sqrt);
    ADA_CUDA_LAUNCHED();
  }

 private:
  struct LayoutDev {
    const int64_t* tok = nullptr;
    const int64_t* poff = nullptr;
    const uint8_t* masked = nullptr;
    const int32_t* order = nullptr;  // with an AttentionShape: the sequences by work, descending
    int64_t prob_total = 0;
    int64_t max_len = 0;  // the longest sequence's tokens
  };

  // Grows a device buffer (waiting for the stream first: queued kernels may still read it).
  void grow(void*& buf, size_t& cap, size_t bytes) {
    if (bytes <= cap) return;
    ADA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (buf) ADA_CUDA_CHECK(cudaFree(buf));
    buf = nullptr;
    cap = 0;
    const size_t want = std::max<size_t>(bytes + bytes / 2, 4096);
    ADA_CUDA_CHECK(cudaMalloc(&buf, want));
    cap = want;
  }

  float* work(size_t n) {
    grow(work_, work_cap_, std::max<size_t>(n, 1) * sizeof(float));
    return static_cast<float*>(work_);
  }

  // Copies host bytes into the metadata scratch (stream-ordered; pageable source: cudaMemcpyAsync
  // has staged it when it returns, so host_ may be reused at once).
  unsigned char* upload_meta(size_t bytes) {
    grow(meta_, meta_cap_, bytes);
    ADA_CUDA_CHECK(cudaMemcpyAsync(meta_, host_.data(), bytes, cudaMemcpyHostToDevice, stream_));
    return static_cast<unsigned char*>(meta_);
  }

  static size_t align8(size_t b) { return (b + 7) & ~size_t(7); }

  // tok_offsets (S+1), probability offsets (S+1, when sh is given), all_masked (S) and, when sh is
  // given, the attention kernels' launch order (S: the sequences by their probability count,
  // descending, src/core/work_order.hpp) to the device.
  LayoutDev upload_layout(const JaggedLayout& L, const AttentionShape* sh) {
    const int64_t S = L.num_seqs;
    ADA_CHECK(L.tok_offsets != nullptr, "cuda backend: JaggedLayout without tok_offsets");
    const size_t b_tok = sizeof(int64_t) * size_t(S + 1);
    const size_t b_order = 2 * b_tok + align8(size_t(S));
    const size_t bytes = b_order + (sh ? sizeof(int32_t) * size_t(S) : 0);
    host_.resize(bytes);
    std::memcpy(host_.data(), L.tok_offsets, b_tok);
    int64_t* poff = reinterpret_cast<int64_t*>(host_.data() + b_tok);
    poff[0] = 0;
    int64_t max_len = 0;
    if (sh) seq_work_.resize(size_t(S));
    for (int64_t s = 0; s < S; ++s) {
      max_len = std::max(max_len, L.tok_offsets[s + 1] - L.tok_offsets[s]);
      if (sh) {
        ADA_CHECK(L.all_masked != nullptr, "cuda attention: JaggedLayout without all_masked");
        seq_work_[size_t(s)] = sh->seq_prob_count(s);  // per head: at most 2,500 at SASRec's 50 tokens
        poff[s + 1] = poff[s] + int64_t(sh->heads) * seq_work_[size_t(s)];
      } else {
        poff[s + 1] = 0;
      }
    }
    unsigned char* mk = host_.data() + 2 * b_tok;
    if (L.all_masked)
      std::memcpy(mk, L.all_masked, size_t(S));
    else
      std::memset(mk, 0, size_t(S));
    if (sh) order_by_work_desc(seq_work_.data(), S, reinterpret_cast<int32_t*>(host_.data() + b_order));
    unsigned char* dev = upload_meta(bytes);
    LayoutDev r;
    r.tok = reinterpret_cast<const int64_t*>(dev);
    r.poff = reinterpret_cast<const int64_t*>(dev + b_tok);
    r.masked = dev + 2 * b_tok;
    if (sh) r.order = reinterpret_cast<const int32_t*>(dev + b_order);
    r.prob_total = poff[S];
    r.max_len = max_len;
    return r;
  }

  // The offsets (B+1) to the device; with `order`, also the launch order of one block per item, the
  // longest spans first (src/core/work_order.hpp), after them in the same upload.
  const int64_t* upload_offsets(const int64_t* off, int64_t B, const int32_t** order = nullptr) {
    const size_t b_off = sizeof(int64_t) * size_t(B + 1);
    const size_t bytes = b_off + (order ? sizeof(int32_t) * size_t(B) : 0);
    host_.resize(bytes);
    std::memcpy(host_.data(), off, b_off);
    if (order) order_by_span_desc(off, B, reinterpret_cast<int32_t*>(host_.data() + b_off));
    unsigned char* dev = upload_meta(bytes);
    if (order) *order = reinterpret_cast<const int32_t*>(dev + b_off);
    return reinterpret_cast<const int64_t*>(dev);
  }

  AttnArgs attn_args(const LayoutDev& m, const AttentionShape& sh) const {
    ADA_CHECK(sh.heads >= 1 && sh.head_dim >= 1,
              "cuda attention: bad heads=" << sh.heads << " head_dim=" << sh.head_dim);
    AttnArgs a;
    a.tok = m.tok;
    a.poff = m.poff;
    a.masked = m.masked;
    a.order = m.order;
    a.H = sh.heads;
    a.hd = sh.head_dim;
    a.last_only = sh.last_only;
    a.scale = 1.0f / std::sqrt(float(sh.head_dim));  // the CPU's T(1) / std::sqrt(T(hd))
    a.p = sh.dropout;
    a.keep_scale = sh.dropout > 0 ? 1.0f / (1.0f - sh.dropout) : 1.0f;
    a.seed = sh.seed;
    a.stream = sh.stream;
    return a;
  }

  // Sums partial[0..n) of red_ on the device and returns it (waits for the stream).
  double reduce_partials(int n) {
    k_sum_partials<<<1, 1, 0, stream_>>>(red_ + kRedBlocks, red_, n);
    ADA_CUDA_LAUNCHED();
    double h = 0.0;
    ADA_CUDA_CHECK(
        cudaMemcpyAsync(&h, red_ + kRedBlocks, sizeof(double), cudaMemcpyDeviceToHost, stream_));
    ADA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return h;
  }

  // DFT tables for K (built once per K, in double as the CPU's DftTables, then rounded to float).
  DftDev dft_tables(int64_t K) {
    const int64_t Kf = K / 2 + 1;
    auto it = filter_tables_.find(K);
    if (it == filter_tables_.end()) {
      std::vector<float> h(size_t(2 * Kf * K + Kf));
      float* cos_t = h.data();
      float* sin_t = cos_t + Kf * K;
      float* coef = sin_t + Kf * K;
      const double two_pi = 6.283185307179586476925286766559;
      for (int64_t f = 0; f < Kf; ++f) {
        const bool real_bin = f == 0 || 2 * f == K;
        coef[f] = real_bin ? 1.f : 2.f;
        for (int64_t n = 0; n < K; ++n) {
          const double ang = two_pi * double((f * n) % K) / double(K);
          cos_t[f * K + n] = float(std::cos(ang));
          sin_t[f * K + n] = real_bin ? 0.f : float(std::sin(ang));
        }
      }
      void* d = nullptr;
      ADA_CUDA_CHECK(cudaMalloc(&d, sizeof(float) * h.size()));
      ADA_CUDA_CHECK(cudaMemcpy(d, h.data(), sizeof(float) * h.size(), cudaMemcpyHostToDevice));
      it = filter_tables_.emplace(K, static_cast<float*>(d)).first;
    }
    DftDev t;
    t.cos_t = it->second;
    t.sin_t = it->second + Kf * K;
    t.coef = it->second + 2 * Kf * K;
    t.K = K;
    t.Kf = Kf;
    return t;
  }

  // Channel tile width: 32 (coalesced rows) unless D is smaller or shared memory would not fit.
  static int filter_tile(int64_t K, int64_t Kf, int64_t D, bool backward) {
    const int64_t per_ch = backward ? 2 * K + 4 * Kf : K + 2 * Kf;
    int td = 32;
    while (td > 1 && (td / 2 >= D || size_t(per_ch * td) * sizeof(float) > kSmemLimit)) td /= 2;
    ADA_CHECK(size_t(per_ch * td) * sizeof(float) <= kSmemLimit,
              "cuda filter: K=" << K << " needs more shared memory than a block has");
    return td;
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* meta_ = nullptr;
  size_t meta_cap_ = 0;
  void* work_ = nullptr;
  size_t work_cap_ = 0;
  double* red_ = nullptr;
  std::vector<unsigned char> host_;
  std::vector<int64_t> seq_work_;  // upload_layout's per-sequence work (the launch order's key)
  std::map<int64_t, float*> filter_tables_;
  CudaDeviceMemory memory_;
  TopkWorkspace topk_ws_;
  FilterBlockWorkspace filter_block_ws_;  // the fused filter block's tables and partials
  std::vector<int64_t> ex_off_;  // topk's host staging
  std::vector<int32_t> ex_ids_;
  std::vector<int32_t> counts_;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend<float>> make_cuda_backend(int device) {
  const int n = cuda_device_count();
  ADA_CHECK(n > 0, "make_cuda_backend: no usable CUDA device (no GPU, or no driver)");
  ADA_CHECK(device >= 0 && device < n,
            "make_cuda_backend: device " << device << " does not exist (" << n << " devices)");
  return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace ada
