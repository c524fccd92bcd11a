// Fused batched score + top-k (see topk.cuh) and the GPU shard searcher of topk.hpp.
#include "kernels/topk.cuh"
#include "kernels/phase_clock.cuh"
#include "kernels/warp_mma.cuh"

#include <mma.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "ada/check.hpp"
#include "ada/topk.hpp"

#define ADA_CUDA_OK(expr)                                                                               \
  do {                                                                                                  \
    const cudaError_t ada_err_ = (expr);                                                                \
    ADA_CHECK(ada_err_ == cudaSuccess, "CUDA: " #expr " failed: " << cudaGetErrorString(ada_err_)); \
  } while (0)

namespace ada {
namespace cuda {
namespace {

constexpr int kThreads = 256;        // kernel 1 blocks
constexpr int kMaxSelectThreads = 1024;  // kernel 2 blocks: 1024 threads for small batches, else 256
constexpr int kNoId = 0x7fffffff;    // sentinel id, after every real id
constexpr int kMinGroups = 2048, kMaxGroups = 16384;  // groups per query (kernel 2 holds a row's bounds in shared memory)
constexpr size_t kWorkspaceLimit = size_t(1) << 30;  // bounds per call; larger batches go in slices

__device__ __forceinline__ float order_key(float s) { return s == s ? s : -INFINITY; }

// (sa, a) before (sb, b): higher score, then smaller id; NaN as -inf (topk.hpp).
__device__ __forceinline__ bool before(float sa, int a, float sb, int b) {
  const float ka = order_key(sa), kb = order_key(sb);
  return ka > kb || (ka == kb && a < b);
}

// A NaN-free score as an unsigned key with the same order (-0 and +0 are one key, as they compare equal).
__device__ __forceinline__ uint32_t ordered_bits(float key) {
  const uint32_t u = __float_as_uint(key + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ bool is_excluded(const int32_t* __restrict__ ids, int64_t b, int64_t e, int x) {
  while (b < e) {
    const int64_t m = (b + e) >> 1;
    const int v = ids[m];
    if (v == x) return true;
    if (v < x)
      b = m + 1;
    else
      e = m;
  }
  return false;
}

// Sorts n (a power of two) entries best first; every thread of the block takes part. Ends with a
// barrier.
__device__ void bitonic_sort(float* s, int* id, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool best_first = (lo & size) == 0;
        const float sl = s[lo], sh = s[hi];
        const int il = id[lo], ih = id[hi];
        const bool swap = best_first ? before(sh, ih, sl, il) : before(sl, il, sh, ih);
        if (swap) {
          s[lo] = sh;
          s[hi] = sl;
          id[lo] = ih;
          id[hi] = il;
        }
      }
      __syncthreads();
    }
  }
}

// A candidate buffer in shared memory with a running threshold (the k-th best kept so far).
struct Buffer {
  float* s;      // [cap]
  int* id;       // [cap]
  int* cnt;      // appended so far
  float* thr_s;  // entries must come before (thr_s, thr_id) to be appended
  int* thr_id;
  int cap;
};

__host__ __device__ constexpr size_t buffer_bytes(int cap) {
  return size_t(cap) * (sizeof(float) + sizeof(int)) + 3 * sizeof(int);
}

__device__ Buffer carve(unsigned char* base, int cap) {
  Buffer bf;
  bf.cap = cap;
  bf.s = reinterpret_cast<float*>(base);
  bf.id = reinterpret_cast<int*>(bf.s + cap);
  bf.cnt = bf.id + cap;
  bf.thr_s = reinterpret_cast<float*>(bf.cnt + 1);
  bf.thr_id = reinterpret_cast<int*>(bf.thr_s + 1);
  return bf;
}

// Sorts the buffer (its first power of two >= count entries) and keeps its best min(count, k); from k
// kept on, the k-th becomes the threshold. Must be called by every thread, right after a barrier
// that follows the last append. Ends with a barrier.
__device__ void compact(const Buffer& bf, int k) {
  const int c = *bf.cnt;
  int n = 1;
  while (n < c) n <<= 1;
  for (int i = c + threadIdx.x; i < n; i += blockDim.x) {
    bf.s[i] = -INFINITY;
    bf.id[i] = kNoId;
  }
  __syncthreads();
  bitonic_sort(bf.s, bf.id, n);  // its barriers also order every thread's read of cnt above
  if (threadIdx.x == 0) {
    const int kept = c < k ? c : k;
    *bf.cnt = kept;
    if (kept == k) {
      *bf.thr_s = bf.s[k - 1];
      *bf.thr_id = bf.id[k - 1];
    }
  }
  __syncthreads();
}

// After a round of at most `per_thread` appends per thread: compacts when the next round might not
// fit. Every thread reads cnt here and takes the same branch; the barrier on both paths keeps the
// next round's appends after every thread's read.
__device__ __forceinline__ void end_round(const Buffer& bf, int k, int per_thread) {
  if (*bf.cnt > bf.cap - per_thread * int(blockDim.x))
    compact(bf, k);
  else
    __syncthreads();
}

__device__ __forceinline__ void offer(const Buffer& bf, float s, int id) {
  if (before(s, id, *bf.thr_s, *bf.thr_id)) {
    const int pos = atomicAdd(bf.cnt, 1);
    bf.s[pos] = s;
    bf.id[pos] = id;
  }
}

// The best item of a group of items and a bound on the rest: s1 and s2 are order keys (NaN as -inf),
// s1 >= s2; (s1, id1) is the group's best by the order of topk.hpp, s2 the highest key of the others.
struct Top2 {
  float s1, s2;
  int id1;
};

__device__ __forceinline__ Top2 top2_empty() { return Top2{-INFINITY, -INFINITY, kNoId}; }

__device__ __forceinline__ void top2_add(Top2& t, float s, int id) {
  const float key = order_key(s);
  if (key > t.s1 || (key == t.s1 && id < t.id1)) {
    t.s2 = t.s1;
    t.s1 = key;
    t.id1 = id;
  } else {
    t.s2 = fmaxf(t.s2, key);
  }
}

// a := the Top2 of a's and b's items together (symmetric, so both lanes of a shuffle agree).
__device__ __forceinline__ void top2_merge(Top2& a, const Top2& b) {
  if (b.s1 > a.s1 || (b.s1 == a.s1 && b.id1 < a.id1)) {
    a.s2 = fmaxf(a.s1, b.s2);
    a.s1 = b.s1;
    a.id1 = b.id1;
  } else {
    a.s2 = fmaxf(a.s2, b.s1);
  }
}

// Merges the Top2s of each aligned segment of `seg` lanes (a power of two <= 32); all 32 lanes call.
__device__ __forceinline__ void top2_reduce(Top2& t, int seg) {
  for (int o = 1; o < seg; o <<= 1) {
    Top2 u;
    u.s1 = __shfl_xor_sync(0xffffffffu, t.s1, o);
    u.s2 = __shfl_xor_sync(0xffffffffu, t.s2, o);
    u.id1 = __shfl_xor_sync(0xffffffffu, t.id1, o);
    top2_merge(t, u);
  }
}

__device__ __forceinline__ int warp_sum_int(int v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Per (query, group) bounds written by kernel 1, [B][G] each.
// With approximate scores (the tensor-core kernel) also, per group, the largest item norm and |bias|,
// [G] each, from which kernel 2 bounds the approximation error.
struct Bounds {
  float* s1;
  int32_t* id1;
  float* s2;
  float* norm;  // null when the scores are exact
  float* absb;
};

__device__ __forceinline__ void write_bounds(const Bounds& o, int64_t row, int64_t G, int64_t group, const Top2& t) {
  const int64_t at = row * G + group;
  o.s1[at] = t.s1;
  o.id1[at] = t.id1;
  o.s2[at] = t.s2;
}

// Kernel 1, register-tiled (batches of 16 queries or more). Block (x = query group of QB = 16 * QPT
// queries, y = item chunk). Each 128-item tile is staged transposed in shared memory; thread
// (tq, ti) computes the scores of queries tq*QPT.. x items ti*8.. (fmaf over d in order from 0, then
// + bias: the CPU's arithmetic) and folds them into a Top2 per query. The lanes of a group (g / 8 of
// them, g <= 128) merge by shuffles at the end of the tile; larger groups carry the Top2 over tiles.
constexpr int kTiledItems = 128;
constexpr int kTiledLd = kTiledItems + 4;  // padded row: 528 bytes, 16-byte aligned

template <int QPT>
__global__ void __launch_bounds__(kThreads)
bounds_tiled(const float* __restrict__ U, int B, int D, const float* __restrict__ E, const float* __restrict__ bias,
             int64_t lo, int64_t n, int64_t chunk_items, int g, int64_t G, Bounds out) {
  constexpr int QB = 16 * QPT;
  extern __shared__ __align__(16) unsigned char smem[];
  float* qT = reinterpret_cast<float*>(smem);  // [D][QB]
  float* eT = qT + D * QB;                     // [D][kTiledLd]

  const int q0 = blockIdx.x * QB;
  const int nq = min(QB, B - q0);
  const int64_t c_begin = int64_t(blockIdx.y) * chunk_items;
  const int64_t c_end = min(n, c_begin + chunk_items);

  for (int i = threadIdx.x; i < QB * D; i += blockDim.x) {
    const int q = i / D, d = i - q * D;
    qT[d * QB + q] = q < nq ? U[int64_t(q0 + q) * D + d] : 0.0f;
  }
  const int tq = threadIdx.x / 16;  // query group: queries tq*QPT .. +QPT
  const int ti = threadIdx.x % 16;  // item group: items ti*8 .. +8 of the tile
  const int seg = g / 8 < 16 ? g / 8 : 16;
  Top2 run[QPT];
#pragma unroll
  for (int j = 0; j < QPT; ++j) run[j] = top2_empty();

  for (int64_t t0 = c_begin; t0 < c_end; t0 += kTiledItems) {
    const int tile_n = c_end - t0 < kTiledItems ? int(c_end - t0) : kTiledItems;
    const float* src = E + t0 * D;
    for (int i = threadIdx.x; i < kTiledItems * D; i += blockDim.x) {
      const int r = i / D, d = i - r * D;
      eT[d * kTiledLd + r] = r < tile_n ? src[i] : 0.0f;
    }
    __syncthreads();
    float acc[QPT][8];
#pragma unroll
    for (int j = 0; j < QPT; ++j)
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[j][i] = 0.0f;
    for (int d = 0; d < D; ++d) {
      const float* qd = qT + d * QB + tq * QPT;
      float qv[QPT];
      if constexpr (QPT == 4) {
        const float4 v = *reinterpret_cast<const float4*>(qd);
        qv[0] = v.x;
        qv[1] = v.y;
        qv[2] = v.z;
        qv[3] = v.w;
      } else if constexpr (QPT == 2) {
        const float2 v = *reinterpret_cast<const float2*>(qd);
        qv[0] = v.x;
        qv[1] = v.y;
      } else {
#pragma unroll
        for (int j = 0; j < QPT; ++j) qv[j] = qd[j];
      }
      const float4 e0 = *reinterpret_cast<const float4*>(eT + d * kTiledLd + ti * 8);
      const float4 e1 = *reinterpret_cast<const float4*>(eT + d * kTiledLd + ti * 8 + 4);
      const float ev[8] = {e0.x, e0.y, e0.z, e0.w, e1.x, e1.y, e1.z, e1.w};
#pragma unroll
      for (int j = 0; j < QPT; ++j)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i] = fmaf(qv[j], ev[i], acc[j][i]);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = ti * 8 + i;
      if (r < tile_n) {
        const int64_t local = t0 + r;
        const float b = bias ? bias[local] : -0.0f;  // x + -0 == x, -0 included (the CPU adds nothing)
        const int gid = int(lo + local);
#pragma unroll
        for (int j = 0; j < QPT; ++j) top2_add(run[j], acc[j][i] + b, gid);
      }
    }
    // the end of a group: every tile for g <= 128; for larger groups their last tile (chunks hold
    // whole groups) or the chunk's last. The same for every thread of the block.
    if (g <= kTiledItems || (t0 + kTiledItems) % g == 0 || t0 + kTiledItems >= c_end) {
#pragma unroll
      for (int j = 0; j < QPT; ++j) top2_reduce(run[j], seg);
      const int64_t group = (t0 + ti * 8) / g;
      if (ti % seg == 0 && group < G) {
#pragma unroll
        for (int j = 0; j < QPT; ++j)
          if (tq * QPT + j < nq) write_bounds(out, q0 + tq * QPT + j, G, group, run[j]);
      }
#pragma unroll
      for (int j = 0; j < QPT; ++j) run[j] = top2_empty();
    }
    __syncthreads();  // before the next tile overwrites eT
  }
}

// The two warp kernels (bounds_warp, bounds_staged) share their ends. First the block's QPT queries
// [q0, q0 + QPT) into qs [QPT][D], zeros past the batch, then a block barrier; returns how many
// are in the batch.
template <int QPT>
__device__ __forceinline__ int stage_queries(float* qs, const float* __restrict__ U, int B, int D, int q0) {
  const int nq = min(QPT, B - q0);
  for (int i = threadIdx.x; i < QPT * D; i += blockDim.x) {
    const int q = i / D;
    qs[i] = q < nq ? U[int64_t(q0 + q) * D + (i - q * D)] : 0.0f;
  }
  __syncthreads();
  return nq;
}

// Last, the lanes of each group in the warp's span (from `start`: min(g, 32) lanes a group) merge
// their Top2s by shuffles, and the group's first lane writes them for the queries in the batch.
template <int QPT>
__device__ __forceinline__ void write_span_bounds(const Bounds& out, Top2 (&run)[QPT], int g, int64_t G, int lane,
                                                  int64_t start, int64_t n, int q0, int nq) {
  const int seg = g < 32 ? g : 32;
#pragma unroll
  for (int j = 0; j < QPT; ++j) top2_reduce(run[j], seg);
  if (lane % seg == 0 && start + lane < n) {
    const int64_t group = (start + lane) / g;
#pragma unroll
    for (int j = 0; j < QPT; ++j)
      if (j < nq) write_bounds(out, q0 + j, G, group, run[j]);
  }
}

// Kernel 1 for small batches: each warp takes a span of max(g, 32) items and QPT queries; lane l
// scores items l, l + 32, ... of the span, reading each row straight from global memory (float4
// loads when D % 4 == 0), with the same arithmetic; the lanes of a group (min(g, 32) of them) merge
// by shuffles. Block (x = query group, y = spans).
template <int QPT, bool kVec4>
__global__ void __launch_bounds__(kThreads)
bounds_warp(const float* __restrict__ U, int B, int D, const float* __restrict__ E, const float* __restrict__ bias,
            int64_t lo, int64_t n, int g, int64_t G, Bounds out) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* qs = reinterpret_cast<float*>(smem);  // [QPT][D]
  const int q0 = blockIdx.x * QPT;
  const int nq = stage_queries<QPT>(qs, U, B, D, q0);
  const int lane = threadIdx.x & 31;
  const int64_t span = g > 32 ? g : 32;
  const int64_t start = (int64_t(blockIdx.y) * (kThreads / 32) + threadIdx.x / 32) * span;
  if (start >= n) return;  // the whole warp; no barrier follows
  Top2 run[QPT];
#pragma unroll
  for (int j = 0; j < QPT; ++j) run[j] = top2_empty();
  const int64_t end = min(n, start + span);
  for (int64_t item = start + lane; item < end; item += 32) {
    const float* row = E + item * D;
    float acc[QPT];
#pragma unroll
    for (int j = 0; j < QPT; ++j) acc[j] = 0.0f;
    if constexpr (kVec4) {
#pragma unroll 4
      for (int d = 0; d < D; d += 4) {
        const float4 e = __ldg(reinterpret_cast<const float4*>(row + d));
#pragma unroll
        for (int j = 0; j < QPT; ++j) {
          const float* q = qs + j * D + d;
          acc[j] = fmaf(q[0], e.x, acc[j]);
          acc[j] = fmaf(q[1], e.y, acc[j]);
          acc[j] = fmaf(q[2], e.z, acc[j]);
          acc[j] = fmaf(q[3], e.w, acc[j]);
        }
      }
    } else {
      for (int d = 0; d < D; ++d) {
        const float e = __ldg(row + d);
#pragma unroll
        for (int j = 0; j < QPT; ++j) acc[j] = fmaf(qs[j * D + d], e, acc[j]);
      }
    }
    const float b = bias ? __ldg(bias + item) : -0.0f;  // x + -0 == x bit for bit
    const int gid = int(lo + item);
#pragma unroll
    for (int j = 0; j < QPT; ++j) top2_add(run[j], acc[j] + b, gid);
  }
  write_span_bounds<QPT>(out, run, g, G, lane, start, n, q0, nq);
}

// Kernel 1 for small batches with D = 32 or 64: the warp kernel's work and arithmetic, with the
// table read coalesced. Each warp stages 32 rows at a time in its own part of shared memory (rows
// padded to D + 4 floats: the lanes of a quarter-warp then read 8 different 16-byte bank groups)
// from 32 consecutive float4 loads per instruction, and loads the next 32 rows into registers while
// its lanes score the staged ones (lane l: row l, fmaf over d in order from 0, then + bias).
constexpr int kStageRows = 32;

template <int D>
constexpr size_t stage_floats() {
  return size_t(kThreads / 32) * kStageRows * (D + 4);
}

template <int QPT, int D>
__global__ void __launch_bounds__(kThreads)
bounds_staged(const float* __restrict__ U, int B, int /*D, the template's*/, const float* __restrict__ E,
              const float* __restrict__ bias, int64_t lo, int64_t n, int g, int64_t G, Bounds out) {
  static_assert(D % 4 == 0 && (kStageRows * D / 4) % 32 == 0, "whole float4 loads per lane");
  constexpr int kLd = D + 4, kVecs = D / 4, kLoads = kStageRows * kVecs / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  float* qs = reinterpret_cast<float*>(smem);  // [QPT][D]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* tile = qs + QPT * D + warp * kStageRows * kLd;  // [32][kLd], this warp's
  const int q0 = blockIdx.x * QPT;
  const int nq = stage_queries<QPT>(qs, U, B, D, q0);
  const int64_t span = g > 32 ? g : 32;
  const int64_t start = (int64_t(blockIdx.y) * (kThreads / 32) + warp) * span;
  if (start >= n) return;  // the whole warp; no block barrier follows
  Top2 run[QPT];
#pragma unroll
  for (int j = 0; j < QPT; ++j) run[j] = top2_empty();
  const int64_t end = min(n, start + span);
  // float4 number lane + 32 i of a stage: row (lane + 32 i) / kVecs, column ((lane + 32 i) % kVecs) * 4
  float4 buf[kLoads];
  auto load = [&](int64_t t0) {
    const int rows = end - t0 < kStageRows ? int(end - t0) : kStageRows;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int j = lane + 32 * i, r = j / kVecs, c = (j % kVecs) * 4;
      buf[i] = r < rows ? __ldg(reinterpret_cast<const float4*>(E + (t0 + r) * D + c)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  load(start);
  for (int64_t t0 = start; t0 < end; t0 += kStageRows) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int j = lane + 32 * i, r = j / kVecs, c = (j % kVecs) * 4;
      *reinterpret_cast<float4*>(tile + r * kLd + c) = buf[i];
    }
    __syncwarp();
    if (t0 + kStageRows < end) load(t0 + kStageRows);  // in flight while this stage is scored
    const int64_t item = t0 + lane;
    if (item < end) {
      const float* row = tile + lane * kLd;
      float acc[QPT];
#pragma unroll
      for (int j = 0; j < QPT; ++j) acc[j] = 0.0f;
#pragma unroll 4
      for (int d = 0; d < D; d += 4) {
        const float4 e = *reinterpret_cast<const float4*>(row + d);
#pragma unroll
        for (int j = 0; j < QPT; ++j) {
          const float4 q = *reinterpret_cast<const float4*>(qs + j * D + d);
          acc[j] = fmaf(q.x, e.x, acc[j]);
          acc[j] = fmaf(q.y, e.y, acc[j]);
          acc[j] = fmaf(q.z, e.z, acc[j]);
          acc[j] = fmaf(q.w, e.w, acc[j]);
        }
      }
      const float b = bias ? __ldg(bias + item) : -0.0f;  // x + -0 == x bit for bit
      const int gid = int(lo + item);
#pragma unroll
      for (int j = 0; j < QPT; ++j) top2_add(run[j], acc[j] + b, gid);
    }
    __syncwarp();  // the stage is read before the next one overwrites it
  }
  write_span_bounds<QPT>(out, run, g, G, lane, start, n, q0, nq);
}

// Kernel 1 on tensor cores (batches of 64 queries or more, D = 32, 64 or 128): TF32
// products with FP32 accumulation (wmma m16n16k8), so the bounds are approximate: for each score
// |approx - exact| <= 2^-8 (|u| |e| + |b|) (TF32 rounds each operand to 11 significant bits:
// product error <= 2^-10 |u_d e_d|; both FP32 sums add less than 2^-16 sum |u_d e_d| for D <= 128
// (the tensor cores' accumulation order and rounding are not documented: assumed FP32-like); then
// Cauchy-Schwarz; |b| covers the rounding of "+ b"), and kernel 2 widens every bound by that
// margin and rescores exactly whatever it then cannot rule out. Block (x = 64 queries, y = item
// chunk): each 128-item tile is staged (rounded to TF32) in shared memory; warp w multiplies
// queries (w % 4) * 16.. by items (w / 4) * 64..; the products go through shared memory to thread
// t, which folds query t / 4's items (t % 4) * 32.. into Top2s (visiting them rotated by t % 4 so
// the lanes of a warp read 32 different banks). With kShare the products reuse the item tile's
// shared memory (two more block barriers per tile: 53 instead of 87 KB at D = 64, so 3 blocks per
// SM instead of 2, where 80 registers allow 3); topk_tc_kernel chooses, the lists are the same.
constexpr int kTcQueries = 64;
constexpr int kTcLdc = kTiledItems + 4;  // products [64][132]

// Floats of the item tile [128][D + 4] and the products [64][kTcLdc], apart or sharing memory.
__host__ __device__ constexpr int tc_region_floats(int D, bool share) {
  return share ? (kTiledItems * (D + 4) > kTcQueries * kTcLdc ? kTiledItems * (D + 4) : kTcQueries * kTcLdc)
               : kTiledItems * (D + 4) + kTcQueries * kTcLdc;
}

// An operand for the tensor cores: rounded to TF32, subnormals flushed to 0 (tc_margin covers both).
__device__ __forceinline__ float tf32(float x) {
  return fabsf(x) < 0x1p-126f ? 0.0f : nvcuda::wmma::__float_to_tf32(x);
}

template <int D, bool kShare>
__global__ void __launch_bounds__(kThreads)
bounds_tc(const float* __restrict__ U, int B, const float* __restrict__ E, const float* __restrict__ bias,
          int64_t lo, int64_t n, int64_t chunk_items, int g, int64_t G, Bounds out) {
  namespace wmma = nvcuda::wmma;
  static_assert(D % 8 == 0 && D <= 128, "tensor-core bounds: D a multiple of 8 up to 128");
  constexpr int ld = D + 4;   // 16-byte multiple; 16-row steps stay 32-byte aligned
  constexpr int NV = D / 4;   // float4 per row
  extern __shared__ __align__(128) unsigned char smem[];
  float* Qs = reinterpret_cast<float*>(smem);   // [64][ld]
  float* Es = Qs + kTcQueries * ld;             // [128][ld]
  float* Cs = kShare ? Es : Es + kTiledItems * ld;  // [64][kTcLdc]
  float* Bs2 = Es + tc_region_floats(D, kShare);    // [2][128]: the tile's biases (by tile parity: a
                                                    //  thread stages the next while others still read these)

  const int q0 = blockIdx.x * kTcQueries;
  const int nq = min(kTcQueries, B - q0);
  const int64_t c_begin = int64_t(blockIdx.y) * chunk_items;
  const int64_t c_end = min(n, c_begin + chunk_items);
  for (int i = threadIdx.x; i < kTcQueries * NV; i += blockDim.x) {
    const int q = i / NV, c = i % NV;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (q < nq) v = __ldg(reinterpret_cast<const float4*>(U + int64_t(q0 + q) * D) + c);
    *reinterpret_cast<float4*>(Qs + q * ld + 4 * c) = make_float4(tf32(v.x), tf32(v.y), tf32(v.z), tf32(v.w));
  }
  const int warp = threadIdx.x / 32;
  const int wq = (warp % 4) * 16, wn = (warp / 4) * 64;
  const int eq = threadIdx.x / 4, es = (threadIdx.x % 4) * 32, rot = threadIdx.x % 4;
  const int h = g < 32 ? g : 32;         // a thread's 32 items hold 32 / h groups (g <= 32) or part of one
  const int seg = g >= 128 ? 4 : (g >= 64 ? 2 : 1);  // lanes per group for g >= 64
  Top2 run = top2_empty();

  for (int64_t t0 = c_begin; t0 < c_end; t0 += kTiledItems) {
    const int tile_n = c_end - t0 < kTiledItems ? int(c_end - t0) : kTiledItems;
    const float4* src = reinterpret_cast<const float4*>(E + t0 * D);
    if (kShare && t0 != c_begin) __syncthreads();  // the last tile's products (in Es) are all read
    for (int i = threadIdx.x; i < kTiledItems * NV; i += blockDim.x) {
      const int r = i / NV, c = i % NV;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < tile_n) v = __ldg(src + i);
      *reinterpret_cast<float4*>(Es + r * ld + 4 * c) = make_float4(tf32(v.x), tf32(v.y), tf32(v.z), tf32(v.w));
    }
    float* Bs = Bs2 + (((t0 - c_begin) / kTiledItems) & 1) * kTiledItems;
    if (threadIdx.x < kTiledItems)  // no bias: -0, since x + -0 == x bit for bit
      Bs[threadIdx.x] = !bias ? -0.0f : int(threadIdx.x) < tile_n ? bias[t0 + threadIdx.x] : 0.0f;
    __syncthreads();  // (also every thread is done with the tile before last's biases and the last's Cs)
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[j], 0.0f);
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
      wmma::load_matrix_sync(a, Qs + wq * ld + k0, ld);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b;
        wmma::load_matrix_sync(b, Es + (wn + 16 * j) * ld + k0, ld);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
    if (kShare) __syncthreads();  // every warp's products are done reading Es
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::store_matrix_sync(Cs + wq * kTcLdc + wn + 16 * j, acc[j], kTcLdc, wmma::mem_row_major);
    __syncthreads();

    const float* crow = Cs + eq * kTcLdc;
    const int id0 = int(lo + t0);
    for (int sub = 0; sub < 32 / h; ++sub) {
      Top2 t = top2_empty();
      const int base = es + sub * h;
      if (base + h <= tile_n) {
        for (int i = 0; i < h; ++i) {
          const int r = base + ((i + rot) & (h - 1));
          top2_add(t, crow[r] + Bs[r], id0 + r);
        }
      } else {
        for (int i = 0; i < h; ++i) {
          const int r = base + ((i + rot) & (h - 1));
          if (r < tile_n) top2_add(t, crow[r] + Bs[r], id0 + r);
        }
      }
      if (g <= 32) {  // a whole group
        if (eq < nq && base < tile_n) write_bounds(out, q0 + eq, G, (t0 + base) / g, t);
      } else {
        top2_merge(run, t);
      }
    }
    if (g > 32 && (g <= kTiledItems || (t0 + kTiledItems) % g == 0 || t0 + kTiledItems >= c_end)) {
      top2_reduce(run, seg);  // the lanes t % 4 of one query are adjacent
      const int64_t group = (t0 + es) / g;
      if ((threadIdx.x % 4) % seg == 0 && eq < nq && group < G) write_bounds(out, q0 + eq, G, group, run);
      run = top2_empty();
    }
  }
}

