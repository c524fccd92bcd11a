// The fused learnable-filter block (kernels/fused_filter.cuh; the op's contract and the composed
// specification: include/ada/backend.hpp, src/core/fused_filter.cpp).
//
// Forward, k_fb_fwd: a persistent grid (about as many CTAs as fit on the device at once); each CTA
// stages the dense weight (D x D, rows padded to 32 TN + 4 floats so that float4 reads of a row by 8
// lanes hit distinct banks) and the filter's kernel h in shared memory once, then takes filter
// blocks r = blockIdx.x, + gridDim.x, ... The filter: irfft(W * rfft(x)) along K (the CPU's DFT
// tables, norm "ortho") is, per channel d, the circular convolution F[n] = sum_m h[(n - m) mod K]
// x[m] with h[j] = s sum_f Re(tw_inv[f][j] W[f][d]), the inverse transform of the weight itself; so
// a CTA computes h [K, D] once (K D Kf products) and a block's filter costs K multiply-adds per
// output instead of a forward and an inverse DFT of Kf frequencies each (4 Kf per output), with no
// spectrum in shared memory and no barrier between the two transforms (since 2026-11-29; the same
// function, another rounding: the tests' 1e-4 relative tolerance). Per block of K rows
// (NW = ceil(K / 4) warps, warp w owns rows 4w .. 4w+3; lane l owns channels l, l + 32, ... < 32 TN,
// TN = ceil(D / 32)):
//   1. the E tile [K, D] -> shared, from registers: each thread loaded its share of it (4 TN
//      floats, all loads in flight at once) during the previous block, and now issues the loads of
//      the next block's tile, which land while it computes this one (software pipelining: no
//      global load latency on a CTA's path per block but the first, which overlaps the staging);
//      the dropout keep bits of the block's Philox blocks (one Philox per 4 consecutive elements of
//      the [n, D] tensor, as the CPU's for_each_uniform) -> shared;
//   2. the convolution -> F for the warp's rows, in registers (inputs m in increasing order, split
//      where the rows' table index wraps): written to global F (saved) and to the shared F tile;
//   3. Linear (float4 reads of the F row, a broadcast, and of the weight row), + bias, dropout,
//      + E, LayerNorm per row with warp reductions (the row is the warp's): Et, Rr, mean, rstd.
// Only a warp's own rows pass from step 2 to 3 (__syncwarp); one __syncthreads after step 1 and one
// after step 3.
// Registers: __launch_bounds__(512, 2) for TN <= 2 caps them at 64 (the prefetch's 4 TN floats
// would otherwise let ptxas take 128 and halve the CTAs per SM); at K = 20, D = 64: 160 threads,
// 64 registers (ptxas, CUDA 13, sm_90: 8 bytes of spill stores and 8 of loads), 33 KB of shared
// memory (was 37 KB with the spectrum and tables): 6 CTAs per SM by the registers.
//
// Backward, k_fb_bwd: same grid and mapping. Per block: E and F tiles and the keep bits -> shared;
// LayerNorm backward per row (warp) -> dR (kept in registers), dG = mask dR / (1 - p) -> shared;
// dF = dG W (in-kernel, the warp's rows); the CTA's dW partial += dG^T F (in shared: thread-owned
// entries, no atomics); rfft of E and of dF, the complex-weight gradient partial (shared, thread-owned)
// and the dF spectrum times conj(W); the adjoint inverse DFT + dR -> dE. The bias and LayerNorm
// parameter gradients are register partials per thread. At the end each CTA writes its partials
// (dW, d complex weight, d bias, d LN w, d LN b) to a scratch row, and k_fb_reduce adds the rows in
// CTA order into the gradients (deterministic for a given grid; no cuBLAS: an in-kernel dW needs
// neither dG written to global memory nor a second pass over F).
//
// Limits: K <= 64, D <= 128 and the shared memory the shape needs (forward at K = 20, D = 64: 33 KB;
// backward: 70 KB); otherwise the launchers return false and the backend composes the primitive
// ops. Arithmetic: float, the CPU's formulas (DFT tables built the same way); sums in another order
// than the CPU's (the tests' 1e-4 relative tolerance).
#include "kernels/fused_filter.cuh"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ada/check.hpp"
#include "ada/rng.hpp"
#include "kernels/cuda_util.cuh"
#include "kernels/phase_clock.cuh"

