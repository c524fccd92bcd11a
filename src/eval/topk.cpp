// CPU shards, the exact merge and the sharded searcher (see topk.hpp).
#include "ada/topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "ada/check.hpp"

namespace ada {

void TopkLists::reset(int64_t n_rows, int n_k) {
  rows = n_rows;
  k = n_k;
  ids.assign(size_t(n_rows * n_k), ItemId(-1));
  scores.assign(size_t(n_rows * n_k), -std::numeric_limits<float>::infinity());
  count.assign(size_t(n_rows), 0);
}

std::vector<ItemId> TopkLists::row_ids(int64_t b) const {
  ADA_CHECK(b >= 0 && b < rows, "TopkLists: row " << b << " outside 0.." << rows - 1);
  const ItemId* p = ids.data() + b * k;
  return std::vector<ItemId>(p, p + count[size_t(b)]);
}

namespace {

using Scored = std::pair<float, ItemId>;

// Heap order: the front is the worst kept candidate.
struct HeapBetter {
  bool operator()(const Scored& a, const Scored& b) const { return topk_before(a.first, a.second, b.first, b.second); }
};

void check_range(const char* fn, const float* E, int64_t lo, int64_t hi, int64_t D) {
  ADA_CHECK(E != nullptr, fn << ": null item table");
  ADA_CHECK(D >= 1, fn << ": embedding size must be positive, got " << D);
  ADA_CHECK(lo >= 0 && lo < hi, fn << ": empty or negative item range [" << lo << ", " << hi << ")");
  ADA_CHECK(hi - lo <= INT32_MAX && D <= INT32_MAX, fn << ": range or D too large for BLAS");
  ADA_CHECK(hi <= int64_t(INT32_MAX), fn << ": item ids must fit ItemId, hi = " << hi);
}

void check_query(const char* fn, int64_t B, int k, const Ragged& exclude, const Ragged* extra) {
  ADA_CHECK(B >= 0, fn << ": negative number of queries " << B);
  ADA_CHECK(k >= 1, fn << ": k must be positive, got " << k);
  ADA_CHECK(int64_t(exclude.rows()) == B, fn << ": exclude has " << exclude.rows() << " rows, expected " << B);
  ADA_CHECK(!extra || int64_t(extra->rows()) == B,
            fn << ": extra exclusions have " << extra->rows() << " rows, expected " << B);
}

// Scores are computed as acc = fma(u[d], e[d], acc) for d = 0 .. D-1 from acc = 0, then acc + b:
// the same arithmetic as the CUDA kernel, so a CPU shard and a GPU shard give bit-identical scores,
// and a score does not depend on how the catalog is split (an sgemm's rounding depends on the
// blocking, which would let near-ties flip between layouts). The shard keeps its rows transposed
// ([D, n]) so the fma chain vectorises across items.
class CpuSearcher final : public TopkSearcher {
 public:
  CpuSearcher(const float* E, const float* bias, int64_t lo, int64_t hi, int64_t D)
      : lo_(lo), hi_(hi), D_(D) {
    check_range("cpu searcher", E, lo, hi, D);
    const int64_t n = hi - lo;
    Et_.resize(size_t(n * D));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < D; ++d) Et_[size_t(d * n + i)] = E[(lo + i) * D + d];
    if (bias) bias_.assign(bias + lo, bias + hi);
  }
  const char* name() const override { return "cpu"; }
  int64_t lo() const override { return lo_; }
  int64_t hi() const override { return hi_; }
  int64_t dim() const override { return D_; }

  TopkLists search(const float* U, int64_t B, int k, const Ragged& exclude, const Ragged* extra) override {
    check_query("cpu searcher", B, k, exclude, extra);
    TopkLists out;
    out.reset(B, k);
    if (B == 0) return out;
    ADA_CHECK(U != nullptr, "cpu searcher: null queries");
    const int64_t n = hi_ - lo_;
    const HeapBetter better;
    const int64_t n_blocks = (B + kRows - 1) / kRows;
    // Blocks of kRows queries in parallel; each thread owns its scratch. Every result is a
    // function of its row alone, so the thread count changes nothing.
#pragma omp parallel if (n_blocks > 1)
    {
    std::vector<float> acc(size_t(kRows * kTileItems));
    std::vector<std::vector<Scored>> heaps(static_cast<size_t>(kRows));
    std::vector<std::vector<ItemId>> excl(static_cast<size_t>(kRows));
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t b0 = blk * kRows;
      const int rows = int(std::min<int64_t>(kRows, B - b0));
      for (int r = 0; r < rows; ++r) {
        heaps[size_t(r)].clear();
        shard_exclusions(b0 + r, exclude, extra, excl[size_t(r)]);
      }
      for (int64_t t0 = 0; t0 < n; t0 += kTileItems) {
        const int64_t tn = std::min<int64_t>(kTileItems, n - t0);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t d = 0; d < D_; ++d) {
          const float* et = Et_.data() + d * n + t0;
          for (int r = 0; r < rows; ++r) {
            const float u = U[(b0 + r) * D_ + d];
            float* a = acc.data() + r * kTileItems;
            for (int64_t j = 0; j < tn; ++j) a[j] = std::fma(u, et[j], a[j]);
          }
        }
        for (int r = 0; r < rows; ++r) {
          auto& heap = heaps[size_t(r)];
          const auto& ex = excl[size_t(r)];
          const float* a = acc.data() + r * kTileItems;
          for (int64_t j = 0; j < tn; ++j) {
            const ItemId id = ItemId(lo_ + t0 + j);
            const float v = bias_.empty() ? a[j] : a[j] + bias_[size_t(t0 + j)];
            const bool full = int64_t(heap.size()) == k;
            if ((full && !better(Scored{v, id}, heap.front())) || id == 0 ||
                std::binary_search(ex.begin(), ex.end(), id))
              continue;
            if (full) {
              std::pop_heap(heap.begin(), heap.end(), better);
              heap.back() = {v, id};
            } else {
              heap.emplace_back(v, id);
            }
            std::push_heap(heap.begin(), heap.end(), better);
          }
        }
      }
      for (int r = 0; r < rows; ++r) {
        auto& heap = heaps[size_t(r)];
        std::sort_heap(heap.begin(), heap.end(), better);
        const size_t base = size_t((b0 + r) * k);
        for (size_t i = 0; i < heap.size(); ++i) {
          out.ids[base + i] = heap[i].second;
          out.scores[base + i] = heap[i].first;
        }
        out.count[size_t(b0 + r)] = int32_t(heap.size());
      }
    }
    }  // omp parallel
    return out;
  }

 private:
  static constexpr int kRows = 8;            // query rows per pass over the shard
  static constexpr int64_t kTileItems = 512;  // items per tile: kRows x 512 accumulators stay in L1

  // Row b's excluded ids inside this shard, sorted and unique.
  void shard_exclusions(int64_t b, const Ragged& exclude, const Ragged* extra, std::vector<ItemId>& out) const {
    out.clear();
    auto take = [&](const Ragged& rg) {
      for (const ItemId* p = rg.row_begin(size_t(b)); p != rg.row_end(size_t(b)); ++p)
        if (*p >= lo_ && *p < hi_) out.push_back(*p);
    };
    take(exclude);
    if (extra) take(*extra);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }

  int64_t lo_, hi_, D_;
  std::vector<float> Et_;    // [D, n]
  std::vector<float> bias_;  // [n], empty without bias
};

}  // namespace