// Kernel 1 on tensor cores through mma.sync (opt-in until measured: topk_tc_kernel(2)), the same
// bounds and error margin as bounds_tc, without its trip through shared memory: the products stay
// in registers and are folded into Top2s there.
//  - A block has 4 warps; warp w owns queries 16 MT w.. (MT m16 tiles: 2 at D <= 64, 1 at D = 128).
//    Their TF32-rounded coordinates are loaded once, as mma A fragments, into registers.
//  - Item tiles of 64 rows stream through a ring of kMmaStages buffers in shared memory by cp.async
//    (row stride D + 16 floats: the float4 fragment loads below hit 32 different banks per phase),
//    one block barrier per tile. The item coordinates go to the tensor cores as FP32 bits; however
//    the hardware reads their low 13 bits (rounding or truncating), each is off by less than 2^-10
//    of itself, and with the queries rounded each product by less than 1.5 2^-10 |u_d e_d|: inside
//    tc_margin's 2^-8 (|u| |e| + |b|) with the sums' error, as for bounds_tc.
//  - The k order is permuted (dot products do not care, A and B agree): in k-steps 2p and 2p + 1,
//    lane t's k-slots t and t + 4 hold d = 16p + 4t + (0, 1) and (2, 3), so a lane's B fragments
//    for both steps are one float4 of the item row, and its A fragments one float4 of each query.
//  - Accumulator lane (g, t) holds queries g and g + 8 of each m16 tile x items 2t, 2t + 1 of each
//    8-item n-tile; it folds them (+ bias) into a running Top2 per query, and at the end of each
//    group the 4 lanes of a quad merge theirs by shuffles (groups are 8 items or more, whole n-tiles).
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = 32 * kMmaWarps;
constexpr int kMmaTile = 64;   // items per stage
constexpr int kMmaStages = 3;  // tiles in flight: one scored, two loading