namespace ada {
namespace cuda {
namespace {

constexpr int kRowsPerWarp = 4;

// Shared-memory layout (in floats; every region starts at a multiple of 4 floats = 16 bytes).
// The forward has no tables or spectrum, but the filter's kernel h [K + 3][S] (off_h); the backward
// no h.
struct FbLayout {
  int K, D, Kf, NW, Kr, S, SW, keep_bytes;
  int off_W, off_dW, off_twf, off_twi, off_x, off_F, off_dG, off_dF, off_Gr, off_Gi, off_dcw,
      off_h, off_keep, total;
};

__host__ __device__ inline int round4(int x) { return (x + 3) & ~3; }

__host__ __device__ inline FbLayout fb_layout(int K, int D, int TN, bool bwd) {
  FbLayout L;
  L.K = K;
  L.D = D;
  L.Kf = K / 2 + 1;
  L.NW = (K + kRowsPerWarp - 1) / kRowsPerWarp;
  L.Kr = L.NW * kRowsPerWarp;
  L.S = 32 * TN;      // row stride of the tiles (channels padded with zeros)
  L.SW = L.S + 4;     // row stride of the weight (and dW partial)
  L.keep_bytes = K * D / 4 + 2;  // Philox blocks that touch one filter block
  int o = 0;
  L.off_W = o;
  o += L.S * L.SW;
  L.off_dW = o;
  if (bwd) o += L.S * L.SW;
  L.off_twf = o;
  if (bwd) o += round4(2 * L.Kf * K);
  L.off_twi = o;  // the adjoint twiddles
  if (bwd) o += round4(2 * L.Kf * K);
  L.off_x = o;
  o += L.Kr * L.S;
  L.off_F = o;
  o += L.Kr * L.S;
  L.off_dG = o;
  if (bwd) o += L.Kr * L.S;
  L.off_dF = o;
  if (bwd) o += L.Kr * L.S;
  L.off_Gr = o;
  if (bwd) o += L.Kf * L.S;
  L.off_Gi = o;
  if (bwd) o += L.Kf * L.S;
  L.off_dcw = o;
  if (bwd) o += 2 * L.Kf * L.S;
  L.off_h = o;
  if (!bwd) o += (K + 3) * L.S;  // 3 rows past K: the rows >= K of the last warp read there
  L.off_keep = o;
  o += round4((L.keep_bytes + 3) / 4);
  L.total = o;
  return L;
}

// Stages the weight [D, D] into Ws [S, SW] (zero padding) and zeroes `zero_n` floats at `zero`.
// Unrolled so that 8 of a thread's global loads are in flight at once (a plain loop waits a full
// load latency per element: S SW / blockDim = 27 round trips at K = 20, D = 64).
__device__ __forceinline__ void stage_weight(float* Ws, const float* Wd, const FbLayout& L) {
#pragma unroll 8
  for (int e = threadIdx.x; e < L.S * L.SW; e += blockDim.x) {
    const int o = e / L.SW, i = e % L.SW;
    Ws[e] = (o < L.D && i < L.D) ? Wd[o * L.D + i] : 0.f;
  }
}

// The keep bits of the Philox blocks b0 .. that cover elements [e0, e0 + K D): keep[b - b0] bit q =
// element 4 b + q is kept (u >= p), the CPU's for_each_uniform / k_dropout draw.
__device__ __forceinline__ void keep_bits(unsigned char* keep, int64_t e0, int64_t count, float p,
                                          uint64_t seed, uint64_t stream) {
  const int64_t b0 = e0 >> 2, nb = ((e0 + count - 1) >> 2) - b0 + 1;
  for (int64_t b = threadIdx.x; b < nb; b += blockDim.x) {
    const uint64_t blk = uint64_t(b0 + b);
    const Philox4 rr = philox4x32_10(uint32_t(blk), uint32_t(blk >> 32), uint32_t(stream),
                                     uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
    unsigned bits = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) bits |= (u32_to_unit_float(rr.v[q]) >= p ? 1u : 0u) << q;
    keep[b] = static_cast<unsigned char>(bits);
  }
}

__device__ __forceinline__ bool kept(const unsigned char* keep, int64_t b0, int64_t idx) {
  return (keep[(idx >> 2) - b0] >> (idx & 3)) & 1u;
}

// Loads a [K, D] tile starting at src into t [K, S] (channels >= D zero).
__device__ __forceinline__ void load_tile(float* t, const float* src, const FbLayout& L) {
  for (int e = threadIdx.x; e < L.K * L.S; e += blockDim.x) {
    const int n = e / L.S, d = e % L.S;
    t[e] = d < L.D ? src[int64_t(n) * L.D + d] : 0.f;
  }
}

// This thread's share of the [K, D] tile at src in the [K, S] layout of load_tile (element
// e = threadIdx.x + k blockDim.x, k < 4 TN: blockDim.x = 32 NW >= 8 K, so 4 TN of them cover K S),
// loaded into registers: all 4 TN loads are in flight at once, and the forward issues them for the
// next block before it computes the current one.
template <int TN>
__device__ __forceinline__ void fetch_tile(float (&v)[4 * TN], const float* src, const FbLayout& L) {
#pragma unroll
  for (int k = 0; k < 4 * TN; ++k) {
    const int e = threadIdx.x + k * blockDim.x;
    const int n = e / L.S, d = e % L.S;
    v[k] = (e < L.K * L.S && d < L.D) ? __ldg(src + (n * L.D + d)) : 0.f;  // < K D <= 2^13
  }
}
template <int TN>
__device__ __forceinline__ void store_tile(float* t, const float (&v)[4 * TN], const FbLayout& L) {
#pragma unroll
  for (int k = 0; k < 4 * TN; ++k) {
    const int e = threadIdx.x + k * blockDim.x;
    if (e < L.K * L.S) t[e] = v[k];
  }
}

// The warp's rows n = kRowsPerWarp w + m (< K) of a real inverse transform of the spectrum (Gr, Gi)
// [Kf][S]: acc[m][j] = sum_f Re(tw[f K + n] (Gr + i Gi)[f][lane + 32 j]), f in increasing order
// (the forward's irfft with the inverse table, the backward's adjoint of rfft with the adjoint
// table); rows >= K are left 0.
template <int TN>
__device__ __forceinline__ void warp_rows_from_spectrum(float (&acc)[kRowsPerWarp][TN],
                                                        const float* Gr, const float* Gi,
                                                        const float2* tw, int Kf, int K, int S,
                                                        int w, int lane) {
#pragma unroll
  for (int m = 0; m < kRowsPerWarp; ++m)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[m][j] = 0.f;
  for (int f = 0; f < Kf; ++f) {
    float gr[TN], gi[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      gr[j] = Gr[f * S + lane + 32 * j];
      gi[j] = Gi[f * S + lane + 32 * j];
    }
#pragma unroll
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int n = kRowsPerWarp * w + m;
      if (n < K) {
        const float2 c = tw[f * K + n];
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[m][j] += c.x * gr[j] - c.y * gi[j];
      }
    }
  }
}

// acc[i][j] += h[i][j] x[j] for the warp's 4 rows (h at hrow + i S + 32 j, x at xrow + 32 j): one
// step m of the circular convolution, the 4 rows' filter values at consecutive rows of the table.
template <int TN>
__device__ __forceinline__ void conv_step(float (&acc)[kRowsPerWarp][TN], const float* xrow,
                                          const float* hrow, int S) {
  float xv[TN];
#pragma unroll
  for (int j = 0; j < TN; ++j) xv[j] = xrow[32 * j];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(hrow[i * S + 32 * j], xv[j], acc[i][j]);
}

// The forward's phase clock ("filter_block_forward", kernels/phase_clock.cuh), per filter block:
// the CTA's setup (weight and filter staging, spread over its blocks), then per block the E tile and
// keep bits up to the first barrier, the convolution, the Linear, the LayerNorm and outputs, the
// wait at the last barrier; the slowest CTA.
enum FbFwdSlot { kFbSetup = 1, kFbStage, kFbFilter, kFbLinear, kFbNorm, kFbWait, kFbMaxCta };

template <int TN, bool kClock>
__global__ void __launch_bounds__(512, TN <= 2 ? 2 : 1)
    k_fb_fwd(float* Et, float* F, float* Rr, float* mean, float* rstd, const float* E,
             const float* cw, const float* Wd, const float* bd, const float* lw, const float* lb,
             const float* tables, int64_t R, int K, int D, float eps, float p, float keep_scale,
             float s, uint64_t seed, uint64_t stream, unsigned long long* prof) {
  extern __shared__ float sm[];
  PhaseClock<kClock> clk(prof);
  const FbLayout L = fb_layout(K, D, TN, false);
  const int Kf = L.Kf, S = L.S, SW = L.SW;
  float* Ws = sm + L.off_W;
  float* xs = sm + L.off_x;
  float* Fs = sm + L.off_F;
  float* hs = sm + L.off_h;
  unsigned char* keep = reinterpret_cast<unsigned char*>(sm + L.off_keep);
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

  // The first block's E tile is in flight while the CTA stages the weight and the filter.
  float pre[4 * TN];
  if (blockIdx.x < R) fetch_tile<TN>(pre, E + int64_t(blockIdx.x) * K * D, L);
  stage_weight(Ws, Wd, L);
  // The filter's kernel h[j][d] = s sum_f Re(tw_inv[f][j] W[f][d]) (f in increasing order; the
  // inverse table holds coef cos * s, coef sin * s): irfft(W rfft(x)) along K is the circular
  // convolution F[n] = sum_m h[(n - m) mod K] x[m]. Rows K .. K + 2 and channels >= D are 0.
  const float2* twi = reinterpret_cast<const float2*>(tables + 2 * Kf * K);
#pragma unroll 2
  for (int e = tid; e < (K + 3) * S; e += blockDim.x) {
    const int j = e / S, d = e % S;
    float a = 0.f;
    if (j < K && d < D) {
      for (int f = 0; f < Kf; ++f) {
        const float2 c = __ldg(twi + f * K + j);
        a += c.x * __ldg(cw + 2 * (f * D + d)) - c.y * __ldg(cw + 2 * (f * D + d) + 1);
      }
      a *= s;
    }
    hs[e] = a;
  }
  for (int e = tid; e < L.Kr * S; e += blockDim.x) Fs[e] = 0.f;  // rows >= K stay 0
  float bias[TN], gam[TN], bet[TN];
#pragma unroll
  for (int j = 0; j < TN; ++j) {
    const int d = lane + 32 * j;
    bias[j] = d < D ? bd[d] : 0.f;
    gam[j] = d < D ? lw[d] : 0.f;
    bet[j] = d < D ? lb[d] : 0.f;
  }
  const bool drop = p > 0.f;
  // The warp's rows n0 .. n0 + 3 against inputs m: the table row of (n0 + i, m) is n0 + i - m,
  // + K where that is negative. m <= n0: no row wraps (rows up to n0 + 3 - m < K + 3: the 3 spare
  // rows serve the last warp's rows >= K, whose sums are discarded); m >= n0 + 4: every row wraps;
  // the up to 3 steps between, row by row.
  const int n0 = kRowsPerWarp * w;
  const int mA = min(n0 + 1, K), mB = min(n0 + kRowsPerWarp, K);
  __syncthreads();
  clk.lap(kFbSetup);

  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const int64_t e0 = r * K * D, b0 = e0 >> 2;
    // 1. E tile (prefetched) -> shared, and the keep bits (read in step 3); then the next block's
    //    tile is fetched into registers, its loads in flight during steps 2-3 of this block (the
    //    previous iteration's last barrier freed xs and keep).
    store_tile<TN>(xs, pre, L);
    if (drop) keep_bits(keep, e0, int64_t(K) * D, p, seed, stream);
    __syncthreads();
    clk.lap(kFbStage);
    if (r + gridDim.x < R) fetch_tile<TN>(pre, E + (r + gridDim.x) * K * D, L);
    // 2. the filter: circular convolution along K (m in increasing order) -> F (the warp's rows)
    float acc[kRowsPerWarp][TN];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
    {
      const float* xl = xs + lane;
      const float* hl = hs + lane;
      for (int m = 0; m < mA; ++m) conv_step<TN>(acc, xl + m * S, hl + (n0 - m) * S, S);
      for (int m = mA; m < mB; ++m) {
        float xv[TN];
#pragma unroll
        for (int j = 0; j < TN; ++j) xv[j] = xl[m * S + 32 * j];
#pragma unroll
        for (int i = 0; i < kRowsPerWarp; ++i) {
          const int t = n0 + i - m;
          const float* hrow = hl + (t < 0 ? t + K : t) * S;
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(hrow[32 * j], xv[j], acc[i][j]);
        }
      }
      for (int m = mB; m < K; ++m) conv_step<TN>(acc, xl + m * S, hl + (n0 - m + K) * S, S);
    }
#pragma unroll
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int n = n0 + m;
      if (n < K) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int d = lane + 32 * j;
          Fs[n * S + d] = acc[m][j];
          if (d < D) F[e0 + int64_t(n) * D + d] = acc[m][j];
        }
      }
    }
    __syncwarp();
    clk.lap(kFbFilter);
    // 3. Linear + bias, dropout, residual, LayerNorm
