// Full-ranking evaluation and top-k retrieval on the CPU (see eval.hpp, reference-spec section 4).
//
// Both functions score a block of users against the whole catalog with one sgemm, then scan each
// score row. A block always spans all items, so a row's target score and its competitors' scores
// come out of the same sgemm call and compare exactly (a separately computed dot product could
// round differently and flip near-ties). sgemm runs outside OpenMP regions because OpenBLAS brings
// its own threads.
//
// The row scans run in an OpenMP loop only with the OpenMP build of OpenBLAS (the one CMakeLists.txt
// links), whose sgemm uses the same thread pool. With the pthread build (Debian's default, used when
// the OpenMP build is missing), the two pools alternate once per block and each one's idle workers
// spin while the other works. Measured on the
// 2-core development machine (B = 22,363, N = 12,102, D = 64, -O3): serial scans after a 2-thread
// sgemm take 0.36 s (the scans are a small, cache-bound part; sgemm dominates), OpenMP scans
// 0.9-2.8 s; with OPENBLAS_NUM_THREADS=1 and another process busy, OpenMP scans take 1.3-2.1 s
// against 0.44 s serial. OMP_WAIT_POLICY=passive removes the penalty but cannot be set from here.
#include "ada/eval.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "ada/check.hpp"
#include "src/eval/threads.hpp"

namespace ada {

namespace {

// About 4 MB of scores per block: big enough for an efficient sgemm, small enough to stay in the
// last-level cache while the rows are scanned right after.
constexpr int64_t kBlockScores = int64_t(1) << 20;
constexpr int64_t kMinBlockRows = 16;
constexpr int64_t kMaxBlockRows = 512;

int64_t block_rows(int64_t B, int64_t N) {
  const int64_t rows = std::clamp(kBlockScores / std::max<int64_t>(N, 1), kMinBlockRows, kMaxBlockRows);
  return std::max<int64_t>(1, std::min(rows, B));
}


void check_shapes(const char* fn, const float* U, int64_t B, const float* E, int64_t N, int64_t D) {
  ADA_CHECK(B >= 0, fn << ": negative number of users " << B);
  ADA_CHECK(N >= 1, fn << ": the catalog needs at least the padding item, got N = " << N);
  ADA_CHECK(D >= 1, fn << ": embedding size must be positive, got D = " << D);
  // cblas takes int dimensions and leading dimensions.
  ADA_CHECK(N <= INT32_MAX && D <= INT32_MAX, fn << ": N = " << N << " or D = " << D << " too large for BLAS");
  ADA_CHECK(B == 0 || U != nullptr, fn << ": null user matrix");
  ADA_CHECK(E != nullptr, fn << ": null item matrix");
}

void check_ragged(const char* fn, const char* what, const Ragged& r, int64_t B, int64_t N) {
  ADA_CHECK(r.offsets.size() >= 1 && int64_t(r.rows()) == B,
            fn << ": " << what << " has " << (r.offsets.empty() ? 0 : r.rows()) << " rows, expected " << B);
  ADA_CHECK(r.offsets.front() == 0 && r.offsets.back() == int64_t(r.ids.size()),
            fn << ": " << what << " offsets do not span its " << r.ids.size() << " ids");
  // Monotone offsets first: with the checks above they keep every row inside `ids`.
  for (int64_t b = 0; b < B; ++b)
    ADA_CHECK(r.offsets[b] <= r.offsets[b + 1], fn << ": " << what << " offsets decrease at row " << b);
  for (int64_t b = 0; b < B; ++b)
    for (const ItemId* p = r.row_begin(b); p != r.row_end(b); ++p)
      ADA_CHECK(*p >= 0 && *p < N, fn << ": " << what << " row " << b << " holds item " << *p
                                      << ", outside 0.." << N - 1);
}

// Whether the per-row scans may use OpenMP without fighting OpenBLAS's own threads (see the top).
bool parallel_scans() { return max_threads() > 1 && openblas_get_parallel() == OPENBLAS_OPENMP; }

// scores[r, j] = <U[r], E[j]> for the rows of one block; bias is added by the scans.
void score_block(const float* U_block, int64_t rows, const float* E, int64_t N, int64_t D, float* scores) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(N), int(D), 1.0f, U_block, int(D), E,
              int(D), 0.0f, scores, int(N));
}