__host__ __device__ constexpr int mma_m_tiles(int D) { return D <= 64 ? 2 : 1; }
__host__ __device__ constexpr int mma_queries(int D, int mt) { return kMmaWarps * 16 * mt; }
__host__ __device__ constexpr size_t mma_smem(int D) { return size_t(kMmaStages) * kMmaTile * (D + 16) * sizeof(float); }

// An FP32 value rounded to TF32 (as bounds_tc's operands), as the bits an mma fragment takes.
__device__ __forceinline__ uint32_t tf32_bits(float x) { return __float_as_uint(tf32(x)); }

template <int D, int MT>
__global__ void __launch_bounds__(kMmaThreads)
bounds_mma(const float* __restrict__ U, int B, const float* __restrict__ E, const float* __restrict__ bias,
           int64_t lo, int64_t n, int64_t chunk_items, int g, int64_t G, Bounds out) {
  static_assert(D % 16 == 0 && D <= 128, "mma bounds: D a multiple of 16 up to 128");
  constexpr int ld = D + 16, KP = D / 16, CPR = D / 4;
  constexpr int QW = 16 * MT;  // queries per warp
  extern __shared__ __align__(16) unsigned char smem[];
  float* Es = reinterpret_cast<float*>(smem);  // [kMmaStages][kMmaTile][ld]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, tq = lane % 4;
  const int qw = blockIdx.x * (kMmaWarps * QW) + warp * QW;  // the warp's first query
  const int64_t c_begin = int64_t(blockIdx.y) * chunk_items;
  const int64_t c_end = min(n, c_begin + chunk_items);
  const int tiles = int((c_end - c_begin + kMmaTile - 1) / kMmaTile);

  // Tile i of the chunk into ring slot i % kMmaStages (rows past the chunk zero-filled); every
  // thread commits a group, empty past the last tile, so that the wait below counts the same.
  auto stage = [&](int i) {
    if (i < tiles) {
      const int64_t t0 = c_begin + int64_t(i) * kMmaTile;
      float* dst = Es + (i % kMmaStages) * (kMmaTile * ld);
      for (int j = threadIdx.x; j < kMmaTile * CPR; j += kMmaThreads) {
        const int r = j / CPR, c = j % CPR;
        const bool in = t0 + r < c_end;
        ptx::cp_async16(dst + r * ld + 4 * c, in ? E + (t0 + r) * D + 4 * c : E, in ? 16 : 0);
      }
    }
    ptx::cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < kMmaStages - 1; ++i) stage(i);

  // The warp's queries as A fragments: a[m][s] for m16 tile m and k-step s (see above).
  uint32_t a[MT][2 * KP][4];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int qa = qw + 16 * m + gq, qb = qa + 8;
#pragma unroll
    for (int p = 0; p < KP; ++p) {
      const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      const float4 ua = qa < B ? __ldg(reinterpret_cast<const float4*>(U + int64_t(qa) * D + 16 * p + 4 * tq)) : z;
      const float4 ub = qb < B ? __ldg(reinterpret_cast<const float4*>(U + int64_t(qb) * D + 16 * p + 4 * tq)) : z;
      a[m][2 * p][0] = tf32_bits(ua.x);
      a[m][2 * p][1] = tf32_bits(ub.x);
      a[m][2 * p][2] = tf32_bits(ua.y);
      a[m][2 * p][3] = tf32_bits(ub.y);
      a[m][2 * p + 1][0] = tf32_bits(ua.z);
      a[m][2 * p + 1][1] = tf32_bits(ub.z);
      a[m][2 * p + 1][2] = tf32_bits(ua.w);
      a[m][2 * p + 1][3] = tf32_bits(ub.w);
    }
  }
  Top2 run[MT][2];  // [m16 tile][query g, g + 8]
