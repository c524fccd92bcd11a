// Fused context-aware attention block (IRA, reference-spec 3.1): the CUDA form of
// Backend::context_block_forward / context_block_backward (include/ada/backend.hpp), whose default
// definition (src/core/fused_context.cpp, the CPU backend's) is the specification:
//   att = softmax(Q C^T / sqrt(D)) C,  r = dropout(att) + X,  out = LayerNorm(r).
//
// Forward, one block per sample b and group of 4 nw of its queries (block (b, y) takes queries
// q_offsets[b] + 4 nw y .. of X, up to q_offsets[b+1]; a sample's groups are independent, so a
// 50-query sample is four blocks side by side, not one block four times as long): the context
// C[b] (Nc x D) is staged once in shared memory with a row stride of D + 1 (a lane per context row
// reads its row without bank conflicts; each thread's global loads issued together, float4 when
// D % 4 == 0, so staging waits about one latency, not one per element). A warp takes kQW = 4 queries at a time (warp w of nw has
// queries q0 + 4 w + 4 nw t + i), staged in its own shared scratch interleaved as float4 per
// channel (x of the 4 queries in one broadcast load), so every context value loaded from shared
// memory feeds 4 FMAs (shared-memory bandwidth, not the FMA units, bounds this kernel):
//   scores   lane j (j = lane, lane + 32, ...) dots its context row with the 4 queries; softmax per
//            query by warp reductions (probabilities kept as float4 per row), probs written;
//   P C      lane owns channels d = lane + 32 k (k < KD = D / 32 rounded up to 1, 2, 4 or 8),
//            context rows summed in order, 4 queries at once;
//   dropout  the counter RNG of the [Ntok, D] tensor bit for bit (element q * D + d): with D % 4 == 0
//            a lane draws one Philox block (4 elements) and the keep bits reach their owners by
//            one shuffle per channel slot; otherwise a draw per element;
//   residual + LayerNorm  per query, warp sums (two passes, as the CPU), out / r / mean / rstd
//            written; the 4 queries side by side (their Philox draws and warp sums overlap).
// Backward, one block per sample (all its queries: dC[b] sums over them), the blocks launched in
// the order of a permutation, the samples with the most queries first: the hardware starts blocks
// in about increasing index, so a 50-query sample (4 rounds of 16) launched in the grid's last wave
// would run on alone after the others (at Beauty's shapes, 1,024 samples in about 2.6 waves of 396
// blocks, 15% of them of 50 queries); first, it overlaps the short ones (longest-processing-
// time-first; a count, not a measurement). The same warp mapping, 4 queries per warp (all of a
// batch's global loads issued first, the 4 queries side by side as in the forward): LayerNorm
// backward from the saved r, mean, rstd (warp sums), the dropout mask redrawn, d att and the
// queries staged as float4 per channel, then dp_j = <d att, C_j> (lane per context row), ds_j = p_j
// (dp_j - sum p dp) / sqrt(D), and dX = d r + sum_j ds_j C_j (lane per channel). dC[b] is
// accumulated in shared memory: after each group of nw * 4 queries (a barrier) every thread owns a
// channel d and the rows r0, r0 + stride, ... of dC[b] and adds p_j d att_d + ds_j x_d query by
// query in order (d att_d and x_d of 4 queries in registers, p_j and ds_j broadcast float4 loads, 4
// rows at a time); after the last group dC[b] is added (+=) to global memory once. The LayerNorm
// parameter gradients are per-lane register sums, reduced over the warps in order into one partial
// per block, then a small kernel sums the B partials per channel in a fixed order: no atomics,
// deterministic results.
// Nothing goes to cuBLAS: per sample the products are at most (50 x 64) x (64 x 80), far too small
// for a GEMM launch to pay, and fusing them with the softmax and LayerNorm is the point.
// Shared memory (floats): forward Nc (D + 1) + 4 nw (D + Nc), backward Nc (D + 1) + Nc D +
// 4 nw (2 D + 2 Nc), nw = kCtxWarps = 4 warps (Beauty, Nc = 80, D = 64: 30 KiB and 60 KiB), halved
// while one of them does not fit the device's opt-in limit; shapes that do not fit with one warp (or
// D > kCtxBlockMaxD) go to the composition (context_block_fused_fits).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ada/check.hpp"
#include "ada/rng.hpp"
#include "kernels/cuda_util.cuh"
#include "kernels/fused_context.cuh"
#include "kernels/phase_clock.cuh"