// #{ j in 1..N-1 : s_j > st }, with s_j = row[j] (+ bias[j]). Written as a flat count so the compiler
// vectorises it; exclusions are corrected afterwards instead of being tested per item.
int64_t count_above(const float* row, const float* bias, int64_t N, float st) {
  int32_t cnt = 0;
  if (bias) {
    for (int64_t j = 1; j < N; ++j) cnt += (row[j] + bias[j]) > st ? 1 : 0;
  } else {
    for (int64_t j = 1; j < N; ++j) cnt += row[j] > st ? 1 : 0;
  }
  return cnt;
}

using Scored = std::pair<float, ItemId>;

// NaN scores (a diverged model) rank below everything, so the heap order stays a strict weak order.
inline float order_key(float s) { return s == s ? s : -std::numeric_limits<float>::infinity(); }

// Heap order for top-k: a is "less" than b when a is the better candidate (higher score, then
// smaller id), so the heap front is the worst kept item.
struct Better {
  bool operator()(const Scored& a, const Scored& b) const {
    const float ka = order_key(a.first), kb = order_key(b.first);
    return ka > kb || (ka == kb && a.second < b.second);
  }
};

// Per-thread scratch of topk_row.
struct TopkWorkspace {
  std::vector<Scored> heap;
  std::vector<float> chunk_max;
  std::vector<uint32_t> chunk_key;
};

inline void offer(std::vector<Scored>& heap, int k, float s, ItemId j) {
  const Better better;
  if (int64_t(heap.size()) < k) {
    heap.emplace_back(s, j);
    std::push_heap(heap.begin(), heap.end(), better);
  } else if (better(Scored{s, j}, heap.front())) {
    std::pop_heap(heap.begin(), heap.end(), better);
    heap.back() = {s, j};
    std::push_heap(heap.begin(), heap.end(), better);
  }
}

// Stamps row b's excluded items (exclude and extra) with `mark` and returns how many distinct items
// 1..N-1 that is; duplicates and item 0 (never a candidate) are not counted.
int64_t mark_excluded(const Ragged& exclude, const Ragged* extra, int64_t b, uint32_t* seen, uint32_t mark) {
  int64_t n = 0;
  auto mark_row = [&](const Ragged& rg) {
    for (const ItemId* p = rg.row_begin(size_t(b)); p != rg.row_end(size_t(b)); ++p)
      if (*p != 0 && seen[*p] != mark) {
        seen[*p] = mark;
        ++n;
      }
  };
  mark_row(exclude);
  if (extra) mark_row(*extra);
  return n;
}