#pragma unroll
  for (int m = 0; m < MT; ++m) run[m][0] = run[m][1] = top2_empty();
  const bool active = qw < B;  // warp-uniform: a warp without queries only stages and waits

  for (int i = 0; i < tiles; ++i) {
    ptx::cp_async_wait<kMmaStages - 2>();  // this thread's copies of tile i have landed
    __syncthreads();  // everyone's have; and every warp is done with tile i - 1, whose slot is next
    stage(i + kMmaStages - 1);
    if (!active) continue;
    const float* Et = Es + (i % kMmaStages) * (kMmaTile * ld);
    const int64_t t0 = c_begin + int64_t(i) * kMmaTile;
    const int tile_n = c_end - t0 < kMmaTile ? int(c_end - t0) : kMmaTile;
#pragma unroll
    for (int j = 0; j < kMmaTile / 8; j += 2) {  // two n-tiles at a time: four independent chains
      if (8 * j >= tile_n) break;
      float acc[MT][2][4];
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[m][h][r] = 0.0f;
#pragma unroll
      for (int p = 0; p < KP; ++p) {
        const float4 v0 = *reinterpret_cast<const float4*>(Et + (8 * j + gq) * ld + 16 * p + 4 * tq);
        const float4 v1 = *reinterpret_cast<const float4*>(Et + (8 * j + 8 + gq) * ld + 16 * p + 4 * tq);
        const uint32_t b00[2] = {__float_as_uint(v0.x), __float_as_uint(v0.y)};
        const uint32_t b01[2] = {__float_as_uint(v0.z), __float_as_uint(v0.w)};
        const uint32_t b10[2] = {__float_as_uint(v1.x), __float_as_uint(v1.y)};
        const uint32_t b11[2] = {__float_as_uint(v1.z), __float_as_uint(v1.w)};
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          ADA_MMA_TF32(acc[m][0], a[m][2 * p], b00);
          ADA_MMA_TF32(acc[m][1], a[m][2 * p], b10);
          ADA_MMA_TF32(acc[m][0], a[m][2 * p + 1], b01);
          ADA_MMA_TF32(acc[m][1], a[m][2 * p + 1], b11);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int jn = j + h;  // the n-tile
        if (8 * jn >= tile_n) break;
        const int r0 = 8 * jn + 2 * tq;  // this lane's two items of it
        const int64_t item = t0 + r0;
        const int id0 = int(lo + item);
        const bool in0 = r0 < tile_n, in1 = r0 + 1 < tile_n;
        const float b0 = !bias ? -0.0f : in0 ? __ldg(bias + item) : 0.0f;  // no bias: x + -0 == x
        const float b1 = !bias ? -0.0f : in1 ? __ldg(bias + item + 1) : 0.0f;
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            if (in0) top2_add(run[m][q], acc[m][h][2 * q] + b0, id0);
            if (in1) top2_add(run[m][q], acc[m][h][2 * q + 1] + b1, id0 + 1);
          }
        const int64_t next = t0 + 8 * jn + 8;  // the n-tile ends a group (uniform over the block; g a power of two)
        if ((next & (g - 1)) == 0 || next >= c_end) {
          const int64_t group = (t0 + 8 * jn) / g;
#pragma unroll
          for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int q = 0; q < 2; ++q) {
              top2_reduce(run[m][q], 4);  // the quad's lanes, t = 0..3
              const int query = qw + 16 * m + gq + 8 * q;
              if (tq == ((2 * m + q) & 3) && query < B) write_bounds(out, query, G, group, run[m][q]);
              run[m][q] = top2_empty();
            }
        }
      }
    }
  }
}

// sqrt of a sum of squares, as a float rounded up (a bound must not shrink in the conversion; a
// norm beyond the float range becomes +inf, one below it the smallest subnormal or 0, which
// tc_margin's 2^-100 term covers).
__device__ __forceinline__ float norm_up(double ss) {
  const double n = sqrt(ss);
  const float f = float(n);
  return double(f) >= n ? f : nextafterf(f, INFINITY);
}

