// Fused batched score + top-k (see topk.cuh) and the GPU shard searcher of topk.hpp.
#include "kernels/topk.cuh"

#include <algorithm>
#include <cmath>
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

constexpr int kThreads = 256;
constexpr int kTile = 128;               // items per tile: kThreads / kTile = 2 query groups
constexpr int kNoId = 0x7fffffff;        // sentinel id, after every real id
constexpr int kMergeThreads = 256;

__device__ __forceinline__ float order_key(float s) { return s == s ? s : -INFINITY; }

// (sa, a) before (sb, b): higher score, then smaller id; NaN as -inf (topk.hpp).
__device__ __forceinline__ bool before(float sa, int a, float sb, int b) {
  const float ka = order_key(sa), kb = order_key(sb);
  return ka > kb || (ka == kb && a < b);
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

// Sorts cap (a power of two) entries best first; every thread of the block takes part. Ends with a
// barrier.
__device__ void bitonic_sort(float* s, int* id, int cap) {
  for (int size = 2; size <= cap; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < cap / 2; i += blockDim.x) {
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

// Per-query candidate buffers in shared memory.
struct Buffers {
  float* s;     // [queries][cap]
  int* id;      // [queries][cap]
  int* cnt;     // [queries]
  float* thr_s; // [queries]: the k-th best kept so far (sentinel until k are kept)
  int* thr_id;  // [queries]
  int cap;
};

// Sorts query q's buffer and keeps its best min(count, k). Must be called by every thread, right
// after a barrier that follows the last append. Ends with a barrier.
__device__ void compact(const Buffers& bf, int q, int k) {
  float* s = bf.s + size_t(q) * bf.cap;
  int* id = bf.id + size_t(q) * bf.cap;
  const int c = bf.cnt[q];
  for (int i = c + threadIdx.x; i < bf.cap; i += blockDim.x) {
    s[i] = -INFINITY;
    id[i] = kNoId;
  }
  __syncthreads();
  bitonic_sort(s, id, bf.cap);  // its barriers also order every thread's read of cnt[q] above
  if (threadIdx.x == 0) {
    const int kept = c < k ? c : k;
    bf.cnt[q] = kept;
    if (kept == k) {
      bf.thr_s[q] = s[k - 1];
      bf.thr_id[q] = id[k - 1];
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void offer(const Buffers& bf, int q, float s, int id) {
  if (before(s, id, bf.thr_s[q], bf.thr_id[q])) {
    const int pos = atomicAdd(&bf.cnt[q], 1);
    bf.s[size_t(q) * bf.cap + pos] = s;
    bf.id[size_t(q) * bf.cap + pos] = id;
  }
}

__device__ Buffers carve(unsigned char* base, int queries, int cap) {
  Buffers bf;
  bf.cap = cap;
  bf.s = reinterpret_cast<float*>(base);
  bf.id = reinterpret_cast<int*>(bf.s + size_t(queries) * cap);
  bf.cnt = bf.id + size_t(queries) * cap;
  bf.thr_s = reinterpret_cast<float*>(bf.cnt + queries);
  bf.thr_id = reinterpret_cast<int*>(bf.thr_s + queries);
  return bf;
}

__host__ __device__ constexpr size_t buffer_bytes(int queries, int cap) {
  return size_t(queries) * cap * (sizeof(float) + sizeof(int)) + size_t(queries) * 3 * sizeof(int);
}

// Items that beat query q's threshold and are not excluded go into its buffer.
__device__ __forceinline__ void offer_item(const Buffers& bf, int q, float s, int gid, const int64_t* __restrict__ ex_off,
                                           const int32_t* __restrict__ ex_ids, int row) {
  if (before(s, gid, bf.thr_s[q], bf.thr_id[q]) && !is_excluded(ex_ids, ex_off[row], ex_off[row + 1], gid))
    offer(bf, q, s, gid);
}

// After the last tile's barrier: before each tile a buffer may take up to `tile` appends.
__device__ __forceinline__ void compact_full(const Buffers& bf, int nq, int k, int tile) {
  for (int q = 0; q < nq; ++q)
    if (bf.cnt[q] > bf.cap - tile) compact(bf, q, k);
}

// The end of a chunk: each query's best min(count, k), best first, into the chunk's partial list.
__device__ void finish_chunk(const Buffers& bf, int nq, int q0, int chunk, int n_chunks, int k,
                             float* __restrict__ part_s, int32_t* __restrict__ part_i, int32_t* __restrict__ part_c) {
  __syncthreads();  // publishes the last appends (and the initial counts of a block that saw no tile)
  for (int q = 0; q < nq; ++q) {
    compact(bf, q, k);
    const int kept = bf.cnt[q];
    const int64_t row = int64_t(q0 + q) * n_chunks + chunk;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      part_s[row * k + i] = i < kept ? bf.s[size_t(q) * bf.cap + i] : -INFINITY;
      part_i[row * k + i] = i < kept ? bf.id[size_t(q) * bf.cap + i] : -1;
    }
    if (threadIdx.x == 0) part_c[row] = kept;
  }
}

__device__ __forceinline__ void init_buffers(const Buffers& bf, int queries) {
  for (int q = threadIdx.x; q < queries; q += blockDim.x) {
    bf.cnt[q] = 0;
    bf.thr_s[q] = -INFINITY;
    bf.thr_id[q] = kNoId;
  }
}

// Kernel 1. Block (x = query group, y = item chunk). Thread t scores item (t % kTile) of each tile
// against queries (t / kTile) * QPT .. + QPT of the group.
template <int QPT>
__global__ void __launch_bounds__(kThreads)
score_select_kernel(const float* __restrict__ U, int B, int D, const float* __restrict__ E,
                    const float* __restrict__ bias, int64_t lo, int64_t n, int64_t chunk_items, int k, int cap,
                    const int64_t* __restrict__ ex_off, const int32_t* __restrict__ ex_ids,
                    float* __restrict__ part_s, int32_t* __restrict__ part_i, int32_t* __restrict__ part_c,
                    int n_chunks) {
  constexpr int QB = 2 * QPT;
  extern __shared__ __align__(16) unsigned char smem[];
  float* qs = reinterpret_cast<float*>(smem);  // [QB][D]
  float* es = qs + QB * D;                     // [kTile][D + 1] (padded: conflict-free column reads)
  const Buffers bf = carve(reinterpret_cast<unsigned char*>(es + kTile * (D + 1)), QB, cap);

  const int q0 = blockIdx.x * QB;
  const int nq = min(QB, B - q0);
  const int chunk = blockIdx.y;
  const int64_t c_begin = int64_t(chunk) * chunk_items;
  const int64_t c_end = min(n, c_begin + chunk_items);

  for (int i = threadIdx.x; i < QB * D; i += blockDim.x) {
    const int q = i / D;
    qs[i] = q < nq ? U[int64_t(q0 + q) * D + (i - q * D)] : 0.0f;
  }
  init_buffers(bf, QB);  // (the first tile's barrier below publishes these)

  const int item = threadIdx.x % kTile;
  const int qg = threadIdx.x / kTile;
  const float* qrow = qs + qg * QPT * D;
  for (int64_t t0 = c_begin; t0 < c_end; t0 += kTile) {
    const int tile_n = c_end - t0 < kTile ? int(c_end - t0) : kTile;
    const float* src = E + t0 * D;  // tile rows are contiguous
    for (int i = threadIdx.x; i < tile_n * D; i += blockDim.x) {
      const int r = i / D;
      es[r * (D + 1) + (i - r * D)] = src[i];
    }
    __syncthreads();
    if (item < tile_n) {
      float acc[QPT];
#pragma unroll
      for (int j = 0; j < QPT; ++j) acc[j] = 0.0f;
      const float* er = es + item * (D + 1);
      for (int d = 0; d < D; ++d) {
        const float ev = er[d];
#pragma unroll
        for (int j = 0; j < QPT; ++j) acc[j] = fmaf(qrow[j * D + d], ev, acc[j]);
      }
      const int64_t local = t0 + item;
      const int gid = int(lo + local);
      if (gid != 0) {
        const float b = bias ? bias[local] : 0.0f;
#pragma unroll
        for (int j = 0; j < QPT; ++j) {
          const int q = qg * QPT + j;
          if (q < nq) offer_item(bf, q, acc[j] + b, gid, ex_off, ex_ids, q0 + q);
        }
      }
    }
    __syncthreads();
    compact_full(bf, nq, k, kTile);  // room for the next tile: at most kTile appends per query
  }
  finish_chunk(bf, nq, q0, chunk, n_chunks, k, part_s, part_i, part_c);
}

// Kernel 1, register-tiled (batches of 16 queries or more). A block takes QB = 16 * QPT queries; a
// thread computes a QPT x 8 tile of scores (queries tq*QPT.., items ti*8..) per 128-item tile, with
// the queries and the items transposed in shared memory ([D][QB] and [D][132]) so each step over d
// is one vector load of queries and two of items for 8 * QPT fmas. Same arithmetic as kernel 1 (fmaf
// over d in order from 0, then + bias), so the two give identical lists.
constexpr int kTiledItems = 128;
constexpr int kTiledLd = kTiledItems + 4;  // padded row: 528 bytes, 16-byte aligned

template <int QPT>
__global__ void __launch_bounds__(kThreads)
score_select_tiled(const float* __restrict__ U, int B, int D, const float* __restrict__ E,
                   const float* __restrict__ bias, int64_t lo, int64_t n, int64_t chunk_items, int k, int cap,
                   const int64_t* __restrict__ ex_off, const int32_t* __restrict__ ex_ids,
                   float* __restrict__ part_s, int32_t* __restrict__ part_i, int32_t* __restrict__ part_c,
                   int n_chunks) {
  constexpr int QB = 16 * QPT;
  extern __shared__ __align__(16) unsigned char smem[];
  float* qT = reinterpret_cast<float*>(smem);  // [D][QB]
  float* eT = qT + D * QB;                     // [D][kTiledLd]
  const Buffers bf = carve(reinterpret_cast<unsigned char*>(eT + D * kTiledLd), QB, cap);

  const int q0 = blockIdx.x * QB;
  const int nq = min(QB, B - q0);
  const int chunk = blockIdx.y;
  const int64_t c_begin = int64_t(chunk) * chunk_items;
  const int64_t c_end = min(n, c_begin + chunk_items);

  for (int i = threadIdx.x; i < QB * D; i += blockDim.x) {
    const int q = i / D, d = i - q * D;
    qT[d * QB + q] = q < nq ? U[int64_t(q0 + q) * D + d] : 0.0f;
  }
  init_buffers(bf, QB);  // (the first tile's barrier publishes these)

  const int tq = threadIdx.x / 16;  // query group: queries tq*QPT .. +QPT
  const int ti = threadIdx.x % 16;  // item group: items ti*8 .. +8 of the tile
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
      const int64_t local = t0 + r;
      const int gid = int(lo + local);
      if (r < tile_n && gid != 0) {
        const float b = bias ? bias[local] : 0.0f;
#pragma unroll
        for (int j = 0; j < QPT; ++j) {
          const int q = tq * QPT + j;
          if (q < nq) offer_item(bf, q, acc[j][i] + b, gid, ex_off, ex_ids, q0 + q);
        }
      }
    }
    __syncthreads();
    compact_full(bf, nq, k, kTiledItems);  // room for the next tile
  }
  finish_chunk(bf, nq, q0, chunk, n_chunks, k, part_s, part_i, part_c);
}

// Kernel 2: one block per query merges its n_chunks lists.
__global__ void __launch_bounds__(kMergeThreads)
merge_kernel(const float* __restrict__ part_s, const int32_t* __restrict__ part_i,
             const int32_t* __restrict__ part_c, int n_chunks, int k, int cap, float* __restrict__ out_s,
             int32_t* __restrict__ out_i, int32_t* __restrict__ out_c) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Buffers bf = carve(smem, 1, cap);
  const int64_t row = blockIdx.x;
  if (threadIdx.x == 0) {
    bf.cnt[0] = 0;
    bf.thr_s[0] = -INFINITY;
    bf.thr_id[0] = kNoId;
  }
  __syncthreads();
  const int64_t total = int64_t(n_chunks) * k;
  const float* ps = part_s + row * total;
  const int32_t* pi = part_i + row * total;
  const int32_t* pc = part_c + row * n_chunks;
  for (int64_t t0 = 0; t0 < total; t0 += blockDim.x) {
    const int64_t i = t0 + threadIdx.x;
    if (i < total) {
      const int chunk = int(i / k);
      if (int(i - int64_t(chunk) * k) < pc[chunk]) offer(bf, 0, ps[i], pi[i]);
    }
    __syncthreads();
    // Every thread reads cnt[0] here, so they all take the same branch; the barrier on both paths
    // keeps the next round's appends (atomicAdd on cnt[0]) after every thread's read.
    if (bf.cnt[0] > cap - int(blockDim.x))
      compact(bf, 0, k);  // ends with a barrier
    else
      __syncthreads();
  }
  compact(bf, 0, k);
  const int kept = bf.cnt[0];
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    out_s[row * k + i] = i < kept ? bf.s[i] : -INFINITY;
    out_i[row * k + i] = i < kept ? bf.id[i] : -1;
  }
  if (threadIdx.x == 0) out_c[row] = kept;
}

int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

size_t score_smem(int qb, int D, int cap) {
  return size_t(qb) * D * sizeof(float) + size_t(kTile) * (D + 1) * sizeof(float) + buffer_bytes(qb, cap);
}

size_t tiled_smem(int qb, int D, int cap) {
  return size_t(D) * qb * sizeof(float) + size_t(D) * kTiledLd * sizeof(float) + buffer_bytes(qb, cap);
}

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

template <int QPT, bool kTiledKernel>
void launch_score(const TopkPlan& p, dim3 grid, cudaStream_t stream, const float* U, int64_t B, int D,
                  const float* E, const float* bias, int64_t lo, int64_t n, int k, const int64_t* ex_off,
                  const int32_t* ex_ids, float* ps, int32_t* pi, int32_t* pc) {
  auto kern = [] {  // only the variants that are launched get instantiated
    if constexpr (kTiledKernel)
      return score_select_tiled<QPT>;
    else
      return score_select_kernel<QPT>;
  }();
  ADA_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(p.smem_score)));
  kern<<<grid, kThreads, p.smem_score, stream>>>(U, int(B), D, E, bias, lo, n, p.chunk_items, k, p.cap, ex_off,
                                                 ex_ids, ps, pi, pc, p.n_chunks);
  ADA_CUDA_OK(cudaGetLastError());
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