#pragma unroll
    for (int m = 0; m < kRowsPerWarp; ++m)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[m][j] = bias[j];
    for (int i = 0; i < S; i += 4) {
      float4 wv[TN];
#pragma unroll
      for (int j = 0; j < TN; ++j)
        wv[j] = *reinterpret_cast<const float4*>(Ws + (lane + 32 * j) * SW + i);
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const float4 fv =
            *reinterpret_cast<const float4*>(Fs + (kRowsPerWarp * w + m) * S + i);
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          float a = acc[m][j];
          a = fmaf(fv.x, wv[j].x, a);
          a = fmaf(fv.y, wv[j].y, a);
          a = fmaf(fv.z, wv[j].z, a);
          a = fmaf(fv.w, wv[j].w, a);
          acc[m][j] = a;
        }
      }
    }
    clk.lap(kFbLinear);
#pragma unroll
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int n = kRowsPerWarp * w + m;
      if (n >= K) continue;  // warp-uniform
      const int64_t rowoff = e0 + int64_t(n) * D;
      float v[TN];
      float s1 = 0.f;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int d = lane + 32 * j;
        float g = acc[m][j];
        if (d < D) {
          if (drop) g = kept(keep, b0, rowoff + d) ? g * keep_scale : 0.f;
          v[j] = g + xs[n * S + d];
        } else {
          v[j] = 0.f;
        }
        s1 += v[j];
      }
      const float mu = warp_sum(s1) / float(D);
      float s2 = 0.f;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const float dv = v[j] - mu;
        if (lane + 32 * j < D) s2 += dv * dv;
      }
      const float var = warp_sum(s2) / float(D);
      const float rs = 1.0f / sqrtf(var + eps);
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int d = lane + 32 * j;
        if (d < D) {
          Rr[rowoff + d] = v[j];
          Et[rowoff + d] = (v[j] - mu) * rs * gam[j] + bet[j];
        }
      }
      if (lane == 0) {
        mean[r * K + n] = mu;
        rstd[r * K + n] = rs;
      }
    }
    clk.lap(kFbNorm);
    __syncthreads();  // the next block overwrites xs, keep and F
    clk.lap(kFbWait);
    clk.unit();
  }
  clk.max_since_start(kFbMaxCta);
}