// Per group, the largest item norm and |bias| (a NaN counts as +inf): one warp per group.
__global__ void __launch_bounds__(kThreads)
group_norms(const float* __restrict__ E, const float* __restrict__ bias, int D, int64_t n, int g, int64_t G,
            float* __restrict__ norm, float* __restrict__ absb) {
  const int lane = threadIdx.x & 31;
  const int64_t group = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (group >= G) return;
  float nm = 0.0f, bm = 0.0f;
  const int64_t end = min(n, (group + 1) * g);
  for (int64_t item = group * g + lane; item < end; item += 32) {
    const float* e = E + item * D;
    double ss = 0.0;  // in double: squares of tiny or huge floats neither underflow nor overflow
    if (D % 4 == 0) {
      const float4* e4 = reinterpret_cast<const float4*>(e);
      for (int c = 0; c < D / 4; ++c) {
        const float4 v = __ldg(e4 + c);
        ss += double(v.x) * v.x + double(v.y) * v.y + double(v.z) * v.z + double(v.w) * v.w;
      }
    } else {
      for (int d = 0; d < D; ++d) ss += double(e[d]) * e[d];
    }
    const float b = bias ? fabsf(bias[item]) : 0.0f;
    nm = fmaxf(nm, ss == ss ? norm_up(ss) : INFINITY);
    bm = fmaxf(bm, b == b ? b : INFINITY);
  }
  for (int o = 16; o > 0; o >>= 1) {
    nm = fmaxf(nm, __shfl_xor_sync(0xffffffffu, nm, o));
    bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, o));
  }
  if (lane == 0) {
    norm[group] = nm;
    absb[group] = bm;
  }
}

// The bound on |approx - exact| of kernel 1 on tensor cores for a group (see bounds_tc), plus
// 2^-100 (|u| + |e| + 1) for what underflows or was flushed (subnormal operands count as 0 there);
// +inf when it is not a small finite number (then the group is always rescored).
__device__ __forceinline__ float tc_margin(float unorm, float norm, float absb) {
  const float m = 0x1p-8f * (unorm * norm + absb) + 0x1p-100f * (unorm + norm + 1.0f);
  return m <= 1e30f ? m : INFINITY;
}

// The CPU's score of item `item` (local index): fmaf over d in order from 0, then + bias. With
// DT > 0 (D = DT, a multiple of 32; qv and the rows 16-byte aligned) the row is read 32 floats at a
// time by eight independent float4 loads issued before their fmas: one memory latency per 32
// coordinates instead of a dependent load per few (the same fmas in the same order).
template <int DT>
__device__ __forceinline__ float exact_score(const float* __restrict__ qv, const float* __restrict__ E,
                                             const float* __restrict__ bias, int D, int64_t item) {
  const float* e = E + item * D;
  float acc = 0.0f;
  if constexpr (DT > 0) {
    static_assert(DT % 32 == 0, "exact_score: whole batches of 8 float4");
#pragma unroll
    for (int c = 0; c < DT; c += 32) {
      float4 v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = __ldg(reinterpret_cast<const float4*>(e + c) + j);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float4 q = *reinterpret_cast<const float4*>(qv + c + 4 * j);
        acc = fmaf(q.x, v[j].x, acc);
        acc = fmaf(q.y, v[j].y, acc);
        acc = fmaf(q.z, v[j].z, acc);
        acc = fmaf(q.w, v[j].w, acc);
      }
    }
  } else {
    for (int d = 0; d < D; ++d) acc = fmaf(qv[d], __ldg(e + d), acc);
  }
  return bias ? acc + __ldg(bias + item) : acc;
}

constexpr int kSelectBatch = 4;  // kernel 2: keys, groups or rescored items a thread takes per batch

// The select kernel's phase clock (kernels/phase_clock.cuh, "topk_select"): its slots, in the order
// of phase_clock.cu's names. Phases from the start: the query row and the group keys, tau (the
// bisection), the groups' bests offered or listed for rescoring, the rescoring, the final sort, the
// output; then counts per query: bisection steps, groups rescored, candidates before the final sort;
// the slowest block.
enum SelectSlot {
  kPhKeys = 1, kPhTau, kPhOffers, kPhRescore, kPhSort, kPhOut, kCntTauSteps, kCntRescored, kCntCandidates, kMaxBlock
};

// Kernel 2: one block per query.
//  1. tau: a score that at least r = k + (excluded ids in range) + 1 (item 0) group bests reach,
//     found by bisection over the ordered keys (stopping once at most r + r/8 + 8 reach it). At most
//     r - k of those bests are excluded or item 0, so at least k allowed items score >= tau: no item
//     below tau is in the top k. With fewer than r groups, tau = -inf. (Approximate bounds: a group
//     best counts with its score less the margin, a lower bound on its exact score.)
//  2. Groups whose best reaches tau offer it, unless the group's other items may too (s2 >= tau) or
//     the best is not allowed (excluded, item 0, or -inf/NaN, whose real score the bound lost): those
//     groups are rescored item by item, with the same arithmetic as kernel 1 and the CPU.
//     (Approximate bounds: groups whose best plus the margin reaches tau; the best is rescored
//     exactly, and the whole group when its second plus the margin reaches tau too.)
//  3. The candidates go through a buffer with a running threshold; the best k are the result.
// DT: D when it is 32, 64 or 128 (exact_score's batched loads), else 0. kClock: the phase clock
// into prof (SelectSlot).
template <int DT, bool kClock>
__global__ void __launch_bounds__(kMaxSelectThreads)
select_kernel(const float* __restrict__ U, int D, const float* __restrict__ E, const float* __restrict__ bias,
              int64_t lo, int64_t n, int g, int64_t G, int k, int cap, Bounds in, const int64_t* __restrict__ ex_off,
              const int32_t* __restrict__ ex_ids, float* __restrict__ out_s, int32_t* __restrict__ out_i,
              int32_t* __restrict__ out_c, unsigned long long* __restrict__ prof) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* qv = reinterpret_cast<float*>(smem);                  // [D, rounded up to 4]: 16-byte aligned
  uint32_t* keys = reinterpret_cast<uint32_t*>(qv + (D + 3) / 4 * 4);  // [G]: ordered_bits of s1
  int* rescan = reinterpret_cast<int*>(keys);  // [G], over keys: groups to rescore (step 2 writes entry
                                               //  j only after every key up to j has been read)
  int* ctl = reinterpret_cast<int*>(keys + G);  // [4]: three rotating counters, rescan count
  const Buffer bf = carve(reinterpret_cast<unsigned char*>(ctl + 4), cap);

  const int64_t row = blockIdx.x;
  const int64_t e0 = ex_off[row], e1 = ex_off[row + 1];
  const float* s1p = in.s1 + row * G;
  const int32_t* id1p = in.id1 + row * G;
  const float* s2p = in.s2 + row * G;
  const bool approx = in.norm != nullptr;
  PhaseClock<kClock> clk(prof);
  for (int d = threadIdx.x; d < D; d += blockDim.x) qv[d] = U[row * D + d];
  if (threadIdx.x == 0) {
    ctl[0] = ctl[1] = ctl[2] = ctl[3] = 0;
    *bf.cnt = 0;
  }
  __syncthreads();
  float unorm = 0.0f;
  if (approx) {  // every thread sums every d in the same order: the same |u| everywhere
    double ss = 0.0;  // in double (see group_norms)
    for (int d = 0; d < D; ++d) ss += double(qv[d]) * qv[d];
    unorm = ss == ss ? norm_up(ss) : INFINITY;
  }
  // The keys, kSelectBatch per thread with their loads issued first (one latency per batch).
  for (int64_t i0 = threadIdx.x; i0 < G; i0 += kSelectBatch * int64_t(blockDim.x)) {
    float sv[kSelectBatch], mv[kSelectBatch];
#pragma unroll
    for (int u = 0; u < kSelectBatch; ++u) {
      const int64_t i = i0 + u * int64_t(blockDim.x);
      sv[u] = i < G ? s1p[i] : 0.0f;
      mv[u] = i < G && approx ? tc_margin(unorm, in.norm[i], in.absb[i]) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kSelectBatch; ++u) {
      const int64_t i = i0 + u * int64_t(blockDim.x);
      if (i < G) keys[i] = ordered_bits(approx ? order_key(sv[u] - mv[u]) : sv[u]);
    }
  }
  __syncthreads();
  clk.lap(kPhKeys);

  // 1. tau (as an ordered key): count(keys >= lo_u) >= r holds throughout, count(keys >= hi_u) < r.
  const uint32_t minus_inf = ordered_bits(-INFINITY);
  uint32_t tau_u = minus_inf;
  const int64_t r = int64_t(k) + (e1 - e0) + (lo == 0 ? 1 : 0);
  if (r <= G) {
    uint64_t lo_u = minus_inf, hi_u = uint64_t(1) << 32;
    for (int it = 0; hi_u - lo_u > 1; ++it) {
      const uint64_t mid = (lo_u + hi_u) >> 1;
      int c = 0;
      for (int64_t i = threadIdx.x; i < G; i += blockDim.x) c += keys[i] >= mid;
      c = warp_sum_int(c);
      if ((threadIdx.x & 31) == 0 && c) atomicAdd(&ctl[it % 3], c);
      if (threadIdx.x == 0) ctl[(it + 1) % 3] = 0;  // last read before the previous barrier
      __syncthreads();
      const int64_t total = ctl[it % 3];
      clk.add(kCntTauSteps, 1);
      if (total >= r) {
        lo_u = mid;
        if (total <= r + r / 8 + 8) break;
      } else {
        hi_u = mid;
      }
    }
    tau_u = uint32_t(lo_u);
  }
  const float tau = from_ordered_bits(tau_u);
  if (threadIdx.x == 0) {
    *bf.thr_s = tau;  // (tau, kNoId): every score >= tau comes before it
    *bf.thr_id = kNoId;
  }
  __syncthreads();
  clk.lap(kPhTau);

  // 2. The groups' bests, kSelectBatch groups per thread at a time: every thread loads its groups'
  // bounds (and keys) for all of them first, so the batch waits for memory once; then handles them
  // in turn, an exact score (one more memory latency) only for the bests it offers, and the block
  // meets once per batch (the buffer keeps room for kSelectBatch appends per thread). (Until
  // 2026-11-29 the batch ran as kSelectBatch rounds of one group per thread, each round ending at a
  // barrier: with the tensor cores' bounds a round with any best to score waited a latency, about
  // every round, though few threads had one.)
  for (int64_t t0 = 0; t0 < G; t0 += kSelectBatch * int64_t(blockDim.x)) {
    float s1v[kSelectBatch], s2v[kSelectBatch], mv[kSelectBatch];
    int idv[kSelectBatch];
    uint32_t kv[kSelectBatch];
#pragma unroll
    for (int u = 0; u < kSelectBatch; ++u) {
      const int64_t i = t0 + u * int64_t(blockDim.x) + threadIdx.x;
      if (i < G) {
        s1v[u] = s1p[i];
        s2v[u] = s2p[i];
        idv[u] = id1p[i];
        if (approx)
          mv[u] = tc_margin(unorm, in.norm[i], in.absb[i]);
        else
          kv[u] = keys[i];
      }
    }
    __syncthreads();  // every key of the batch is read: rescan entries (over the keys) may follow
#pragma unroll
    for (int u = 0; u < kSelectBatch; ++u) {
      const int64_t i = t0 + u * int64_t(blockDim.x) + threadIdx.x;
      if (i < G && approx) {
        const float s1 = s1v[u] + mv[u], s2 = s2v[u] + mv[u];  // upper bounds (NaN from -inf + inf: no bound)
        if (!(s1 < tau)) {
          if (!(s2 < tau)) {
            rescan[atomicAdd(&ctl[3], 1)] = int(i);
          } else {  // only the best may reach tau
            const int id = idv[u];
            if (id != 0 && !is_excluded(ex_ids, e0, e1, id)) offer(bf, exact_score<DT>(qv, E, bias, D, id - lo), id);
          }
        }
      } else if (i < G && kv[u] >= tau_u) {
        const float s1 = s1v[u], s2 = s2v[u];
        const int id = idv[u];
        const bool allowed = id != 0 && s1 != -INFINITY && !is_excluded(ex_ids, e0, e1, id);
        if (!allowed || ordered_bits(s2) >= tau_u)
          rescan[atomicAdd(&ctl[3], 1)] = int(i);
        else
          offer(bf, s1, id);
      }
    }
    __syncthreads();
    end_round(bf, k, kSelectBatch);
  }

  clk.lap(kPhOffers);
  clk.add(kCntRescored, ctl[3]);
  // 3. Rescoring, item by item, the groups that need it: kSelectBatch items per thread between the
  // block's meetings, as above.
  const int64_t total = int64_t(ctl[3]) * g;
  for (int64_t t0 = 0; t0 < total; t0 += kSelectBatch * int64_t(blockDim.x)) {
    for (int u = 0; u < kSelectBatch; ++u) {
      const int64_t f = t0 + u * int64_t(blockDim.x) + threadIdx.x;
      if (f >= total) break;
      const int64_t item = int64_t(rescan[f / g]) * g + f % g;
      const int gid = int(lo + item);
      if (item < n && gid != 0) {
        const float s = exact_score<DT>(qv, E, bias, D, item);
        if (before(s, gid, *bf.thr_s, *bf.thr_id) && !is_excluded(ex_ids, e0, e1, gid)) offer(bf, s, gid);
      }
    }
    __syncthreads();
    end_round(bf, k, kSelectBatch);
  }

  clk.lap(kPhRescore);
  clk.add(kCntCandidates, *bf.cnt);  // every append is before the barrier that ended the last round
  compact(bf, k);
  clk.lap(kPhSort);
  const int kept = *bf.cnt;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    out_s[row * k + i] = i < kept ? bf.s[i] : -INFINITY;
    out_i[row * k + i] = i < kept ? bf.id[i] : -1;
  }
  if (threadIdx.x == 0) out_c[row] = kept;
  clk.lap(kPhOut);
  clk.max_since_start(kMaxBlock);
  clk.unit();
}