// Unsigned integer with the same order as the (non-NaN) float.
inline uint32_t float_order_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float float_from_order_key(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Items per chunk for the top-k prefilter: small enough that only a few chunks survive it, large
// enough that selecting among the chunk maxima is cheap.
constexpr int64_t kChunkItems = 16;
// Order-key bits of the prefilter threshold that are not searched (see topk_row).
constexpr int kTauLowBits = 16;

// Top-k of one score row over items 1..N-1 whose stamp is not `mark` (n_excluded = how many distinct
// items 1..N-1 carry the mark); adds the bias to s in place and writes the result best first. The
// caller guarantees at least k candidates.
//
// Prefilter: split the items into G chunks and let tau be the (k + n_excluded)-th largest chunk
// maximum. That many chunks each hold a distinct item scoring >= tau and at most n_excluded of them
// are excluded, so at least k candidates score >= tau: the top k all score >= tau, and only chunks
// whose maximum reaches tau need a look. Chunk c is the strided set {1 + c + r*G}, so the chunk
// maxima are an element-wise max over contiguous slices that the compiler vectorises, and tau is
// found by a branch-free bitwise search over the maxima's order keys. Whenever the heap ends up
// full it holds the exact answer (k candidates >= tau mean the true k-th score is >= tau, and every
// item >= tau lies in a chunk that was scanned), so NaN maxima (treated as +inf) only ever cost the
// full-scan fallback.
void topk_row(float* s, const float* bias, int64_t N, int k, int64_t n_excluded, const uint32_t* seen,
              uint32_t mark, TopkWorkspace& ws, ItemId* ids, float* out) {
  const int64_t n_items = N - 1;
  const int64_t G = (n_items + kChunkItems - 1) / kChunkItems;
  const int64_t need = int64_t(k) + n_excluded;
  auto& heap = ws.heap;
  heap.clear();
  bool bias_added = false;
  if (need < G) {
    float* item = s + 1;  // item[i] is the score of item id i + 1
    const float* item_bias = bias ? bias + 1 : nullptr;
    ws.chunk_max.resize(size_t(G));
    float* cmax = ws.chunk_max.data();
    if (item_bias)
      for (int64_t c = 0; c < G; ++c) item[c] += item_bias[c];
    std::copy(item, item + G, cmax);
    for (int64_t begin = G; begin < n_items; begin += G) {
      const int64_t len = std::min(G, n_items - begin);
      float* slice = item + begin;
      if (item_bias) {
        const float* bslice = item_bias + begin;
        for (int64_t c = 0; c < len; ++c) {
          const float v = slice[c] + bslice[c];
          slice[c] = v;
          cmax[c] = v > cmax[c] ? v : cmax[c];
        }
      } else {
        for (int64_t c = 0; c < len; ++c) cmax[c] = slice[c] > cmax[c] ? slice[c] : cmax[c];
      }
    }
    bias_added = true;

    ws.chunk_key.resize(size_t(G));
    uint32_t* key = ws.chunk_key.data();
    for (int64_t c = 0; c < G; ++c)
      key[c] = float_order_key(cmax[c] == cmax[c] ? cmax[c] : std::numeric_limits<float>::infinity());
    // Largest t with #{c : key[c] >= t} >= need, i.e. the need-th largest key, found bit by bit.
    // The low bits are left at zero: rounding tau down keeps the bound valid, costs a slightly
    // looser filter (about 1% of the score) and halves the search.
    uint32_t tau_key = 0;
    for (int bit = 31; bit >= kTauLowBits; --bit) {
      const uint32_t trial = tau_key | (uint32_t(1) << bit);
      int32_t count = 0;
      for (int64_t c = 0; c < G; ++c) count += key[c] >= trial ? 1 : 0;
      if (count >= need) tau_key = trial;
    }
    const float tau = float_from_order_key(tau_key);
    for (int64_t c = 0; c < G; ++c) {
      if (key[c] < tau_key) continue;
      for (int64_t i = c; i < n_items; i += G) {
        const int64_t j = i + 1;
        if (s[j] >= tau && seen[j] != mark) offer(heap, k, s[j], ItemId(j));
      }
    }
    if (int64_t(heap.size()) < k) heap.clear();
  }
  if (heap.empty()) {
    // k close to the catalog size, or NaN scores: every candidate goes through the heap.
    if (bias && !bias_added)
      for (int64_t j = 1; j < N; ++j) s[j] += bias[j];
    for (int64_t j = 1; j < N; ++j)
      if (seen[j] != mark) offer(heap, k, s[j], ItemId(j));
  }
  std::sort_heap(heap.begin(), heap.end(), Better());  // best first
  for (int i = 0; i < k; ++i) {
    ids[i] = heap[size_t(i)].second;
    out[i] = heap[size_t(i)].first;
  }
}

}  // namespace

std::vector<int32_t> full_ranking_ranks(const float* U, int64_t B, const float* E, const float* bias,
                                        int64_t N, int64_t D, const ItemId* targets,
                                        const Ragged& exclude) {
  static const char* kFn = "full_ranking_ranks";
  check_shapes(kFn, U, B, E, N, D);
  ADA_CHECK(B == 0 || targets != nullptr, kFn << ": null targets");
  for (int64_t b = 0; b < B; ++b)
    ADA_CHECK(targets[b] >= 1 && targets[b] < N,
              kFn << ": target of row " << b << " is item " << targets[b] << ", outside 1.." << N - 1);
  check_ragged(kFn, "exclude", exclude, B, N);

  std::vector<int32_t> ranks(size_t(B), 0);
  if (B == 0) return ranks;
  const int64_t rows_per_block = block_rows(B, N);
  std::vector<float> scores(size_t(rows_per_block * N));
  const bool parallel = parallel_scans();
  // Per-thread "seen in this row" stamps: dedupe exclusion lists in O(length) without clearing.
  const int n_threads = parallel ? max_threads() : 1;
  std::vector<uint32_t> stamps(size_t(n_threads) * size_t(N), 0);

  for (int64_t b0 = 0; b0 < B; b0 += rows_per_block) {
    const int64_t rows = std::min(rows_per_block, B - b0);
    score_block(U + b0 * D, rows, E, N, D, scores.data());
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = b0 + r;
      const float* row = scores.data() + r * N;
      const ItemId t = targets[b];
      const float st = bias ? row[t] + bias[t] : row[t];
      int64_t rank = count_above(row, bias, N, st);
      uint32_t* seen = stamps.data() + size_t(thread_id()) * size_t(N);
      const uint32_t mark = uint32_t(b) + 1;
      for (const ItemId* p = exclude.row_begin(b); p != exclude.row_end(b); ++p) {
        const ItemId j = *p;
        // Item 0 was never counted and the target stays a candidate.
        if (j == 0 || j == t || seen[j] == mark) continue;
        seen[j] = mark;
        const float sj = bias ? row[j] + bias[j] : row[j];
        if (sj > st) --rank;
      }
      ranks[size_t(b)] = int32_t(rank);
    }
  }
  return ranks;
}