std::unique_ptr<TopkSearcher> make_cpu_searcher(const float* E, const float* bias, int64_t lo, int64_t hi,
                                                int64_t D) {
  return std::make_unique<CpuSearcher>(E, bias, lo, hi, D);
}

TopkLists merge_topk(const std::vector<TopkLists>& parts, int k) {
  ADA_CHECK(k >= 1, "merge_topk: k must be positive, got " << k);
  ADA_CHECK(!parts.empty(), "merge_topk: nothing to merge");
  const int64_t rows = parts.front().rows;
  for (size_t p = 0; p < parts.size(); ++p)
    ADA_CHECK(parts[p].rows == rows, "merge_topk: part " << p << " has " << parts[p].rows << " rows, part 0 has "
                                                         << rows);
  TopkLists out;
  out.reset(rows, k);
  std::vector<Scored> all;
  for (int64_t b = 0; b < rows; ++b) {
    all.clear();
    for (const TopkLists& part : parts) {
      const size_t base = size_t(b * part.k);
      for (int32_t i = 0; i < part.count[size_t(b)]; ++i)
        all.emplace_back(part.scores[base + size_t(i)], part.ids[base + size_t(i)]);
    }
    const size_t take = std::min(all.size(), size_t(k));
    const HeapBetter better;
    std::partial_sort(all.begin(), all.begin() + std::ptrdiff_t(take), all.end(), better);
    for (size_t i = 0; i + 1 < take; ++i)
      ADA_CHECK(all[i].second != all[i + 1].second,
                "merge_topk: item " << all[i].second << " appears in two parts (row " << b
                                    << "): shards must not overlap");
    for (size_t i = 0; i < take; ++i) {
      out.ids[size_t(b * k) + i] = all[i].second;
      out.scores[size_t(b * k) + i] = all[i].first;
    }
    out.count[size_t(b)] = int32_t(take);
  }
  return out;
}

void ShardedSearcher::add(std::unique_ptr<TopkSearcher> shard) {
  ADA_CHECK(shard != nullptr, "ShardedSearcher: null shard");
  for (const auto& s : shards_) {
    ADA_CHECK(s->dim() == shard->dim(),
              "ShardedSearcher: shard dims differ (" << s->dim() << " and " << shard->dim() << ")");
    ADA_CHECK(shard->hi() <= s->lo() || s->hi() <= shard->lo(),
              "ShardedSearcher: shard [" << shard->lo() << ", " << shard->hi() << ") overlaps [" << s->lo() << ", "
                                         << s->hi() << ")");
  }
  shards_.push_back(std::move(shard));
}

TopkLists ShardedSearcher::search(const float* U, int64_t B, int k, const Ragged& exclude, const Ragged* extra) {
  ADA_CHECK(!shards_.empty(), "ShardedSearcher: no shards");
  check_query("ShardedSearcher", B, k, exclude, extra);
  std::vector<TopkLists> parts;
  parts.reserve(shards_.size());
  for (auto& s : shards_) parts.push_back(s->search(U, B, k, exclude, extra));
  TopkLists out = merge_topk(parts, k);
  for (int64_t b = 0; b < B; ++b)
    ADA_CHECK(out.count[size_t(b)] == k, "ShardedSearcher: row " << b << " has " << out.count[size_t(b)]
                                                                  << " candidate items over all shards, fewer than k = "
                                                                  << k);
  return out;
}

std::vector<std::pair<int64_t, int64_t>> split_items(int64_t N, int shards) {
  ADA_CHECK(N >= 2, "split_items: the catalog needs at least one item besides padding, N = " << N);
  ADA_CHECK(shards >= 1 && shards <= N - 1,
            "split_items: " << shards << " shards for " << N - 1 << " items (need 1.." << N - 1 << ")");
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t items = N - 1;
  for (int s = 0; s < shards; ++s)
    out.emplace_back(1 + items * s / shards, 1 + items * (s + 1) / shards);
  return out;
}

}  // namespace ada