int64_t next_pow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

size_t tiled_smem(int qb, int D) { return size_t(D) * qb * sizeof(float) + size_t(D) * kTiledLd * sizeof(float); }

size_t select_smem(int64_t G, int D, int cap) {
  return size_t(G) * sizeof(uint32_t) + size_t((D + 3) / 4 * 4) * sizeof(float) + 4 * sizeof(int) +
         buffer_bytes(cap);
}

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

size_t bounds_bytes(int64_t B, int64_t G, bool approx) {
  const size_t e = size_t(B) * size_t(G);
  return 2 * align_up(e * sizeof(float)) + align_up(e * sizeof(int32_t)) +
         (approx ? 2 * align_up(size_t(G) * sizeof(float)) : 0);
}

// The group norms first (one set for every query slice), then the slice's per-query bounds.
Bounds carve_bounds(void* base, int64_t B, int64_t G, bool approx) {
  auto* p = static_cast<unsigned char*>(base);
  const size_t e = size_t(B) * size_t(G), gb = align_up(size_t(G) * sizeof(float));
  Bounds b;
  b.norm = approx ? reinterpret_cast<float*>(p) : nullptr;
  b.absb = approx ? reinterpret_cast<float*>(p + gb) : nullptr;
  if (approx) p += 2 * gb;
  b.s1 = reinterpret_cast<float*>(p);
  b.s2 = reinterpret_cast<float*>(p + align_up(e * sizeof(float)));
  b.id1 = reinterpret_cast<int32_t*>(p + 2 * align_up(e * sizeof(float)));
  return b;
}

size_t tc_smem(int D, bool share) {
  return (size_t(kTcQueries) * (D + 4) + size_t(tc_region_floats(D, share)) + 2 * kTiledItems) * sizeof(float);
}

TopkKnobs g_knobs;  // the process-wide settings (topk_tensor_cores, topk_staged, ...): TopkKnobs{} at first
constexpr int64_t kTcAutoMinItems = 65536;

