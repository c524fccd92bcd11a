// Exact top-k retrieval by dot product over item shards, on the CPU or a CUDA device.
//
// Every searcher answers the same question for a range of the catalog: for each query row u_b, the
// k best items j in [lo, hi) by score s_j = <u_b, e_j> + b_j, skipping item 0 (padding) and the
// row's excluded ids, in the one order used everywhere in this library:
//
//   (s_a, a) comes before (s_b, b)  iff  s_a > s_b, or s_a == s_b and a < b;  NaN scores count as -inf.
//
// A shard may have fewer than k candidates for a row (a small shard, or most of it excluded): its
// list is then shorter (count[b] < k). ShardedSearcher merges the shards' lists into the exact
// top-k of the whole catalog: an item of the global top-k is in its own shard's top-k, so the merge
// of the shards' lists holds it. A score does not depend on the split, so sharded and unsharded
// searches return identical lists (tested bit for bit).
//
//   ada::ShardedSearcher index;
//   index.add(ada::make_cpu_searcher(E, bias, 1, 500000, D));        // items [1, 500000) on the CPU
//   index.add(ada::make_gpu_searcher(E, bias, 500000, N, D, 0));     // the rest on GPU 0
//   ada::TopkLists top = index.search(U, B, 100, exclude);
//
// Across processes or GPUs the same merge applies to the lists gathered from each shard
// (docs/design.md, "Sharded retrieval").
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ada/data.hpp"

namespace ada {

// NaN ranks below everything (a diverged model must not look perfect).
inline float topk_order_key(float s) { return s == s ? s : -std::numeric_limits<float>::infinity(); }

// True when (sa, a) is the better candidate: higher score, then smaller id.
inline bool topk_before(float sa, ItemId a, float sb, ItemId b) {
  const float ka = topk_order_key(sa), kb = topk_order_key(sb);
  return ka > kb || (ka == kb && a < b);
}

// Per-row ranked lists: row b holds count[b] <= k entries at ids[b*k ...], scores[b*k ...], best
// first; the unused tail of a row holds id -1 and score -inf.
struct TopkLists {
  int64_t rows = 0;
  int k = 0;
  std::vector<ItemId> ids;
  std::vector<float> scores;
  std::vector<int32_t> count;