// Partial row of one CTA: dW [D, D], d complex weight [Kf, D, 2], d bias, d LN w, d LN b [D].
__host__ __device__ inline int64_t fb_partial_size(int K, int D) {
  return int64_t(D) * D + int64_t(K / 2 + 1) * D * 2 + 3 * int64_t(D);
}

template <int TN>
__global__ void __launch_bounds__(512)
    k_fb_bwd(float* dE, float* partial, const float* dEt, const float* E, const float* F,
             const float* Rr, const float* mean, const float* rstd, const float* cw,
             const float* Wd, const float* lw, const float* tables, int64_t R, int K, int D,
             float p, float keep_scale, float s, uint64_t seed, uint64_t stream) {
  extern __shared__ float sm[];
  const FbLayout L = fb_layout(K, D, TN, true);
  const int Kf = L.Kf, S = L.S, SW = L.SW, NW = L.NW;
  float* Ws = sm + L.off_W;
  float* dWp = sm + L.off_dW;
  const float2* twf = reinterpret_cast<const float2*>(sm + L.off_twf);
  const float2* twa = reinterpret_cast<const float2*>(sm + L.off_twi);
  float* xs = sm + L.off_x;
  float* Fs = sm + L.off_F;
  float* dGs = sm + L.off_dG;
  float* dFs = sm + L.off_dF;
  float* Gr = sm + L.off_Gr;
  float* Gi = sm + L.off_Gi;
  float* dcw = sm + L.off_dcw;
  unsigned char* keep = reinterpret_cast<unsigned char*>(sm + L.off_keep);
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

  stage_weight(Ws, Wd, L);
  for (int e = tid; e < S * SW; e += blockDim.x) dWp[e] = 0.f;
  for (int e = tid; e < 2 * Kf * K; e += blockDim.x) {
    sm[L.off_twf + e] = tables[e];
    sm[L.off_twi + e] = tables[4 * Kf * K + e];  // the adjoint table
  }
  for (int e = tid; e < 4 * L.Kr * S; e += blockDim.x) xs[e] = 0.f;  // xs, Fs, dGs, dFs
  for (int e = tid; e < 2 * Kf * S; e += blockDim.x) dcw[e] = 0.f;
  float gam[TN], p_lw[TN], p_lb[TN], p_db[TN];
#pragma unroll
  for (int j = 0; j < TN; ++j) {
    const int d = lane + 32 * j;
    gam[j] = d < D ? lw[d] : 0.f;
    p_lw[j] = p_lb[j] = p_db[j] = 0.f;
  }
  const bool drop = p > 0.f;
  __syncthreads();

  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const int64_t e0 = r * K * D, b0 = e0 >> 2;
    // E and F tiles, keep bits
    load_tile(xs, E + e0, L);
    load_tile(Fs, F + e0, L);
    if (drop) keep_bits(keep, e0, int64_t(K) * D, p, seed, stream);
    __syncthreads();
    // LayerNorm backward (the warp's rows) -> dR (registers); dG = dropout^T dR -> shared
    float dR[kRowsPerWarp][TN];
#pragma unroll
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int n = kRowsPerWarp * w + m;
#pragma unroll
      for (int j = 0; j < TN; ++j) dR[m][j] = 0.f;
      if (n >= K) continue;  // warp-uniform
      const int64_t rowoff = e0 + int64_t(n) * D;
      const float mu = mean[r * K + n], rs = rstd[r * K + n];
      float xh[TN], dy[TN];
      float a = 0.f, bsum = 0.f;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int d = lane + 32 * j;
        xh[j] = d < D ? (Rr[rowoff + d] - mu) * rs : 0.f;
        dy[j] = d < D ? dEt[rowoff + d] : 0.f;
        const float dn = gam[j] * dy[j];
        a += dn;
        bsum += dn * xh[j];
        p_lw[j] += xh[j] * dy[j];
        p_lb[j] += dy[j];
      }
      const float dnorm_mean = warp_sum(a) / float(D);
      const float dnorm_norm_mean = warp_sum(bsum) / float(D);
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int d = lane + 32 * j;
        float g = 0.f;
        if (d < D) {
          dR[m][j] = (gam[j] * dy[j] - dnorm_mean - xh[j] * dnorm_norm_mean) * rs;
          g = dR[m][j];
          if (drop) g = kept(keep, b0, rowoff + d) ? g * keep_scale : 0.f;
        }
        p_db[j] += g;
        dGs[n * S + d] = g;
      }
    }
    __syncthreads();
    // dF = dG W (the warp's rows) -> shared
    {
      float acc[kRowsPerWarp][TN];
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[m][j] = 0.f;
      for (int o = 0; o < S; o += 4) {
        float wv[4][TN];
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
          for (int j = 0; j < TN; ++j) wv[q][j] = Ws[(o + q) * SW + lane + 32 * j];
#pragma unroll
        for (int m = 0; m < kRowsPerWarp; ++m) {
          const float4 g =
              *reinterpret_cast<const float4*>(dGs + (kRowsPerWarp * w + m) * S + o);
#pragma unroll
          for (int j = 0; j < TN; ++j) {
            float a = acc[m][j];
            a = fmaf(g.x, wv[0][j], a);
            a = fmaf(g.y, wv[1][j], a);
            a = fmaf(g.z, wv[2][j], a);
            a = fmaf(g.w, wv[3][j], a);
            acc[m][j] = a;
          }
        }
      }
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int n = kRowsPerWarp * w + m;
        if (n < K)
#pragma unroll
          for (int j = 0; j < TN; ++j) dFs[n * S + lane + 32 * j] = acc[m][j];
      }
    }
    // the CTA's dW partial += dG^T F: thread owns rows o = lane + 32 j, column quads w, w + NW, ...
    for (int q4 = 4 * w; q4 < S; q4 += 4 * NW) {
      float4 a[TN];
#pragma unroll
      for (int j = 0; j < TN; ++j)
        a[j] = *reinterpret_cast<const float4*>(dWp + (lane + 32 * j) * SW + q4);
      for (int k = 0; k < K; ++k) {
        const float4 fv = *reinterpret_cast<const float4*>(Fs + k * S + q4);  // a broadcast
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const float g = dGs[k * S + lane + 32 * j];
          a[j].x = fmaf(g, fv.x, a[j].x);
          a[j].y = fmaf(g, fv.y, a[j].y);
          a[j].z = fmaf(g, fv.z, a[j].z);
          a[j].w = fmaf(g, fv.w, a[j].w);
        }
      }