template <class Kernel>
void set_smem(Kernel kern, size_t bytes) {
  ADA_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace

TopkWorkspace::~TopkWorkspace() {
  if (ptr_) cudaFree(ptr_);
}

void* TopkWorkspace::get(size_t bytes) {
  if (bytes > bytes_) {
    if (ptr_) ADA_CUDA_OK(cudaFree(ptr_));
    ptr_ = nullptr;
    bytes_ = 0;
    ADA_CUDA_OK(cudaMalloc(&ptr_, bytes));
    bytes_ = bytes;
  }
  return ptr_;
}

TopkKnobs topk_knobs() { return g_knobs; }

TopkPlan plan_topk(int64_t B, int64_t n, int D, int k, int device) { return plan_topk(B, n, D, k, device, g_knobs); }

TopkPlan plan_topk(int64_t B, int64_t n, int D, int k, int device, const TopkKnobs& knobs) {
  ADA_CHECK(B >= 1 && B <= INT32_MAX, "topk: B = " << B << " out of range");
  ADA_CHECK(n >= 1 && n <= INT32_MAX, "topk: item range of " << n << " items");
  ADA_CHECK(D >= 1, "topk: D = " << D);
  ADA_CHECK(k >= 1 && k <= kGpuTopkMaxK, "topk: k = " << k << " outside 1.." << kGpuTopkMaxK << " on the GPU");
  int smem_optin = 0, sms = 0;
  ADA_CUDA_OK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  ADA_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  TopkPlan p;
  // Batches of 64 or more with D = 32, 64 or 128: tensor cores (TF32 bounds, exact rescoring),
  // by default for 2^16 items or more (see TensorCores in topk.hpp). Otherwise batches of 16 or
  // more: the register-tiled kernel with the most queries per block that fit (more queries per
  // staged item tile = fewer table reads per fma) but no more than the batch fills. Otherwise, or
  // when that does not fit, a warp per span of items.
  // The mma.sync kernel takes 128 queries per block (two m16 tiles per warp) where D <= 64 and the
  // batch fills them, else 64.
  // (Left to auto, the tensor-core kernel is wmma: the one measured so far.)
  const int tc_kernel = knobs.tc_kernel == kTcAuto ? 0 : knobs.tc_kernel;
  const bool tc_wanted = knobs.tensor_cores == 1 || (knobs.tensor_cores == 0 && n >= kTcAutoMinItems);
  const size_t tc_bytes = tc_kernel == 2 ? mma_smem(D) : tc_smem(D, tc_kernel == 1);
  if (tc_wanted && B >= kTcQueries && (D == 32 || D == 64 || D == 128) && tc_bytes <= size_t(smem_optin)) {
    p.tensor_cores = true;
    p.tc_kernel = tc_kernel;
    p.queries_per_block = tc_kernel == 2 ? mma_queries(D, B >= 128 ? mma_m_tiles(D) : 1) : kTcQueries;
    p.smem_bounds = tc_bytes;
  }
  for (int qb : {64, 32, 16}) {
    if (p.tensor_cores) break;
    if (B >= 16 && (qb == 16 || qb <= B) && tiled_smem(qb, D) <= size_t(smem_optin)) {
      p.queries_per_block = qb;
      p.tiled = true;
      p.smem_bounds = tiled_smem(qb, D);
      break;
    }
  }
  if (!p.tiled && !p.tensor_cores) {
    int qb = int(std::min<int64_t>(16, next_pow2(B)));
    while (qb > 1 && size_t(qb) * D * sizeof(float) > size_t(smem_optin)) qb /= 2;
    ADA_CHECK(size_t(qb) * D * sizeof(float) <= size_t(smem_optin),
              "topk: D = " << D << " needs more shared memory than the device has (" << smem_optin << " bytes)");
    p.queries_per_block = qb;
    const size_t staged = size_t(qb) * D * sizeof(float) +
                          (D == 32 ? stage_floats<32>() : stage_floats<64>()) * sizeof(float);
    if ((D == 32 || D == 64) && knobs.staged && staged <= size_t(smem_optin)) {
      p.staged = true;
      p.smem_bounds = staged;
    }
    // Rounded up to whole 16-byte words: compute-sanitizer memcheck on an H100 (3cc2338) reported a
    // 12-byte shared read past the 4 bytes of the D = 1, one-query case (the compiled code reads
    // the query row in wider words than the source does).
    if (!p.staged) p.smem_bounds = (size_t(qb) * D * sizeof(float) + 15) / 16 * 16;
  }
  // Groups: a power of two of items (at least 8: one tiled thread's items), about 16 (k + 64) of
  // them per query (at least kMinGroups, at most kMaxGroups): tau then sits among the best few
  // percent of the group bests, and few groups hold two items above it.
  const int64_t target = std::min<int64_t>(kMaxGroups, std::max<int64_t>(kMinGroups, next_pow2(16 * (int64_t(k) + 64))));
  p.group = int(std::max<int64_t>(8, next_pow2((n + target - 1) / target)));
  p.n_groups = (n + p.group - 1) / p.group;
  // Kernel 2: 1024 threads per query while the batch leaves multiprocessors idle, else 256. Its
  // shared memory grows with the groups: on devices with less of it, fewer and larger groups.
  p.select_threads = knobs.select_threads ? knobs.select_threads : B <= 2 * int64_t(sms) ? kMaxSelectThreads : 256;
  p.cap = int(next_pow2(k + kSelectBatch * p.select_threads));
  while (select_smem(p.n_groups, D, p.cap) > size_t(smem_optin) && p.n_groups > 1 && p.group < (1 << 29)) {
    p.group *= 2;
    p.n_groups = (n + p.group - 1) / p.group;
  }
  if (p.tiled || p.tensor_cores) {
    // Enough blocks for about four per multiprocessor, in chunks of whole groups and tiles.
    const int64_t q_blocks = (B + p.queries_per_block - 1) / p.queries_per_block;
    const int64_t unit = std::max<int64_t>(p.group, kTiledItems);
    const int64_t units = (n + unit - 1) / unit;
    // (The mma.sync kernel: about 12 per multiprocessor, whole waves whether 2, 3, 4 or 6 fit.
    // It also takes 4 tiles per chunk at least (where there are that many): its prologue (the
    // queries' fragments, two tiles in flight) is then paid once per 4 tiles or more, and its ring
    // of 3 stages turns over.)
    const bool mma = p.tensor_cores && p.tc_kernel == 2;
    int64_t chunks = std::max<int64_t>(1, ((mma ? 12 : 4) * int64_t(sms) + q_blocks - 1) / q_blocks);
    chunks = std::min<int64_t>({chunks, units, 65535});
    if (mma) chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, n / (4 * kMmaTile)));
    p.chunk_items = (units + chunks - 1) / chunks * unit;
    p.n_chunks = int((n + p.chunk_items - 1) / p.chunk_items);
  } else {
    p.chunk_items = n;
    p.n_chunks = 1;
  }
  p.smem_select = select_smem(p.n_groups, D, p.cap);
  ADA_CHECK(p.smem_select <= size_t(smem_optin), "topk: D = " << D << " and k = " << k << " need "
                                                               << p.smem_select << " bytes of shared memory, the device has "
                                                               << smem_optin);
  // Query slices whose bounds fit the workspace limit (one slice for every realistic batch).
  const size_t per_query = bounds_bytes(1, p.n_groups, false);
  p.slice = std::max<int64_t>(1, std::min<int64_t>(B, int64_t(kWorkspaceLimit / per_query)));
  p.workspace_bytes = bounds_bytes(p.slice, p.n_groups, p.tensor_cores);
  return p;
}

namespace {

// Kernel 1 for queries [b0, b0 + nb) of U into `bounds` (and, for the first slice, the group norms).
void launch_bounds_kernel(const TopkPlan& p, const float* Us, int64_t nb, bool first_slice, int D, const float* E,
                          const float* bias, int64_t lo, int64_t n, const Bounds& bounds, cudaStream_t stream) {
  const int64_t G = p.n_groups;
  const unsigned q_blocks = unsigned((nb + p.queries_per_block - 1) / p.queries_per_block);
  if (p.tensor_cores) {
    if (first_slice) {
      group_norms<<<unsigned((G + kThreads / 32 - 1) / (kThreads / 32)), kThreads, 0, stream>>>(
          E, bias, D, n, p.group, G, bounds.norm, bounds.absb);
      ADA_CUDA_OK(cudaGetLastError());
    }
    auto launch = [&](auto kern, int threads) {
      set_smem(kern, p.smem_bounds);
      kern<<<dim3(q_blocks, unsigned(p.n_chunks)), unsigned(threads), p.smem_bounds, stream>>>(
          Us, int(nb), E, bias, lo, n, p.chunk_items, p.group, G, bounds);
    };
    if (p.tc_kernel == 2) {
      const bool two = p.queries_per_block == mma_queries(D, 2);
      switch (D) {
        case 32: two ? launch(bounds_mma<32, 2>, kMmaThreads) : launch(bounds_mma<32, 1>, kMmaThreads); break;
        case 64: two ? launch(bounds_mma<64, 2>, kMmaThreads) : launch(bounds_mma<64, 1>, kMmaThreads); break;
        default: launch(bounds_mma<128, 1>, kMmaThreads); break;
      }
    } else {
      switch (D * 2 + int(p.tc_kernel == 1)) {
        case 64: launch(bounds_tc<32, false>, kThreads); break;
        case 65: launch(bounds_tc<32, true>, kThreads); break;
        case 128: launch(bounds_tc<64, false>, kThreads); break;
        case 129: launch(bounds_tc<64, true>, kThreads); break;
        case 256: launch(bounds_tc<128, false>, kThreads); break;
        default: launch(bounds_tc<128, true>, kThreads); break;
      }
    }
  } else if (p.tiled) {
    auto launch = [&](auto kern) {
      set_smem(kern, p.smem_bounds);
      kern<<<dim3(q_blocks, unsigned(p.n_chunks)), kThreads, p.smem_bounds, stream>>>(
          Us, int(nb), D, E, bias, lo, n, p.chunk_items, p.group, G, bounds);
    };
    switch (p.queries_per_block) {
      case 64: launch(bounds_tiled<4>); break;
      case 32: launch(bounds_tiled<2>); break;
      default: launch(bounds_tiled<1>); break;
    }
  } else {
    const int64_t span = std::max(p.group, 32);
    const int64_t spans = (n + span - 1) / span;
    const dim3 grid(q_blocks, unsigned((spans + kThreads / 32 - 1) / (kThreads / 32)));
    auto launch = [&](auto kern) {
      set_smem(kern, p.smem_bounds);
      kern<<<grid, kThreads, p.smem_bounds, stream>>>(Us, int(nb), D, E, bias, lo, n, p.group, G, bounds);
    };
    const bool vec4 = D % 4 == 0;
    if (p.staged) {
      auto staged = [&](auto q) {
        constexpr int Q = decltype(q)::value;
        if (D == 32) launch(bounds_staged<Q, 32>);
        else launch(bounds_staged<Q, 64>);
      };
      switch (p.queries_per_block) {
        case 16: staged(std::integral_constant<int, 16>{}); break;
        case 8: staged(std::integral_constant<int, 8>{}); break;
        case 4: staged(std::integral_constant<int, 4>{}); break;
        case 2: staged(std::integral_constant<int, 2>{}); break;
        default: staged(std::integral_constant<int, 1>{}); break;
      }
    } else
    switch (p.queries_per_block) {
      case 16: vec4 ? launch(bounds_warp<16, true>) : launch(bounds_warp<16, false>); break;
      case 8: vec4 ? launch(bounds_warp<8, true>) : launch(bounds_warp<8, false>); break;
      case 4: vec4 ? launch(bounds_warp<4, true>) : launch(bounds_warp<4, false>); break;
      case 2: vec4 ? launch(bounds_warp<2, true>) : launch(bounds_warp<2, false>); break;
      default: vec4 ? launch(bounds_warp<1, true>) : launch(bounds_warp<1, false>); break;
    }
  }
  ADA_CUDA_OK(cudaGetLastError());
}

}  // namespace