  void reset(int64_t rows, int k);
  // The row's list as (id) values, count[b] of them.
  std::vector<ItemId> row_ids(int64_t b) const;
};

// One shard of the catalog: items [lo, hi) of a table [N, D] with optional bias [N].
class TopkSearcher {
 public:
  virtual ~TopkSearcher() = default;
  virtual const char* name() const = 0;
  virtual int64_t lo() const = 0;
  virtual int64_t hi() const = 0;
  virtual int64_t dim() const = 0;
  // U: [B, dim()] row-major on the host. exclude (and extra when non-null) are B-row lists of
  // global ids (any order, duplicates allowed; ids outside [lo, hi) are ignored by this shard).
  // Returns up to k items per row (fewer when the shard has fewer candidates). k >= 1.
  virtual TopkLists search(const float* U, int64_t B, int k, const Ragged& exclude,
                           const Ragged* extra = nullptr) = 0;
};

// A CPU shard over items [lo, hi); it keeps its own copy of the rows (in panels of 16 items).
// Scores are fma(u[d], e[d], acc) over d = 0..D-1 from 0, plus the bias: the CUDA kernel's
// arithmetic, so CPU and GPU shards give bit-identical scores and lists, whatever the split of the
// catalog. (The evaluation's topk_excluding uses sgemm instead; it can differ from this in the last
// bits.) For searches of one or two queries it also keeps an int8 copy of the rows (D bytes and
// 12 more per item: 76 MB at 1M items, D = 64, beside the 256 MB float copy): it scores every
// item from that copy with an error bound and rescores only the items the bound cannot rule out,
// which gives the same lists and scores bit for bit and reads a quarter of the bytes.
std::unique_ptr<TopkSearcher> make_cpu_searcher(const float* E, const float* bias, int64_t lo,
                                                int64_t hi, int64_t D);

// A CUDA shard over items [lo, hi) on `device`: the rows and bias are copied to the device once; a
// search uploads the queries and exclusion lists and runs the fused score + top-k kernel (no B x N
// score matrix). Several shards may share one device. Throws ada::Error when this build has no CUDA
// or the device cannot be used; k up to 1024.
std::unique_ptr<TopkSearcher> make_gpu_searcher(const float* E, const float* bias, int64_t lo,
                                                int64_t hi, int64_t D, int device = 0);
// The largest k the GPU kernel supports.
constexpr int kGpuTopkMaxK = 1024;
// GPU searches choose among several launches that return the same lists (which bounds kernel,
// tensor cores or not, how many threads select each query's items). The switches below fix a
// choice, for tests and benchmarks; each left at its default (auto) is autotuned: the first search
// of a kind (device, batch size rounded up to a power of two, catalog range, D, k rounded up to a
// power of two, bias or not) times every launch the auto switches allow on its own inputs, waiting
// for them (once per kind: up to about 17 times that search's time for a search of 2 ms or more,
// 49 for a short one), and every later search of that kind takes the fastest. Without tuning,
// fixed rules choose (below). The lists never depend on it.
// Off: set_gpu_topk_autotune(TopkAutotune::kOff), or ADA_TOPK_AUTOTUNE=0 in the environment
// (until set, the environment's: 0, 1 or verbose; unset: on; another value makes GPU searches
// throw ada::Error naming it). kVerbose: each tuning is also described on stderr. A search on a
// stream being captured into a CUDA graph never tunes. Changing this or any switch below forgets
// the tunings. Process-wide; no-ops without CUDA (kOff there).
enum class TopkAutotune { kOff, kOn, kVerbose };
void set_gpu_topk_autotune(TopkAutotune mode);
TopkAutotune gpu_topk_autotune();
// What the tunings so far measured and chose, in the order they were made.
struct GpuTopkTuning {
  int device = 0;
  int64_t batch = 0;  // batches of up to this many queries (a power of two)
  int64_t items = 0;  // the searched range's size
  int dim = 0;
  int k = 0;          // k up to this (a power of two, at most kGpuTopkMaxK)
  bool bias = false;
  std::string chosen;  // e.g. "mma.sync bounds, 256 select threads"
  double chosen_ms = 0;
  std::vector<std::pair<std::string, double>> tried;  // every launch timed: description, best time in ms
};
std::vector<GpuTopkTuning> gpu_topk_tunings();

// Whether GPU searches bound scores on tensor cores (TF32, then exact FP32 rescoring of whatever
// the bounds cannot rule out) or with the FP32 kernels. kAuto (the default): tuned; without tuning,
// tensor cores for 64 queries or more over 65,536 items or more (on an H100 they were faster at 1M
// items and slower at 12k; the cut between is not measured). kAlways: from 64 queries on, whatever
// the items; kNever. The lists are the same in every mode.
enum class TensorCores { kAuto, kAlways, kNever };
void set_gpu_topk_tensor_cores(TensorCores mode);
// Whether GPU searches of fewer than 16 queries with D = 32 or 64 stage the table's rows in shared
// memory, read coalesced (true, the default), or read each row straight from global memory. The
// lists are the same either way; for tests and benchmarks. Process-wide; a no-op without CUDA.
void set_gpu_topk_staged(bool on);
// Which kernel bounds the scores on tensor cores (when they are used, above): kWmma (wmma
// fragments, the products through shared memory), kWmmaShared (the same with the products stored
// over the item tile just used: less shared memory per block, so more blocks per multiprocessor,
// for two more barriers per tile), kMma (mma.sync, the products folded in registers, the item tiles
// loaded asynchronously; not yet run on a GPU), kAuto (the default): tuned, or kWmma without tuning.
// The lists are the same.
enum class TcKernel { kWmma, kWmmaShared, kMma, kAuto };
void set_gpu_topk_tc_kernel(TcKernel kernel);
// Threads per query in the GPU searches' selection step: 0 (the default) tuned among 32, 64, 128,
// 256 and the batch's rule (without tuning: 1024 for small batches and 256 otherwise); or a
// multiple of 32 up to 1024 (32: one warp per query and many queries per multiprocessor, no wait on
// other warps at its barriers). ada::Error otherwise. The lists are the same.
void set_gpu_topk_select_threads(int threads);

// Exact merge of shard results for the same rows: the best k of the union, in the order above.
// Shards must cover disjoint item ranges (a repeated id is an error).
TopkLists merge_topk(const std::vector<TopkLists>& parts, int k);

// Shards covering [1, N) (or any set of disjoint ranges) searched one after the other and merged.
class ShardedSearcher {
 public:
  void add(std::unique_ptr<TopkSearcher> shard);
  size_t size() const { return shards_.size(); }
  // Throws when the shards overlap, their dims differ, or a row has fewer than k candidates over
  // all shards (the message names the row and the count), or k < 1.
  TopkLists search(const float* U, int64_t B, int k, const Ragged& exclude,
                   const Ragged* extra = nullptr);

 private:
  std::vector<std::unique_ptr<TopkSearcher>> shards_;
};

// Splits [1, N) into `shards` contiguous ranges of near-equal size (item 0, padding, is in none).
std::vector<std::pair<int64_t, int64_t>> split_items(int64_t N, int shards);

}  // namespace ada