namespace ada {
namespace cuda {
namespace {

// Warps per block (both directions). A warp takes kQW queries, so a sample with n queries keeps
// ceil(n / 4) warps busy; at the Beauty shapes (85% of samples 1..20 queries) an 8-warp block had
// about 3 busy warps, and the idle ones still held registers and shared memory (forward: 80 x 256
// registers a block, 3 blocks a SM; backward: 76 KiB, 2 blocks). With 4 warps a block the forward
// fits 6 blocks a SM (80 x 128 x 6 = 61,440 registers; 30 KiB of shared memory a block) and the
// backward 3 (60 KiB; 124 x 128 x 3 registers): about 1.3-1.7x the busy warps a SM and 1.5-2x the
// blocks staging their context (a fixed latency a block) at once. The cost: a sample with 50
// queries takes 4 rounds of 16 instead of 2 of 32 (15% of the Beauty samples).
constexpr int kCtxWarps = 4;
constexpr int kQW = 4;  // queries a warp handles at a time
constexpr size_t kDefaultSmem = 48 * 1024;

__device__ __forceinline__ float pick4(const Philox4& r, int c) {
  const uint32_t v = c == 0 ? r.v[0] : c == 1 ? r.v[1] : c == 2 ? r.v[2] : r.v[3];
  return u32_to_unit_float(v);
}

// keep[k] for the channels d = lane + 32 k of the row starting at flat index `base` (= q * D) of a
// D-wide tensor: element i kept iff u(seed, stream, i) >= p (the CPU's for_each_uniform blocks).
template <int KD>
__device__ __forceinline__ void keep_mask(bool (&keep)[KD], int64_t base, int D, int lane, float p,
                                          uint64_t seed, uint64_t stream) {
  if ((D & 3) == 0) {
    // lane draws block base/4 + lane + 32 m; element d = lane + 32 k lies in block base/4 + 8 k +
    // lane/4, drawn by lane 8 (k % 4) + lane / 4 at m = k / 4, word lane % 4.
    constexpr int KM = (KD + 3) / 4;
    uint32_t nib[KM];
#pragma unroll
    for (int m = 0; m < KM; ++m) {
      const uint64_t blk = uint64_t(base >> 2) + uint64_t(lane + 32 * m);
      const Philox4 r = philox4x32_10(uint32_t(blk), uint32_t(blk >> 32), uint32_t(stream),
                                      uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
      nib[m] = uint32_t(u32_to_unit_float(r.v[0]) >= p) |
               (uint32_t(u32_to_unit_float(r.v[1]) >= p) << 1) |
               (uint32_t(u32_to_unit_float(r.v[2]) >= p) << 2) |
               (uint32_t(u32_to_unit_float(r.v[3]) >= p) << 3);
    }
#pragma unroll
    for (int k = 0; k < KD; ++k) {
      const uint32_t n = __shfl_sync(0xffffffffu, nib[k / 4], 8 * (k % 4) + (lane >> 2));
      keep[k] = ((n >> (lane & 3)) & 1u) != 0;
    }
  } else {
#pragma unroll
    for (int k = 0; k < KD; ++k) {
      const int d = lane + 32 * k;
      keep[k] = false;
      if (d < D) {
        const uint64_t i = uint64_t(base + d), blk = i >> 2;
        const Philox4 r = philox4x32_10(uint32_t(blk), uint32_t(blk >> 32), uint32_t(stream),
                                        uint32_t(stream >> 32), uint32_t(seed),
                                        uint32_t(seed >> 32));
        keep[k] = pick4(r, int(i & 3)) >= p;
      }
    }
  }
}

// keep[i][k] for kQW rows at once (bases[i] = q_i * D): the rows' Philox draws are independent, so
// their latency chains overlap (one row after another, each waited on its own ~10 dependent rounds).
// Row by row the same bits as keep_mask.
template <int KD>
__device__ __forceinline__ void keep_masks(bool (&keep)[kQW][KD], const int64_t (&bases)[kQW], int D,
                                           int lane, float p, uint64_t seed, uint64_t stream) {
  if ((D & 3) == 0) {
    constexpr int KM = (KD + 3) / 4;
    uint32_t nib[kQW][KM];
#pragma unroll
    for (int i = 0; i < kQW; ++i)
#pragma unroll
      for (int m = 0; m < KM; ++m) {
        const uint64_t blk = uint64_t(bases[i] >> 2) + uint64_t(lane + 32 * m);
        const Philox4 r = philox4x32_10(uint32_t(blk), uint32_t(blk >> 32), uint32_t(stream),
                                        uint32_t(stream >> 32), uint32_t(seed),
                                        uint32_t(seed >> 32));
        nib[i][m] = uint32_t(u32_to_unit_float(r.v[0]) >= p) |
                    (uint32_t(u32_to_unit_float(r.v[1]) >= p) << 1) |
                    (uint32_t(u32_to_unit_float(r.v[2]) >= p) << 2) |
                    (uint32_t(u32_to_unit_float(r.v[3]) >= p) << 3);
      }
#pragma unroll
    for (int i = 0; i < kQW; ++i)
#pragma unroll
      for (int k = 0; k < KD; ++k) {
        const uint32_t n = __shfl_sync(0xffffffffu, nib[i][k / 4], 8 * (k % 4) + (lane >> 2));
        keep[i][k] = ((n >> (lane & 3)) & 1u) != 0;
      }
  } else {
#pragma unroll
    for (int i = 0; i < kQW; ++i) keep_mask<KD>(keep[i], bases[i], D, lane, p, seed, stream);
  }
}

// warp_sum of N values at once, each with warp_sum's butterfly (the same sums, bit for bit): the N
// shuffle chains overlap instead of running one after another.
template <int N>
__device__ __forceinline__ void warp_sum_n(float (&v)[N]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
}

// Cs[j * (D + 1) + c] = Cb[j * D + c] for the Nc x D context of a sample. The loads of a thread
// are issued together (kStageU per round, float4 when D % 4 == 0 and Cb is 16-byte aligned) before
// the shared stores, so staging costs about one global latency per round instead of one per
// element (Beauty, Nc = 80, D = 64, 256 threads: 5 float4 loads a thread, one round; the
// element loop was 20 dependent load/store pairs).
constexpr int kStageU = 8;
__device__ __forceinline__ void stage_context(float* Cs, const float* Cb, int Nc, int D) {
  const int ld = D + 1, n = Nc * D, nt = int(blockDim.x);
  if ((D & 3) == 0 && (reinterpret_cast<uintptr_t>(Cb) & 15u) == 0) {
    const float4* C4 = reinterpret_cast<const float4*>(Cb);
    const int n4 = n >> 2, D4 = D >> 2;
    for (int e0 = int(threadIdx.x); e0 < n4; e0 += kStageU * nt) {
      float4 v[kStageU];
#pragma unroll
      for (int u = 0; u < kStageU; ++u) {
        const int e = e0 + u * nt;
        v[u] = e < n4 ? C4[e] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kStageU; ++u) {
        const int e = e0 + u * nt;
        if (e < n4) {
          const int j = e / D4, c = (e - j * D4) * 4;
          float* dst = Cs + j * ld + c;
          dst[0] = v[u].x;
          dst[1] = v[u].y;
          dst[2] = v[u].z;
          dst[3] = v[u].w;
        }
      }
    }
  } else {
    for (int e0 = int(threadIdx.x); e0 < n; e0 += kStageU * nt) {
      float v[kStageU];
#pragma unroll
      for (int u = 0; u < kStageU; ++u) {
        const int e = e0 + u * nt;
        v[u] = e < n ? Cb[e] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kStageU; ++u) {
        const int e = e0 + u * nt;
        if (e < n) {
          const int j = e / D;
          Cs[j * ld + (e - j * D)] = v[u];
        }
      }
    }
  }
}

// The phase clocks (kernels/phase_clock.cuh), in the order of phase_clock.cu's names. Forward
// ("context_block_forward", per block with queries): the context staged (to the barrier); then
// thread 0's warp's batches of 4 queries: scores and softmax, P C, dropout + LayerNorm + stores;
// the block's queries (a count). Backward ("context_block_backward", per sample with queries): the
// context staged and dC zeroed; per group of 4 nw queries, thread 0's warp's batch, the wait for
// the other warps, the dC accumulation (to its barrier); at the end dC added to global memory and
// the LayerNorm partials; the groups (a count). Both: the slowest block.
enum CtxFwdSlot { kCfStage = 1, kCfScores, kCfPc, kCfNorm, kCfQueries, kCfMaxBlock };
enum CtxBwdSlot { kCbStage = 1, kCbQueries, kCbWait, kCbDc, kCbFlush, kCbRounds, kCbMaxBlock };

template <int KD, bool kClock>
__global__ void __launch_bounds__(kCtxWarps * 32, KD <= 2 ? 6 : 1)
    k_ctx_block_fwd(float* out, float* probs, float* rbuf, float* mean, float* rstd,
                    const float* X, const float* C, const float* w, const float* bias,
                    const int64_t* qo, int Nc, int D, int attention, float p, float keep_scale,
                    uint64_t seed, uint64_t rstream, float eps, float scale,
                    unsigned long long* prof) {
  extern __shared__ __align__(16) float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  // block (b, y): sample b's queries y kQW nw .. (y + 1) kQW nw - 1, those it has
  const int64_t b = blockIdx.x;
  const int64_t q0 = qo[b] + int64_t(blockIdx.y) * (kQW * nw), q1 = min(qo[b + 1], q0 + kQW * nw);
  if (q0 >= q1) return;  // the whole block: no barrier below is skipped by part of it
  PhaseClock<kClock> clk(prof);
  const int ld = D + 1;
  // per warp: its kQW queries interleaved [D] x float4 and their probabilities [Nc] x float4
  float4* xs4 = reinterpret_cast<float4*>(smem) + warp * (D + Nc);
  float4* ps4 = xs4 + D;
  float* Cs = smem + 4 * nw * (D + Nc);
  stage_context(Cs, C + b * int64_t(Nc) * D, Nc, D);
  float wk[KD], bk[KD];
#pragma unroll
  for (int k = 0; k < KD; ++k) {
    const int d = lane + 32 * k;
    wk[k] = d < D ? w[d] : 0.f;
    bk[k] = d < D ? bias[d] : 0.f;
  }
  __syncthreads();
  clk.lap(kCfStage);
  clk.add(kCfQueries, q1 - q0);
  for (int64_t qb = q0 + int64_t(warp) * kQW; qb < q1; qb += int64_t(nw) * kQW) {
    const int nv = q1 - qb < kQW ? int(q1 - qb) : kQW;  // valid queries of this batch
    float xr[kQW][KD];
#pragma unroll
    for (int i = 0; i < kQW; ++i)
#pragma unroll
      for (int k = 0; k < KD; ++k) {
        const int d = lane + 32 * k;
        xr[i][k] = i < nv && d < D ? X[(qb + i) * D + d] : 0.f;
      }
#pragma unroll
    for (int k = 0; k < KD; ++k) {
      const int d = lane + 32 * k;
      if (d < D)
        xs4[d] = attention ? make_float4(xr[0][k], xr[1][k], xr[2][k], xr[3][k])
                           : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __syncwarp();
    // scores (lane j = its context rows), softmax per query (zero queries: uniform)
    float mx[kQW];
#pragma unroll
    for (int i = 0; i < kQW; ++i) mx[i] = -INFINITY;
    for (int j = lane; j < Nc; j += 32) {
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      if (attention) {
        const float* c = Cs + j * ld;
        for (int d = 0; d < D; ++d) {
          const float4 xv = xs4[d];
          const float cv = c[d];
          s.x += xv.x * cv;
          s.y += xv.y * cv;
          s.z += xv.z * cv;
          s.w += xv.w * cv;
        }
        s.x *= scale;
        s.y *= scale;
        s.z *= scale;
        s.w *= scale;
      }
      ps4[j] = s;
      mx[0] = fmaxf(mx[0], s.x);
      mx[1] = fmaxf(mx[1], s.y);
      mx[2] = fmaxf(mx[2], s.z);
      mx[3] = fmaxf(mx[3], s.w);
    }
    float sum[kQW];
#pragma unroll
    for (int i = 0; i < kQW; ++i) {
      mx[i] = warp_max(mx[i]);
      sum[i] = 0.f;
    }
    for (int j = lane; j < Nc; j += 32) {
      float4 e = ps4[j];
      e.x = expf(e.x - mx[0]);
      e.y = expf(e.y - mx[1]);
      e.z = expf(e.z - mx[2]);
      e.w = expf(e.w - mx[3]);
      ps4[j] = e;
      sum[0] += e.x;
      sum[1] += e.y;
      sum[2] += e.z;
      sum[3] += e.w;
    }
    float inv[kQW];
#pragma unroll
    for (int i = 0; i < kQW; ++i) inv[i] = 1.f / warp_sum(sum[i]);
    for (int j = lane; j < Nc; j += 32) {
      float4 e = ps4[j];
      e.x *= inv[0];
      e.y *= inv[1];
      e.z *= inv[2];
      e.w *= inv[3];
      ps4[j] = e;
      float* pq = probs + qb * Nc + j;
      pq[0] = e.x;
      if (nv > 1) pq[Nc] = e.y;
      if (nv > 2) pq[2 * Nc] = e.z;
      if (nv > 3) pq[3 * Nc] = e.w;
    }
    __syncwarp();
    clk.lap(kCfScores);
    // att = P C (lane = channels), context rows in order
    float acc[kQW][KD];
#pragma unroll
    for (int i = 0; i < kQW; ++i)
#pragma unroll
      for (int k = 0; k < KD; ++k) acc[i][k] = 0.f;
    for (int j = 0; j < Nc; ++j) {
      const float4 pv = ps4[j];
      const float* c = Cs + j * ld + lane;
#pragma unroll
      for (int k = 0; k < KD; ++k)
        if (lane + 32 * k < D) {
          const float cv = c[32 * k];
          acc[0][k] += pv.x * cv;
          acc[1][k] += pv.y * cv;
          acc[2][k] += pv.z * cv;
          acc[3][k] += pv.w * cv;
        }
    }
    clk.lap(kCfPc);
    // per query: dropout + residual, LayerNorm (two passes). The kQW queries side by side (their
    // RNG draws and warp sums overlap); the rows past nv are computed (finite: zero queries) but
    // not stored.
    if (p > 0.f) {
      bool keep[kQW][KD];
      int64_t bases[kQW];
#pragma unroll
      for (int i = 0; i < kQW; ++i) bases[i] = (qb + i) * D;
      keep_masks<KD>(keep, bases, D, lane, p, seed, rstream);
#pragma unroll
      for (int i = 0; i < kQW; ++i)
#pragma unroll
        for (int k = 0; k < KD; ++k) acc[i][k] = keep[i][k] ? acc[i][k] * keep_scale : 0.f;
    }
    float mu[kQW], var[kQW];
#pragma unroll
    for (int i = 0; i < kQW; ++i) {
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < KD; ++k) {
        acc[i][k] += xr[i][k];  // 0 + 0 in the channels >= D
        s += acc[i][k];
      }
      mu[i] = s;
    }
    warp_sum_n<kQW>(mu);
#pragma unroll
    for (int i = 0; i < kQW; ++i) {
      mu[i] = mu[i] / float(D);
      float v = 0.f;
#pragma unroll
      for (int k = 0; k < KD; ++k)
        if (lane + 32 * k < D) {
          const float dv = acc[i][k] - mu[i];
          v += dv * dv;
        }
      var[i] = v;
    }
    warp_sum_n<kQW>(var);
#pragma unroll
    for (int i = 0; i < kQW; ++i) {
      if (i >= nv) break;  // nv is the same for the whole warp
      const int64_t q = qb + i;
      const float rs = 1.0f / sqrtf(var[i] / float(D) + eps);
      float* rq = rbuf + q * D;
      float* oq = out + q * D;
#pragma unroll
      for (int k = 0; k < KD; ++k) {
        const int d = lane + 32 * k;
        if (d < D) {
          rq[d] = acc[i][k];
          oq[d] = (acc[i][k] - mu[i]) * rs * wk[k] + bk[k];
        }
      }
      if (lane == 0) {
        mean[q] = mu[i];
        rstd[q] = rs;
      }
    }
    __syncwarp();  // xs4 / ps4 are rewritten by the warp's next batch
    clk.lap(kCfNorm);
  }
  clk.max_since_start(kCfMaxBlock);
  clk.unit();
}

template <int KD, bool kClock>
__global__ void __launch_bounds__(kCtxWarps * 32, KD <= 2 ? 3 : 1)
    k_ctx_block_bwd(float* dX, float* dC, float* partial, const float* dout, const float* probs,
                    const float* rbuf, const float* mean, const float* rstd, const float* X,
                    const float* C, const float* w, const int64_t* qo, const int32_t* order,
                    int Nc, int D, int attention, float p, float keep_scale, uint64_t seed,
                    uint64_t rstream, float scale, unsigned long long* prof) {
  extern __shared__ __align__(16) float smem[];
  const int64_t b = order[blockIdx.x];  // the samples with the most queries first (launch order)
  const int64_t q0 = qo[b], q1 = qo[b + 1];
  float* part = partial + b * 2 * D;
  if (q0 >= q1) {  // the whole block
    for (int d = threadIdx.x; d < 2 * D; d += blockDim.x) part[d] = 0.f;
    return;
  }
  PhaseClock<kClock> clk(prof);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int ld = D + 1, nd = Nc * D, wsz = 2 * D + 2 * Nc;
  // per warp (float4 = its kQW queries interleaved): d att [D], queries [D], probs [Nc], ds [Nc]
  float4* wbase = reinterpret_cast<float4*>(smem);
  float4* gs4 = wbase + warp * wsz;
  float4* xs4 = gs4 + D;
  float4* ps4 = xs4 + D;
  float4* ds4 = ps4 + Nc;
  float* Cs = smem + 4 * nw * wsz;
  float* dCs = Cs + Nc * ld;
  stage_context(Cs, C + b * int64_t(nd), Nc, D);
  for (int e = threadIdx.x; e < nd; e += blockDim.x) dCs[e] = 0.f;
  float wk[KD], dw_acc[KD], db_acc[KD];
#pragma unroll
  for (int k = 0; k < KD; ++k) {
    const int d = lane + 32 * k;
    wk[k] = d < D ? w[d] : 0.f;
    dw_acc[k] = 0.f;
    db_acc[k] = 0.f;
  }
  __syncthreads();
  clk.lap(kCbStage);
  for (int64_t base = q0; base < q1; base += int64_t(nw) * kQW) {
    clk.add(kCbRounds, 1);
    const int64_t qb = base + int64_t(warp) * kQW;
    if (qb < q1) {
      const int nv = q1 - qb < kQW ? int(q1 - qb) : kQW;  // the same for the whole warp
      // Every load of the batch first (d out, r, X, mean, rstd of its queries, then its probs), so
      // the warp waits about one global latency per batch, not a few per query.
      float dr[kQW][KD], g[kQW][KD], x[kQW][KD], dyk[kQW][KD], xh[kQW][KD];
      float mu[kQW], rs[kQW];
#pragma unroll
      for (int i = 0; i < kQW; ++i) {
        const bool valid = i < nv;
        const int64_t q = qb + i;
        mu[i] = valid ? mean[q] : 0.f;
        rs[i] = valid ? rstd[q] : 0.f;
#pragma unroll
        for (int k = 0; k < KD; ++k) {
          const int d = lane + 32 * k;
          const bool in = valid && d < D;
          dyk[i][k] = in ? dout[q * D + d] : 0.f;
          xh[i][k] = in ? rbuf[q * D + d] : 0.f;
          x[i][k] = in && attention ? X[q * D + d] : 0.f;
        }
      }
      constexpr int kPU = 4;  // 128 context rows a round (Nc = 80: one)
      for (int j0 = lane; j0 < Nc; j0 += 32 * kPU) {
        float4 pv[kPU];
#pragma unroll
        for (int t = 0; t < kPU; ++t) {
          const int j = j0 + 32 * t;
          pv[t] = make_float4(0.f, 0.f, 0.f, 0.f);
          if (j < Nc) {
            const float* pq = probs + qb * Nc + j;
            pv[t] = make_float4(pq[0], nv > 1 ? pq[Nc] : 0.f, nv > 2 ? pq[2 * Nc] : 0.f,
                                nv > 3 ? pq[3 * Nc] : 0.f);
          }
        }
#pragma unroll
        for (int t = 0; t < kPU; ++t)
          if (j0 + 32 * t < Nc) ps4[j0 + 32 * t] = pv[t];
      }
      // LayerNorm backward of the kQW queries side by side: d r (rows past nv stay zero)
      float sums[2 * kQW];  // sum_d w dy, sum_d w dy xhat
#pragma unroll
      for (int i = 0; i < kQW; ++i) {
        float a = 0.f, bs = 0.f;
#pragma unroll
        for (int k = 0; k < KD; ++k) {
          const int d = lane + 32 * k;
          xh[i][k] = d < D && i < nv ? (xh[i][k] - mu[i]) * rs[i] : 0.f;
          const float dn = wk[k] * dyk[i][k];
          a += dn;
          bs += dn * xh[i][k];
          if (i < nv) {
            dw_acc[k] += xh[i][k] * dyk[i][k];
            db_acc[k] += dyk[i][k];
          }
        }
        sums[i] = a;
        sums[kQW + i] = bs;
      }
      warp_sum_n<2 * kQW>(sums);
      bool keep[kQW][KD];
#pragma unroll
      for (int i = 0; i < kQW; ++i)
#pragma unroll
        for (int k = 0; k < KD; ++k) keep[i][k] = true;
      if (p > 0.f) {
        int64_t bases[kQW];
#pragma unroll
        for (int i = 0; i < kQW; ++i) bases[i] = (qb + i) * D;
        keep_masks<KD>(keep, bases, D, lane, p, seed, rstream);
      }
#pragma unroll
      for (int i = 0; i < kQW; ++i) {
        const float dnm = sums[i] / float(D), dnnm = sums[kQW + i] / float(D);
#pragma unroll
        for (int k = 0; k < KD; ++k) {
          const int d = lane + 32 * k;
          dr[i][k] = 0.f;
          g[i][k] = 0.f;
          if (d < D && i < nv) {
            dr[i][k] = (wk[k] * dyk[i][k] - dnm - xh[i][k] * dnnm) * rs[i];
            g[i][k] = p > 0.f ? (keep[i][k] ? dr[i][k] * keep_scale : 0.f) : dr[i][k];
          }
        }
      }
#pragma unroll
      for (int k = 0; k < KD; ++k) {
        const int d = lane + 32 * k;
        if (d < D) {
          gs4[d] = make_float4(g[0][k], g[1][k], g[2][k], g[3][k]);
          xs4[d] = make_float4(x[0][k], x[1][k], x[2][k], x[3][k]);
        }
      }
      __syncwarp();
      if (attention) {
        // dp_j = <d att, C_j> (lane j), ds_j = p_j (dp_j - sum_k p_k dp_k) / sqrt(D)
        float dot[kQW] = {0.f, 0.f, 0.f, 0.f};
        for (int j = lane; j < Nc; j += 32) {
          const float* c = Cs + j * ld;
          float4 dp = make_float4(0.f, 0.f, 0.f, 0.f);
          for (int d = 0; d < D; ++d) {
            const float4 gv = gs4[d];
            const float cv = c[d];
            dp.x += gv.x * cv;
            dp.y += gv.y * cv;
            dp.z += gv.z * cv;
            dp.w += gv.w * cv;
          }
          ds4[j] = dp;
          const float4 pv = ps4[j];
          dot[0] += pv.x * dp.x;
          dot[1] += pv.y * dp.y;
          dot[2] += pv.z * dp.z;
          dot[3] += pv.w * dp.w;
        }
#pragma unroll
        for (int i = 0; i < kQW; ++i) dot[i] = warp_sum(dot[i]);
        for (int j = lane; j < Nc; j += 32) {
          const float4 pv = ps4[j];
          float4 dp = ds4[j];
          dp.x = pv.x * (dp.x - dot[0]) * scale;
          dp.y = pv.y * (dp.y - dot[1]) * scale;
          dp.z = pv.z * (dp.z - dot[2]) * scale;
          dp.w = pv.w * (dp.w - dot[3]) * scale;
          ds4[j] = dp;
        }
        __syncwarp();
        // dX = d r + sum_j ds_j C_j (lane = channels)
        for (int j = 0; j < Nc; ++j) {
          const float4 dv = ds4[j];
          const float* c = Cs + j * ld + lane;
#pragma unroll
          for (int k = 0; k < KD; ++k)
            if (lane + 32 * k < D) {
              const float cv = c[32 * k];
              dr[0][k] += dv.x * cv;
              dr[1][k] += dv.y * cv;
              dr[2][k] += dv.z * cv;
              dr[3][k] += dv.w * cv;
            }
        }
      }
#pragma unroll
      for (int i = 0; i < kQW; ++i)
        if (i < nv) {
          float* dxq = dX + (qb + i) * D;
#pragma unroll
          for (int k = 0; k < KD; ++k) {
            const int d = lane + 32 * k;
            if (d < D) dxq[d] = dr[i][k];
          }
        }
    }
    clk.lap(kCbQueries);
    __syncthreads();
    clk.lap(kCbWait);
    // dC[b] += p_j d att_d + ds_j x_d over the group's queries in order (warp u's queries are
    // base + kQW u + i): a thread owns channel d and the rows r0, r0 + rstride, ...
    const int64_t left = q1 - base;
    const int active = left >= int64_t(nw) * kQW ? nw : int((left + kQW - 1) / kQW);
    const int rstride = int(blockDim.x) >= D ? int(blockDim.x) / D : 1;
    // Four of a thread's rows at a time (kRows): four independent accumulation chains and their
    // shared loads issued together, where one row's load -> 8 dependent FMAs -> store followed the
    // previous row's store. Per element the same sums in the same order.
    constexpr int kRows = 4;
    for (int cidx = threadIdx.x; cidx < D * rstride; cidx += blockDim.x) {
      const int d = cidx % D, r0 = cidx / D;
      for (int u = 0; u < active; ++u) {
        const float4* wu = wbase + u * wsz;
        const float4 gv = wu[d], xv = wu[D + d];
        const float4* pu = wu + 2 * D;
        const float4* du = pu + Nc;
        for (int j0 = r0; j0 < Nc; j0 += kRows * rstride) {
          float acc[kRows];
          float4 pv[kRows], dv[kRows];
#pragma unroll
          for (int t = 0; t < kRows; ++t) {
            const int j = j0 + t * rstride;
            acc[t] = 0.f;
            pv[t] = dv[t] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (j < Nc) {
              acc[t] = dCs[j * D + d];
              pv[t] = pu[j];
              if (attention) dv[t] = du[j];
            }
          }
#pragma unroll
          for (int t = 0; t < kRows; ++t) {
            if (j0 + t * rstride >= Nc) break;
            if (attention) {
              acc[t] += pv[t].x * gv.x;
              acc[t] += dv[t].x * xv.x;
              acc[t] += pv[t].y * gv.y;
              acc[t] += dv[t].y * xv.y;
              acc[t] += pv[t].z * gv.z;
              acc[t] += dv[t].z * xv.z;
              acc[t] += pv[t].w * gv.w;
              acc[t] += dv[t].w * xv.w;
            } else {
              acc[t] += pv[t].x * gv.x;
              acc[t] += pv[t].y * gv.y;
              acc[t] += pv[t].z * gv.z;
              acc[t] += pv[t].w * gv.w;
            }
          }
#pragma unroll
          for (int t = 0; t < kRows; ++t) {
            const int j = j0 + t * rstride;
            if (j < Nc) dCs[j * D + d] = acc[t];
          }
        }
      }
    }
    __syncthreads();
    clk.lap(kCbDc);
  }
  // dC[b] += dCs: each thread's loads of dC issued together (kStageU per round), as the staging
  float* dCb = dC + b * int64_t(nd);
  const int nt = int(blockDim.x);
  for (int e0 = int(threadIdx.x); e0 < nd; e0 += kStageU * nt) {
    float v[kStageU];
#pragma unroll
    for (int u = 0; u < kStageU; ++u) {
      const int e = e0 + u * nt;
      v[u] = e < nd ? dCb[e] : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kStageU; ++u) {
      const int e = e0 + u * nt;
      if (e < nd) dCb[e] = v[u] + dCs[e];
    }
  }
  // LayerNorm parameter partials: the warps' sums (scratch free after the last barrier), in order
  float* mine = reinterpret_cast<float*>(gs4);
#pragma unroll
  for (int k = 0; k < KD; ++k) {
    const int d = lane + 32 * k;
    if (d < D) {
      mine[d] = dw_acc[k];
      mine[D + d] = db_acc[k];
    }
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float sw = 0.f, sb = 0.f;
    for (int u = 0; u < nw; ++u) {
      const float* r = reinterpret_cast<const float*>(wbase + u * wsz);
      sw += r[d];
      sb += r[D + d];
    }
    part[d] = sw;
    part[D + d] = sb;
  }
  clk.lap(kCbFlush);
  clk.max_since_start(kCbMaxBlock);
  clk.unit();
}

// dw[c] += sum_b partial[b, c], db[c] += sum_b partial[b, D + c]: rows b = ty mod 8 summed by 8
// threads, then the 8 in order (deterministic). Block (32, 8), grid ceil(2 D / 32).
__global__ void k_ctx_ln_param_reduce(float* dw, float* db, const float* partial, int64_t B,
                                      int D) {
  __shared__ float pr[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int o = blockIdx.x * 32 + tx;
  float acc = 0.f;
  if (o < 2 * D)
    for (int64_t b = ty; b < B; b += 8) acc += partial[b * 2 * D + o];
  pr[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && o < 2 * D) {
    float s = 0.f;
    for (int k = 0; k < 8; ++k) s += pr[k][tx];
    if (o < D) {
      if (dw) dw[o] += s;
    } else if (db) {
      db[o - D] += s;
    }
  }
}

size_t fwd_smem(int64_t Nc, int64_t D, int nw) {
  return sizeof(float) * size_t(Nc * (D + 1) + kQW * nw * (D + Nc));
}
size_t bwd_smem(int64_t Nc, int64_t D, int nw) {
  return sizeof(float) * size_t(Nc * (D + 1) + Nc * D + kQW * nw * (2 * D + 2 * Nc));
}

// The current device's opt-in shared memory per block, at least the default 48 KB.
size_t smem_optin_limit() { return std::max<size_t>(smem_optin_bytes(), kDefaultSmem); }

// Warps per block: kCtxWarps, halved while the backward's (the larger) shared memory does not fit;
// 0 when even one warp does not fit.
int pick_warps(int64_t Nc, int64_t D) {
  if (Nc < 1 || D < 1 || D > kCtxBlockMaxD) return 0;
  const size_t limit = smem_optin_limit();
  for (int nw = kCtxWarps; nw >= 1; nw /= 2)
    if (std::max(fwd_smem(Nc, D, nw), bwd_smem(Nc, D, nw)) <= limit) return nw;
  return 0;
}

int kd_for(int64_t D) {
  const int64_t k = (D + 31) / 32;
  return k <= 1 ? 1 : k <= 2 ? 2 : k <= 4 ? 4 : 8;
}

template <class K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > kDefaultSmem)
    ADA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <int KD>
void launch_fwd(float* out, float* probs, float* r, float* mean, float* rstd, const float* X,
                const float* C, const float* w, const float* b, const int64_t* qo, int64_t B,
                int Nc, int D, bool attention, float p, uint64_t seed, uint64_t rstream, float eps,
                int nw, unsigned chunks, cudaStream_t stream) {
  const size_t smem = fwd_smem(Nc, D, nw);
  unsigned long long* prof = phase_sums(Clocked::kContextForward);
  auto* kernel = prof ? k_ctx_block_fwd<KD, true> : k_ctx_block_fwd<KD, false>;
  allow_smem(kernel, smem);
  const float keep_scale = p > 0.f ? 1.0f / (1.0f - p) : 1.0f;  // the CPU's T(1) / (T(1) - T(p))
  const float scale = 1.0f / std::sqrt(float(D));               // context_attention's
  kernel<<<dim3(unsigned(B), chunks), unsigned(nw * 32), smem, stream>>>(
      out, probs, r, mean, rstd, X, C, w, b, qo, Nc, D, attention ? 1 : 0, p, keep_scale, seed,
      rstream, eps, scale, prof);
  ADA_CUDA_LAUNCHED();
}

template <int KD>
void launch_bwd(float* dX, float* dC, float* partial, const float* dout, const float* probs,
                const float* r, const float* mean, const float* rstd, const float* X,
                const float* C, const float* w, const int64_t* qo, const int32_t* order, int64_t B,
                int Nc, int D, bool attention, float p, uint64_t seed, uint64_t rstream, int nw,
                cudaStream_t stream) {
  const size_t smem = bwd_smem(Nc, D, nw);
  unsigned long long* prof = phase_sums(Clocked::kContextBackward);
  auto* kernel = prof ? k_ctx_block_bwd<KD, true> : k_ctx_block_bwd<KD, false>;
  allow_smem(kernel, smem);
  const float keep_scale = p > 0.f ? 1.0f / (1.0f - p) : 1.0f;
  const float scale = 1.0f / std::sqrt(float(D));
  kernel<<<unsigned(B), unsigned(nw * 32), smem, stream>>>(
      dX, dC, partial, dout, probs, r, mean, rstd, X, C, w, qo, order, Nc, D, attention ? 1 : 0,
      p, keep_scale, seed, rstream, scale, prof);
  ADA_CUDA_LAUNCHED();
}

}  // namespace

bool context_block_fused_fits(int64_t Nc, int64_t D) { return pick_warps(Nc, D) > 0; }

int64_t context_block_partial_size(int64_t B, int64_t D) { return std::max<int64_t>(B * 2 * D, 1); }

void context_block_forward_launch(float* out, float* probs, float* r, float* mean, float* rstd,
                                  const float* X, const float* C, const float* ln_w,
                                  const float* ln_b, const int64_t* q_offsets, int64_t B,
                                  int64_t max_queries, int64_t Nc, int64_t D, bool attention,
                                  float p, uint64_t seed, uint64_t rng_stream, float eps,
                                  cudaStream_t stream) {
  const int nw = pick_warps(Nc, D);
  ADA_CHECK(nw > 0, "context_block_forward: Nc=" << Nc << " D=" << D << " does not fit the fused kernel");
  if (B <= 0 || max_queries <= 0) return;
  ADA_CHECK(B <= INT32_MAX, "context_block_forward: B=" << B << " exceeds the grid");
  const int64_t per_block = int64_t(kQW) * nw;  // a sample's queries go in blocks of this many
  const int64_t chunks64 = (max_queries + per_block - 1) / per_block;
  ADA_CHECK(chunks64 <= 65535, "context_block_forward: " << max_queries << " queries in one sample exceed the grid");
  const unsigned chunks = unsigned(chunks64);
  const int nc = int(Nc), d = int(D);
  switch (kd_for(D)) {
    case 1:
      launch_fwd<1>(out, probs, r, mean, rstd, X, C, ln_w, ln_b, q_offsets, B, nc, d, attention, p,
                    seed, rng_stream, eps, nw, chunks, stream);
      break;
    case 2:
      launch_fwd<2>(out, probs, r, mean, rstd, X, C, ln_w, ln_b, q_offsets, B, nc, d, attention, p,
                    seed, rng_stream, eps, nw, chunks, stream);
      break;
    case 4:
      launch_fwd<4>(out, probs, r, mean, rstd, X, C, ln_w, ln_b, q_offsets, B, nc, d, attention, p,
                    seed, rng_stream, eps, nw, chunks, stream);
      break;
    default:
      launch_fwd<8>(out, probs, r, mean, rstd, X, C, ln_w, ln_b, q_offsets, B, nc, d, attention, p,
                    seed, rng_stream, eps, nw, chunks, stream);
      break;
  }
}

void context_block_backward_launch(float* dX, float* dC, float* d_ln_w, float* d_ln_b,
                                   const float* dout, const float* probs, const float* r,
                                   const float* mean, const float* rstd, const float* X,
                                   const float* C, const float* ln_w, const int64_t* q_offsets,
                                   const int32_t* order, int64_t B, int64_t Nc, int64_t D,
                                   bool attention, float p, uint64_t seed, uint64_t rng_stream,
                                   float* partial, cudaStream_t stream) {
  const int nw = pick_warps(Nc, D);
  ADA_CHECK(nw > 0, "context_block_backward: Nc=" << Nc << " D=" << D << " does not fit the fused kernel");
  if (B <= 0) return;
  ADA_CHECK(B <= INT32_MAX, "context_block_backward: B=" << B << " exceeds the grid");
  const int nc = int(Nc), d = int(D);
  switch (kd_for(D)) {
    case 1:
      launch_bwd<1>(dX, dC, partial, dout, probs, r, mean, rstd, X, C, ln_w, q_offsets, order, B, nc,
                    d, attention, p, seed, rng_stream, nw, stream);
      break;
    case 2:
      launch_bwd<2>(dX, dC, partial, dout, probs, r, mean, rstd, X, C, ln_w, q_offsets, order, B, nc,
                    d, attention, p, seed, rng_stream, nw, stream);
      break;
    case 4:
      launch_bwd<4>(dX, dC, partial, dout, probs, r, mean, rstd, X, C, ln_w, q_offsets, order, B, nc,
                    d, attention, p, seed, rng_stream, nw, stream);
      break;
    default:
      launch_bwd<8>(dX, dC, partial, dout, probs, r, mean, rstd, X, C, ln_w, q_offsets, order, B, nc,
                    d, attention, p, seed, rng_stream, nw, stream);
      break;
  }
  if (d_ln_w || d_ln_b) {
    k_ctx_ln_param_reduce<<<unsigned((2 * D + 31) / 32), dim3(32, 8), 0, stream>>>(d_ln_w, d_ln_b,
                                                                                   partial, B, d);
    ADA_CUDA_LAUNCHED();
  }
}

}  // namespace cuda
}  // namespace ada