#pragma unroll
      for (int j = 0; j < TN; ++j)
        *reinterpret_cast<float4*>(dWp + (lane + 32 * j) * SW + q4) = a[j];
    }
    __syncthreads();
    // rfft of E and of dF; complex-weight gradient partial; dF spectrum times conj(W)
    for (int f = w; f < Kf; f += NW) {
      float er[TN], ei[TN], gr[TN], gi[TN];
#pragma unroll
      for (int j = 0; j < TN; ++j) er[j] = ei[j] = gr[j] = gi[j] = 0.f;
      const float2* t = twf + f * K;
      for (int n = 0; n < K; ++n) {
        const float2 c = t[n];
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const float xv = xs[n * S + lane + 32 * j], gv = dFs[n * S + lane + 32 * j];
          er[j] += c.x * xv;
          ei[j] -= c.y * xv;
          gr[j] += c.x * gv;
          gi[j] -= c.y * gv;
        }
      }
      const float coef = (f == 0 || 2 * f == K) ? 1.f : 2.f;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int d = lane + 32 * j;
        const float fr = er[j] * s, fi = ei[j] * s;
        const float dgr = gr[j] * s * coef, dgi = gi[j] * s * coef;
        dcw[2 * (f * S + d)] += dgr * fr + dgi * fi;
        dcw[2 * (f * S + d) + 1] += dgi * fr - dgr * fi;
        const float wr = d < D ? cw[2 * (f * D + d)] : 0.f;
        const float wi = d < D ? cw[2 * (f * D + d) + 1] : 0.f;
        Gr[f * S + d] = dgr * wr + dgi * wi;
        Gi[f * S + d] = dgi * wr - dgr * wi;
      }
    }
    __syncthreads();
    // adjoint of rfft (coef 1) + the residual's dR -> dE
    {
      float acc[kRowsPerWarp][TN];
      warp_rows_from_spectrum<TN>(acc, Gr, Gi, twa, Kf, K, S, w, lane);
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int n = kRowsPerWarp * w + m;
        if (n < K)
#pragma unroll
          for (int j = 0; j < TN; ++j) {
            const int d = lane + 32 * j;
            if (d < D) dE[e0 + int64_t(n) * D + d] = dR[m][j] + acc[m][j];
          }
      }
    }
    __syncthreads();  // the next block overwrites the tiles, keep, Gr, Gi
  }

  // this CTA's partial row: dW, d complex weight, then the register partials reduced over warps
  float* out = partial + int64_t(blockIdx.x) * fb_partial_size(K, D);
  for (int e = tid; e < D * D; e += blockDim.x) out[e] = dWp[(e / D) * SW + e % D];
  float* out_cw = out + int64_t(D) * D;
  for (int e = tid; e < 2 * Kf * D; e += blockDim.x) {
    const int f = e / (2 * D), d = (e / 2) % D;
    out_cw[e] = dcw[2 * (f * S + d) + (e & 1)];
  }
  float* red = xs;  // [3][NW][S]; the tiles are free now