TopkPlan plan_topk(int64_t B, int64_t n, int D, int k, int device) {
  ADA_CHECK(B >= 1 && B <= INT32_MAX, "topk: B = " << B << " out of range");
  ADA_CHECK(n >= 1, "topk: empty item range");
  ADA_CHECK(D >= 1, "topk: D = " << D);
  ADA_CHECK(k >= 1 && k <= kGpuTopkMaxK, "topk: k = " << k << " outside 1.." << kGpuTopkMaxK << " on the GPU");
  int smem_optin = 0, sms = 0;
  ADA_CUDA_OK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  ADA_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  TopkPlan p;
  p.cap = next_pow2(k + kTile);
  p.merge_cap = next_pow2(k + kMergeThreads);
  // Batches of 16 queries or more: the register-tiled kernel with the most queries per block that
  // fit (more queries per staged item tile = fewer table reads and more fmas per load) but no more
  // than the batch fills. Otherwise, or when it does not fit, the one-item-per-thread kernel.
  for (int qb : {64, 32, 16}) {
    if (B >= 16 && (qb == 16 || qb <= B) && tiled_smem(qb, D, p.cap) <= size_t(smem_optin)) {
      p.queries_per_block = qb;
      p.tiled = true;
      p.smem_score = tiled_smem(qb, D, p.cap);
      break;
    }
  }
  for (int qb : {32, 16, 8, 4, 2}) {
    if (p.tiled) break;
    if (score_smem(qb, D, p.cap) <= size_t(smem_optin) && (qb == 2 || qb / 2 < B)) {
      p.queries_per_block = qb;
      p.smem_score = score_smem(qb, D, p.cap);
      break;
    }
  }
  ADA_CHECK(p.queries_per_block > 0, "topk: D = " << D << " and k = " << k << " need "
                                                  << score_smem(2, D, p.cap) << " bytes of shared memory, the device has "
                                                  << smem_optin);
  p.smem_merge = buffer_bytes(1, p.merge_cap);
  // Enough blocks for about four per multiprocessor, in chunks of whole tiles.
  const int64_t q_blocks = (B + p.queries_per_block - 1) / p.queries_per_block;
  const int64_t tiles = (n + kTile - 1) / kTile;
  int64_t chunks = std::max<int64_t>(1, (4 * int64_t(sms) + q_blocks - 1) / q_blocks);
  chunks = std::min<int64_t>({chunks, tiles, 65535});
  p.chunk_items = (tiles + chunks - 1) / chunks * kTile;
  p.n_chunks = int((n + p.chunk_items - 1) / p.chunk_items);
  const size_t parts = size_t(B) * size_t(p.n_chunks) * size_t(k);
  p.workspace_bytes = align_up(parts * sizeof(float)) + align_up(parts * sizeof(int32_t)) +
                      align_up(size_t(B) * p.n_chunks * sizeof(int32_t));
  return p;
}

