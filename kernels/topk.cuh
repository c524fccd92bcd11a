// The fused batched score + top-k kernel (device-pointer API, for the CUDA backend and benchmarks).
//
// For B queries U [B, D] and the items [lo, lo + n) of a table (E points at item lo's row, bias at
// item lo's bias or is null), writes per query the best k items by s = <u, e> + b in the order of
// topk.hpp (higher score, then smaller id), skipping global id 0 and the query's excluded ids
// ex_ids[ex_off[b] .. ex_off[b+1]) (sorted ascending; global ids). Rows with fewer candidates get
// fewer (out_count[b]); the tail holds id -1 and score -inf. The B x n score matrix is never written.
//
// Two kernels: (1) a grid of (query group, item chunk) blocks; each stages tiles of 128 item rows in
// shared memory, scores them against its queries (exact FP32, fmaf over d in order; register-tiled,
// 8 items x up to 4 queries per thread, for batches of 16 queries or more) and keeps, per
// query, a candidate buffer with a running threshold (the k-th best so far): only items that beat
// it are appended, and a full buffer is bitonic-sorted and cut back to k. (2) one block per query
// merges its chunks' lists the same way. Exclusions are looked up (binary search) only for items
// that beat the threshold.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace ada {
namespace cuda {

// Device scratch reused across calls (grown as needed, freed by the destructor).
class TopkWorkspace {
 public:
  TopkWorkspace() = default;
  TopkWorkspace(const TopkWorkspace&) = delete;
  TopkWorkspace& operator=(const TopkWorkspace&) = delete;
  ~TopkWorkspace();
  void* get(size_t bytes);  // at least `bytes` of device memory (contents unspecified)

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Launch parameters chosen for a problem (exposed for tests and benchmarks).
struct TopkPlan {
  bool tiled = false;          // the register-tiled kernel (16, 32 or 64 queries per block)
  int queries_per_block = 0;   // 2 .. 32 for the one-item-per-thread kernel
  int cap = 0;                 // candidate buffer per query (power of two >= k + 128)
  int merge_cap = 0;           // candidate buffer of the merge kernel (power of two >= k + 256)
  int64_t chunk_items = 0;     // items per block of kernel 1 (a multiple of 128)
  int n_chunks = 0;
  size_t smem_score = 0, smem_merge = 0;  // dynamic shared memory bytes
  size_t workspace_bytes = 0;
};

TopkPlan plan_topk(int64_t B, int64_t n, int D, int k, int device);

// Everything on `stream`, asynchronous. out_scores/out_ids: [B, k]; out_count: [B].
void topk_device(const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo, int64_t n,
                 int k, const int64_t* ex_off, const int32_t* ex_ids, float* out_scores, int32_t* out_ids,
                 int32_t* out_count, TopkWorkspace& ws, cudaStream_t stream);

}  // namespace cuda
}  // namespace ada