#pragma unroll
  for (int j = 0; j < TN; ++j) {
    const int d = lane + 32 * j;
    red[(0 * NW + w) * S + d] = p_db[j];
    red[(1 * NW + w) * S + d] = p_lw[j];
    red[(2 * NW + w) * S + d] = p_lb[j];
  }
  __syncthreads();
  float* out_v = out_cw + 2 * Kf * D;
  for (int e = tid; e < 3 * D; e += blockDim.x) {
    const int k = e / D, d = e % D;
    float a = 0.f;
    for (int ww = 0; ww < NW; ++ww) a += red[(k * NW + ww) * S + d];
    out_v[e] = a;
  }
}

// Adds the CTA partial rows in CTA order into the gradients (one thread per gradient element).
__global__ void k_fb_reduce(float* d_dw, float* d_cw, float* d_db, float* d_lw, float* d_lb,
                            const float* partial, int parts, int K, int D) {
  const int64_t PN = fb_partial_size(K, D), nW = int64_t(D) * D, nC = int64_t(K / 2 + 1) * D * 2;
  ADA_GRID_STRIDE(e, PN) {
    float* dst;
    if (e < nW) {
      dst = d_dw + e;
    } else if (e < nW + nC) {
      dst = d_cw + (e - nW);
    } else {
      const int64_t v = e - nW - nC;
      dst = v < D ? d_db + v : v < 2 * D ? d_lw + (v - D) : d_lb + (v - 2 * D);
    }
    float a = *dst;
    for (int c = 0; c < parts; ++c) a += partial[int64_t(c) * PN + e];
    *dst = a;
  }
}