void topk_excluding(const float* U, int64_t B, const float* E, const float* bias, int64_t N,
                    int64_t D, int k, const Ragged& exclude, const Ragged* extra, ItemId* out_ids,
                    float* out_scores) {
  static const char* kFn = "topk_excluding";
  check_shapes(kFn, U, B, E, N, D);
  ADA_CHECK(k > 0, kFn << ": k must be positive, got " << k);
  check_ragged(kFn, "exclude", exclude, B, N);
  if (extra) check_ragged(kFn, "extra", *extra, B, N);
  if (B == 0) return;
  ADA_CHECK(out_ids != nullptr && out_scores != nullptr, kFn << ": null output");

  const bool parallel = parallel_scans();
  const int n_threads = parallel ? max_threads() : 1;
  std::vector<uint32_t> stamps(size_t(n_threads) * size_t(N), 0);
  // Every row must have k candidates; checked up front because errors cannot leave an OpenMP loop.
  {
    uint32_t* seen = stamps.data();
    for (int64_t b = 0; b < B; ++b) {
      const uint32_t mark = uint32_t(b) + 1;
      const int64_t excluded = mark_excluded(exclude, extra, b, seen, mark);
      const int64_t candidates = N - 1 - excluded;
      ADA_CHECK(k <= candidates, kFn << ": row " << b << " has " << candidates << " candidate items ("
                                     << N - 1 << " items minus " << excluded << " excluded), fewer than k = "
                                     << k);
    }
    std::fill(stamps.begin(), stamps.end(), 0u);
  }

  const int64_t rows_per_block = block_rows(B, N);
  std::vector<float> scores(size_t(rows_per_block * N));
  std::vector<TopkWorkspace> workspaces(static_cast<size_t>(n_threads));

  for (int64_t b0 = 0; b0 < B; b0 += rows_per_block) {
    const int64_t rows = std::min(rows_per_block, B - b0);
    score_block(U + b0 * D, rows, E, N, D, scores.data());
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = b0 + r;
      float* row = scores.data() + r * N;
      const int tid = thread_id();
      uint32_t* seen = stamps.data() + size_t(tid) * size_t(N);
      const uint32_t mark = uint32_t(b) + 1;
      const int64_t n_excluded = mark_excluded(exclude, extra, b, seen, mark);
      topk_row(row, bias, N, k, n_excluded, seen, mark, workspaces[size_t(tid)], out_ids + b * k,
               out_scores + b * k);
    }
  }
}

std::map<std::string, double> ranking_metrics(const std::vector<int32_t>& ranks, const std::vector<int>& ks) {
  ADA_CHECK(!ranks.empty(), "ranking_metrics: no ranks to average");
  for (size_t i = 0; i < ranks.size(); ++i)
    ADA_CHECK(ranks[i] >= 0, "ranking_metrics: rank " << i << " is negative (" << ranks[i] << ")");
  std::map<std::string, double> out;
  for (int k : ks) {
    ADA_CHECK(k > 0, "ranking_metrics: cutoff k must be positive, got " << k);
    double hits = 0, ndcg = 0;
    for (int32_t r : ranks) {
      if (r < k) {
        hits += 1;
        ndcg += 1.0 / std::log2(double(r) + 2.0);
      }
    }
    const double n = double(ranks.size());
    out["hit@" + std::to_string(k)] = hits / n;
    out["ndcg@" + std::to_string(k)] = ndcg / n;
  }
  return out;
}

}  // namespace ada
