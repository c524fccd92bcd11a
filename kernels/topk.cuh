// The fused batched score + top-k kernel (device-pointer API, for the CUDA backend and benchmarks).
//
// For B queries U [B, D] and the items [lo, lo + n) of a table (E points at item lo's row, bias at
// item lo's bias or is null), writes per query the best k items by s = <u, e> + b in the order of
// topk.hpp (higher score, then smaller id), skipping global id 0 and the query's excluded ids
// ex_ids[ex_off[b] .. ex_off[b+1]) (sorted ascending; global ids). Rows with fewer candidates get
// fewer (out_count[b]); the tail holds id -1 and score -inf. The B x n score matrix is never written.
// U and E are read as float4 where D % 4 == 0: they must then be 16-byte aligned (cudaMalloc is).
//
// Two kernels whose results are exact (every score that reaches the output, and every comparison
// that decides it, is FP32 fmaf over d in order, then + bias: the CPU searcher's arithmetic, so
// lists and scores equal the CPU's bit for bit):
//  (1) bounds: the items are cut into groups of g (a power of two, 2k-16k groups); for each
//      query and group one pass writes the group's best item (score, id) and the best score of the
//      rest. Batches of 64 queries or more (D = 32, 64 or 128; by default over 2^16 items or more) use tensor cores: TF32
//      products, so the bounds are approximate, with a proven error margin that kernel 2 adds
//      (and a small pass writes each group's largest item norm and |bias| for it). Batches of 16
//      or more otherwise use a register-tiled FP32 kernel (8 items x up to 4 queries per thread,
//      item tiles staged in shared memory); smaller ones a warp per span of items.
//  (2) select, one block per query: tau = a score reached by the bests of k + (excluded) + 1 groups
//      (bisection over the group bests), so no item below tau can be in the top k; the groups whose
//      best reaches tau offer it, and the few whose other items might reach tau too (or whose best is
//      excluded) are rescored item by item; a candidate buffer with a running threshold keeps the k
//      best. Exclusions are looked up (binary search) only there.
// Neither writes the B x n score matrix: kernel 1 writes 12 bytes per query and group.
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
  bool tensor_cores = false;   // the TF32 bounds kernel (64 queries per block)
  int tc_kernel = 0;           // ... which one: 0 wmma, 1 wmma with its products over the item tile, 2 mma.sync
  bool tiled = false;          // the register-tiled bounds kernel (16, 32 or 64 queries per block)
  bool staged = false;         // the warp kernel that stages table rows in shared memory (D = 32, 64)
  int queries_per_block = 0;   // 1 .. 16 for the warp kernel; 64 or 128 for mma.sync
  int group = 0;               // items per group (a power of two >= 8)
  int64_t n_groups = 0;        // groups per query (<= 16384)
  int64_t chunk_items = 0;     // items per block of the tiled kernel (whole groups and tiles)
  int n_chunks = 0;
  int select_threads = 0;      // threads per block of the select kernel (256 or 1024)
  int cap = 0;                 // candidate buffer of the select kernel (power of two >= k + 4 select_threads)
  size_t smem_bounds = 0, smem_select = 0;  // dynamic shared memory bytes
  int64_t slice = 0;           // queries per pass (bounds the workspace)
  size_t workspace_bytes = 0;
};

// The process-wide settings a plan is made from (the setters below; TopkKnobs{} holds the defaults).
constexpr int kTcAuto = 3;
struct TopkKnobs {
  int tensor_cores = 0;      // topk_tensor_cores: 0 auto (by the items, unless tuned), 1 always, 2 never
  int tc_kernel = kTcAuto;   // topk_tc_kernel: 0 wmma, 1 wmma sharing, 2 mma.sync, kTcAuto (wmma unless tuned)
  int select_threads = 0;    // topk_select_threads: 0 by the batch (unless tuned)
  bool staged = true;        // topk_staged
};
TopkKnobs topk_knobs();

// The plan for these settings, the knobs left to auto resolved by fixed rules (no tuning).
TopkPlan plan_topk(int64_t B, int64_t n, int D, int k, int device, const TopkKnobs& knobs);
// plan_topk with the current settings.
TopkPlan plan_topk(int64_t B, int64_t n, int D, int k, int device);

// Everything on `stream`, asynchronous, except that the first search of a kind (below: autotuning)
// times its candidate launches and so waits for them. out_scores/out_ids: [B, k]; out_count: [B].
void topk_device(const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo, int64_t n,
                 int k, const int64_t* ex_off, const int32_t* ex_ids, float* out_scores, int32_t* out_ids,
                 int32_t* out_count, TopkWorkspace& ws, cudaStream_t stream);

// Autotuning (ada::set_gpu_topk_autotune, docs/design.md "Autotuning"): while it is on, the first
// topk_device of a kind (device, batch rounded up to a power of two, items, D, k rounded up to a
// power of two, bias or not) with any knob left to auto times the launches those knobs allow, each
// on its own inputs (a warm-up, then the best of up to 5 runs within about 2 ms), keeps the fastest
// for every later search of that kind, and runs it last, so that its results are the ones returned
// (every launch gives the same lists). Not while the stream is being captured into a graph: the
// fixed rules then. mode: 0 off (the fixed rules), 1 on, 2 on and each tuning described on stderr,
// -1 as the environment says (ADA_TOPK_AUTOTUNE = 0, 1 or verbose; unset: 1). Any change of mode or
// of a knob forgets the tunings.
void topk_autotune(int mode);
void topk_tunings_clear();

// Both kernels with a given plan (of plan_topk for these B, n, D, k on the current device), over
// every query slice; only kernel 1 without `select`. No tuning.
void run_topk_plan(const TopkPlan& p, const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo,
                   int64_t n, int k, const int64_t* ex_off, const int32_t* ex_ids, float* out_scores, int32_t* out_ids,
                   int32_t* out_count, TopkWorkspace& ws, cudaStream_t stream, bool select);

// When the tensor-core bounds kernel is used: 0 = auto (the default), 1 = always, 2 = never (the
// values of ada::TensorCores in topk.hpp; process-wide, for tests and benchmarks). Results are identical.
void topk_tensor_cores(int mode);

// Whether batches too small for the tiled kernel use the staged warp kernel (D = 32 or 64; the
// default) or the one that reads each row straight from global memory (process-wide, for tests and
// benchmarks). Results are identical.
void topk_staged(bool on);

// Which tensor-core bounds kernel runs (the values of ada::TcKernel in topk.hpp): 0 = wmma with its
// products in their own shared memory, 1 = the same with its products in the item tile's, after one
// more block barrier (53 instead of 87 KB per block at D = 64), 2 = mma.sync with the products folded
// in registers and the item tiles loaded by cp.async, kTcAuto (the default) = tuned, or wmma without
// tuning. Process-wide, for tests and benchmarks; results are identical.
void topk_tc_kernel(int kernel);

// Threads per block of the select kernel: 0 = tuned, or by the batch without tuning (the default:
// 1024 while the batch leaves multiprocessors idle, else 256), or 32 .. 1024 in multiples of 32
// (32: a warp per query, many queries per multiprocessor). Process-wide, for tests and benchmarks;
// results are identical.
void topk_select_threads(int threads);

// Kernel 1 alone (its output stays in ws): for benchmarks that split the time between the kernels.
// It takes the launch a tuning chose for its kind when there is one, and never tunes.
void topk_device_bounds_only(const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo,
                             int64_t n, int k, TopkWorkspace& ws, cudaStream_t stream);

}  // namespace cuda
}  // namespace ada