template <class Kern>
unsigned fb_grid(FilterBlockWorkspace& ws, Kern kernel, size_t smem, int threads, int64_t R) {
  ws.allow_smem(reinterpret_cast<const void*>(kernel));
  const size_t per_sm = ws.smem_optin() + 1024;  // an SM holds about the opt-in maximum (+ 1 KB)
  int64_t fit = int64_t(per_sm / (smem + 1024));
  fit = std::min<int64_t>(fit, 2048 / threads);
  fit = std::max<int64_t>(1, std::min<int64_t>(fit, 16));
  return unsigned(std::min<int64_t>(R, fit * ws.sms()));
}

template <int TN>
void launch_fb_fwd(FilterBlockWorkspace& ws, cudaStream_t st, size_t smem, int threads, float* Et,
                   float* F, float* Rr, float* mean, float* rstd, const float* E, const float* cw,
                   const float* Wd, const float* bd, const float* lw, const float* lb,
                   const float* tb, int64_t R, int K, int D, float eps, float p, float keep_scale,
                   float s, uint64_t seed, uint64_t stream) {
  unsigned long long* prof = phase_sums(Clocked::kFilterForward);
  auto* kernel = prof ? k_fb_fwd<TN, true> : k_fb_fwd<TN, false>;
  const unsigned grid = fb_grid(ws, kernel, smem, threads, R);
  kernel<<<grid, threads, smem, st>>>(Et, F, Rr, mean, rstd, E, cw, Wd, bd, lw, lb, tb, R, K, D, eps,
                                      p, keep_scale, s, seed, stream, prof);
  ADA_CUDA_LAUNCHED();
}

template <int TN>
void launch_fb_bwd(FilterBlockWorkspace& ws, cudaStream_t st, size_t smem, int threads, float* dE,
                   float* d_cw, float* d_dw, float* d_db, float* d_lw, float* d_lb,
                   const float* dEt, const float* E, const float* F, const float* Rr,
                   const float* mean, const float* rstd, const float* cw, const float* Wd,
                   const float* lw, const float* tb, int64_t R, int K, int D, float p,
                   float keep_scale, float s, uint64_t seed, uint64_t stream) {
  const unsigned grid = fb_grid(ws, k_fb_bwd<TN>, smem, threads, R);
  const int64_t PN = fb_partial_size(K, D);
  float* part = ws.partials(size_t(grid) * size_t(PN), st);
  k_fb_bwd<TN><<<grid, threads, smem, st>>>(dE, part, dEt, E, F, Rr, mean, rstd, cw, Wd, lw, tb, R,
                                            K, D, p, keep_scale, s, seed, stream);
  ADA_CUDA_LAUNCHED();
  k_fb_reduce<<<grid_for(PN), kThreads, 0, st>>>(d_dw, d_cw, d_db, d_lw, d_lb, part, int(grid), K,
                                                 D);
  ADA_CUDA_LAUNCHED();
}

}  // namespace

FilterBlockWorkspace::~FilterBlockWorkspace() {
  for (auto& kv : tables_) cudaFree(kv.second);
  if (partial_) cudaFree(partial_);
}

const float* FilterBlockWorkspace::tables(int64_t K) {
  auto it = tables_.find(K);
  if (it != tables_.end()) return it->second;
  // As the CPU's DftTables<float> (double angles, rounded to float; sin 0 at DC and Nyquist) and
  // its irfft constants coef * cos * s, coef * sin * s in float.
  const int64_t Kf = K / 2 + 1;
  std::vector<float> h(size_t(6 * Kf * K));
  const double two_pi = 6.283185307179586476925286766559;
  const float s = 1.0f / std::sqrt(float(K));
  for (int64_t f = 0; f < Kf; ++f) {
    const bool real_bin = f == 0 || 2 * f == K;
    const float coef = real_bin ? 1.f : 2.f;
    for (int64_t n = 0; n < K; ++n) {
      const double ang = two_pi * double((f * n) % K) / double(K);
      const float c = float(std::cos(ang)), sn = real_bin ? 0.f : float(std::sin(ang));
      const size_t i = size_t(2 * (f * K + n));
      h[i] = c;
      h[i + 1] = sn;
      h[size_t(2 * Kf * K) + i] = coef * c * s;
      h[size_t(2 * Kf * K) + i + 1] = coef * sn * s;
      h[size_t(4 * Kf * K) + i] = 1.f * c * s;
      h[size_t(4 * Kf * K) + i + 1] = 1.f * sn * s;
    }
  }
  void* d = nullptr;
  ADA_CUDA_CHECK(cudaMalloc(&d, sizeof(float) * h.size()));
  ADA_CUDA_CHECK(cudaMemcpy(d, h.data(), sizeof(float) * h.size(), cudaMemcpyHostToDevice));
  return tables_.emplace(K, static_cast<float*>(d)).first->second;
}