void run_topk_plan(const TopkPlan& p, const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo,
                   int64_t n, int k, const int64_t* ex_off, const int32_t* ex_ids, float* out_scores, int32_t* out_ids,
                   int32_t* out_count, TopkWorkspace& ws, cudaStream_t stream, bool select) {
  if (B == 0) return;
  void* base = ws.get(p.workspace_bytes);
  auto select_for = [](int D, auto clock) {
    constexpr bool c = decltype(clock)::value;
    return D == 32    ? select_kernel<32, c>
           : D == 64  ? select_kernel<64, c>
           : D == 128 ? select_kernel<128, c>
                      : select_kernel<0, c>;
  };
  unsigned long long* prof = phase_sums(Clocked::kTopkSelect);
  const auto select_kern = prof ? select_for(D, std::true_type{}) : select_for(D, std::false_type{});
  if (select) set_smem(select_kern, p.smem_select);
  for (int64_t b0 = 0; b0 < B; b0 += p.slice) {
    const int64_t nb = std::min(p.slice, B - b0);
    const Bounds bounds = carve_bounds(base, nb, p.n_groups, p.tensor_cores);
    const float* Us = U + b0 * D;
    launch_bounds_kernel(p, Us, nb, b0 == 0, D, E, bias, lo, n, bounds, stream);
    if (!select) continue;
    select_kern<<<unsigned(nb), unsigned(p.select_threads), p.smem_select, stream>>>(
        Us, D, E, bias, lo, n, p.group, p.n_groups, k, p.cap, bounds, ex_off + b0, ex_ids, out_scores + b0 * k,
        out_ids + b0 * k, out_count + b0, prof);
    ADA_CUDA_OK(cudaGetLastError());
  }
}

// The knobs' setters: a change also forgets the tunings made under the old settings.
void topk_tensor_cores(int mode) {
  ADA_CHECK(mode >= 0 && mode <= 2, "topk: tensor-core mode " << mode << " (0 auto, 1 always, 2 never)");
  g_knobs.tensor_cores = mode;
  topk_tunings_clear();
}
void topk_staged(bool on) {
  g_knobs.staged = on;
  topk_tunings_clear();
}
void topk_tc_kernel(int kernel) {
  ADA_CHECK(kernel >= 0 && kernel <= kTcAuto,
            "topk: tensor-core kernel " << kernel << " (0 wmma, 1 wmma sharing, 2 mma.sync, 3 auto)");
  g_knobs.tc_kernel = kernel;
  topk_tunings_clear();
}
void topk_select_threads(int threads) {
  ADA_CHECK(threads == 0 || (threads % 32 == 0 && threads >= 32 && threads <= kMaxSelectThreads),
            "topk: " << threads << " select threads (0, or a multiple of 32 up to " << kMaxSelectThreads << ")");
  g_knobs.select_threads = threads;
  topk_tunings_clear();
}

}  // namespace cuda

namespace {

// Device memory that grows on demand.
struct DeviceBytes {
  void* p = nullptr;
  size_t bytes = 0;
  DeviceBytes() = default;
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  ~DeviceBytes() {
    if (p) cudaFree(p);
  }
  template <class T>
  T* ensure(size_t n) {
    const size_t want = std::max<size_t>(n * sizeof(T), 1);
    if (want > bytes) {
      if (p) ADA_CUDA_OK(cudaFree(p));
      p = nullptr;
      bytes = 0;
      ADA_CUDA_OK(cudaMalloc(&p, want));
      bytes = want;
    }
    return static_cast<T*>(p);
  }
};

class GpuSearcher final : public TopkSearcher {
 public:
  GpuSearcher(const float* E, const float* bias, int64_t lo, int64_t hi, int64_t D, int device)
      : lo_(lo), hi_(hi), D_(D), device_(device) {
    ADA_CHECK(E != nullptr, "gpu searcher: null item table");
    ADA_CHECK(lo >= 0 && lo < hi && hi <= int64_t(INT32_MAX),
              "gpu searcher: bad item range [" << lo << ", " << hi << ")");
    ADA_CHECK(D >= 1 && D <= 4096, "gpu searcher: D = " << D << " outside 1..4096");
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();
      count = 0;
    }
    ADA_CHECK(device >= 0 && device < count,
              "gpu searcher: CUDA device " << device << " is not available (" << count << " visible)");
    ADA_CUDA_OK(cudaSetDevice(device_));
    ADA_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const int64_t n = hi - lo;
    float* dE = table_.ensure<float>(size_t(n * D));
    ADA_CUDA_OK(cudaMemcpy(dE, E + lo * D, size_t(n * D) * sizeof(float), cudaMemcpyHostToDevice));
    if (bias) {
      float* dB = bias_.ensure<float>(size_t(n));
      ADA_CUDA_OK(cudaMemcpy(dB, bias + lo, size_t(n) * sizeof(float), cudaMemcpyHostToDevice));
      has_bias_ = true;
    }
  }
  ~GpuSearcher() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  const char* name() const override { return "cuda"; }
  int64_t lo() const override { return lo_; }
  int64_t hi() const override { return hi_; }
  int64_t dim() const override { return D_; }

  TopkLists search(const float* U, int64_t B, int k, const Ragged& exclude, const Ragged* extra) override {
    ADA_CHECK(B >= 0, "gpu searcher: negative number of queries " << B);
    ADA_CHECK(k >= 1 && k <= kGpuTopkMaxK, "gpu searcher: k = " << k << " outside 1.." << kGpuTopkMaxK);
    ADA_CHECK(int64_t(exclude.rows()) == B, "gpu searcher: exclude has " << exclude.rows() << " rows, expected " << B);
    ADA_CHECK(!extra || int64_t(extra->rows()) == B,
              "gpu searcher: extra exclusions have " << extra->rows() << " rows, expected " << B);
    TopkLists out;
    out.reset(B, k);
    if (B == 0) return out;
    ADA_CHECK(U != nullptr, "gpu searcher: null queries");
    // This shard's exclusions per row: sorted, unique, inside [lo, hi).
    ex_off_.assign(1, 0);
    ex_ids_.clear();
    for (int64_t b = 0; b < B; ++b) {
      const size_t start = ex_ids_.size();
      auto take = [&](const Ragged& rg) {
        for (const ItemId* p = rg.row_begin(size_t(b)); p != rg.row_end(size_t(b)); ++p)
          if (*p >= lo_ && *p < hi_) ex_ids_.push_back(*p);
      };
      take(exclude);
      if (extra) take(*extra);
      std::sort(ex_ids_.begin() + std::ptrdiff_t(start), ex_ids_.end());
      ex_ids_.erase(std::unique(ex_ids_.begin() + std::ptrdiff_t(start), ex_ids_.end()), ex_ids_.end());
      ex_off_.push_back(int64_t(ex_ids_.size()));
    }
    ADA_CUDA_OK(cudaSetDevice(device_));
    float* dU = queries_.ensure<float>(size_t(B * D_));
    int64_t* dOff = ex_off_dev_.ensure<int64_t>(ex_off_.size());
    int32_t* dIds = ex_ids_dev_.ensure<int32_t>(ex_ids_.size());
    float* dS = out_s_.ensure<float>(size_t(B * k));
    int32_t* dI = out_i_.ensure<int32_t>(size_t(B * k));
    int32_t* dC = out_c_.ensure<int32_t>(size_t(B));
    ADA_CUDA_OK(cudaMemcpyAsync(dU, U, size_t(B * D_) * sizeof(float), cudaMemcpyHostToDevice, stream_));
    ADA_CUDA_OK(cudaMemcpyAsync(dOff, ex_off_.data(), ex_off_.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream_));
    if (!ex_ids_.empty())
      ADA_CUDA_OK(cudaMemcpyAsync(dIds, ex_ids_.data(), ex_ids_.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  stream_));
    cuda::topk_device(dU, B, int(D_), table_.ensure<float>(0), has_bias_ ? bias_.ensure<float>(0) : nullptr, lo_,
                      hi_ - lo_, k, dOff, dIds, dS, dI, dC, ws_, stream_);
    ADA_CUDA_OK(cudaMemcpyAsync(out.scores.data(), dS, size_t(B * k) * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    ADA_CUDA_OK(cudaMemcpyAsync(out.ids.data(), dI, size_t(B * k) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    ADA_CUDA_OK(cudaMemcpyAsync(out.count.data(), dC, size_t(B) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    ADA_CUDA_OK(cudaStreamSynchronize(stream_));
    return out;
  }

 private:
  int64_t lo_, hi_, D_;
  int device_;
  bool has_bias_ = false;
  cudaStream_t stream_ = nullptr;
  DeviceBytes table_, bias_, queries_, ex_off_dev_, ex_ids_dev_, out_s_, out_i_, out_c_;
  cuda::TopkWorkspace ws_;
  std::vector<int64_t> ex_off_;
  std::vector<int32_t> ex_ids_;
};

}  // namespace

void set_gpu_topk_tensor_cores(TensorCores mode) { cuda::topk_tensor_cores(int(mode)); }
void set_gpu_topk_staged(bool on) { cuda::topk_staged(on); }
void set_gpu_topk_tc_kernel(TcKernel kernel) { cuda::topk_tc_kernel(int(kernel)); }
void set_gpu_topk_select_threads(int threads) { cuda::topk_select_threads(threads); }

std::unique_ptr<TopkSearcher> make_gpu_searcher(const float* E, const float* bias, int64_t lo, int64_t hi, int64_t D,
                                                int device) {
  return std::make_unique<GpuSearcher>(E, bias, lo, hi, D, device);
}

}  // namespace ada