void topk_device(const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo, int64_t n, int k,
                 const int64_t* ex_off, const int32_t* ex_ids, float* out_scores, int32_t* out_ids,
                 int32_t* out_count, TopkWorkspace& ws, cudaStream_t stream) {
  if (B == 0) return;
  int device = 0;
  ADA_CUDA_OK(cudaGetDevice(&device));
  const TopkPlan p = plan_topk(B, n, D, k, device);
  auto* base = static_cast<unsigned char*>(ws.get(p.workspace_bytes));
  const size_t parts = size_t(B) * size_t(p.n_chunks) * size_t(k);
  auto* ps = reinterpret_cast<float*>(base);
  auto* pi = reinterpret_cast<int32_t*>(base + align_up(parts * sizeof(float)));
  auto* pc = reinterpret_cast<int32_t*>(base + align_up(parts * sizeof(float)) + align_up(parts * sizeof(int32_t)));
  const dim3 grid(unsigned((B + p.queries_per_block - 1) / p.queries_per_block), unsigned(p.n_chunks));
#define ADA_TOPK_LAUNCH(QPT, TILED) \
  launch_score<QPT, TILED>(p, grid, stream, U, B, D, E, bias, lo, n, k, ex_off, ex_ids, ps, pi, pc)
  if (p.tiled) {
    switch (p.queries_per_block) {
      case 64: ADA_TOPK_LAUNCH(4, true); break;
      case 32: ADA_TOPK_LAUNCH(2, true); break;
      default: ADA_TOPK_LAUNCH(1, true); break;
    }
  } else {
    switch (p.queries_per_block) {
      case 32: ADA_TOPK_LAUNCH(16, false); break;
      case 16: ADA_TOPK_LAUNCH(8, false); break;
      case 8: ADA_TOPK_LAUNCH(4, false); break;
      case 4: ADA_TOPK_LAUNCH(2, false); break;
      default: ADA_TOPK_LAUNCH(1, false); break;
    }
  }
#undef ADA_TOPK_LAUNCH
  ADA_CUDA_OK(cudaFuncSetAttribute(merge_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(p.smem_merge)));
  merge_kernel<<<unsigned(B), kMergeThreads, p.smem_merge, stream>>>(ps, pi, pc, p.n_chunks, k, p.merge_cap,
                                                                     out_scores, out_ids, out_count);
  ADA_CUDA_OK(cudaGetLastError());
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

std::unique_ptr<TopkSearcher> make_gpu_searcher(const float* E, const float* bias, int64_t lo, int64_t hi, int64_t D,
                                                int device) {
  return std::make_unique<GpuSearcher>(E, bias, lo, hi, D, device);
}

}  // namespace ada