float* FilterBlockWorkspace::partials(size_t n, cudaStream_t stream) {
  if (n > partial_cap_) {
    ADA_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (partial_) ADA_CUDA_CHECK(cudaFree(partial_));
    partial_ = nullptr;
    partial_cap_ = 0;
    void* d = nullptr;
    ADA_CUDA_CHECK(cudaMalloc(&d, sizeof(float) * n));
    partial_ = static_cast<float*>(d);
    partial_cap_ = n;
  }
  return partial_;
}

int FilterBlockWorkspace::sms() {
  if (sms_ == 0) {
    int dev = 0, v = 0;
    ADA_CUDA_CHECK(cudaGetDevice(&dev));
    ADA_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    sms_ = std::max(v, 1);
  }
  return sms_;
}

size_t FilterBlockWorkspace::smem_optin() { return std::max<size_t>(smem_optin_bytes(), 48 * 1024); }

void FilterBlockWorkspace::allow_smem(const void* kernel) {
  if (smem_set_.count(kernel)) return;
  ADA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(smem_optin())));
  smem_set_[kernel] = true;
}

bool filter_block_forward_fused(FilterBlockWorkspace& ws, cudaStream_t st, float* Et, float* F,
                                float* Rr, float* mean, float* rstd, const float* E,
                                const float* cw, const float* dense_w, const float* dense_b,
                                const float* ln_w, const float* ln_b, int64_t R, int64_t K,
                                int64_t D, float eps, float p, uint64_t seed, uint64_t rng_stream) {
  ADA_CHECK(K >= 1 && D >= 1 && R >= 0,
            "filter_block_forward: bad sizes R=" << R << " K=" << K << " D=" << D);
  if (K > kFusedFilterMaxK || D > kFusedFilterMaxD) return false;
  const int TN = int((D + 31) / 32);
  const FbLayout L = fb_layout(int(K), int(D), TN, false);
  const size_t smem = sizeof(float) * size_t(L.total);
  if (smem > ws.smem_optin()) return false;
  if (R == 0) return true;
  const float* tb = ws.tables(K);
  const float keep_scale = p > 0.f ? 1.0f / (1.0f - p) : 1.0f;  // the CPU's T(1) / (T(1) - T(p))
  const float s = 1.0f / std::sqrt(float(K));
  const int threads = 32 * L.NW;
  auto* launch = TN == 1 ? &launch_fb_fwd<1> : TN == 2 ? &launch_fb_fwd<2> : TN == 3 ? &launch_fb_fwd<3>
                                                                                  : &launch_fb_fwd<4>;
  launch(ws, st, smem, threads, Et, F, Rr, mean, rstd, E, cw, dense_w, dense_b, ln_w, ln_b, tb, R,
         int(K), int(D), eps, p, keep_scale, s, seed, rng_stream);
  return true;
}

bool filter_block_backward_fused(FilterBlockWorkspace& ws, cudaStream_t st, float* dE,
                                 float* d_cw, float* d_dense_w, float* d_dense_b, float* d_ln_w,
                                 float* d_ln_b, const float* dEt, const float* E, const float* F,
                                 const float* Rr, const float* mean, const float* rstd,
                                 const float* cw, const float* dense_w, const float* ln_w,
                                 int64_t R, int64_t K, int64_t D, float p, uint64_t seed,
                                 uint64_t rng_stream) {
  ADA_CHECK(K >= 1 && D >= 1 && R >= 0,
            "filter_block_backward: bad sizes R=" << R << " K=" << K << " D=" << D);
  if (K > kFusedFilterMaxK || D > kFusedFilterMaxD) return false;
  const int TN = int((D + 31) / 32);
  const FbLayout L = fb_layout(int(K), int(D), TN, true);
  const size_t smem = sizeof(float) * size_t(L.total);
  if (smem > ws.smem_optin()) return false;
  if (R == 0) return true;
  const float* tb = ws.tables(K);
  const float keep_scale = p > 0.f ? 1.0f / (1.0f - p) : 1.0f;
  const float s = 1.0f / std::sqrt(float(K));
  const int threads = 32 * L.NW;
  auto* launch = TN == 1 ? &launch_fb_bwd<1> : TN == 2 ? &launch_fb_bwd<2> : TN == 3 ? &launch_fb_bwd<3>
                                                                                  : &launch_fb_bwd<4>;
  launch(ws, st, smem, threads, dE, d_cw, d_dense_w, d_dense_b, d_ln_w, d_ln_b, dEt, E, F, Rr, mean,
         rstd, cw, dense_w, ln_w, tb, R, int(K), int(D), p, keep_scale, s, seed, rng_stream);
  return true;
}

}  // namespace cuda
}  // namespace ada
