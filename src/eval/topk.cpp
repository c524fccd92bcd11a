// CPU shards, the exact merge and the sharded searcher (see topk.hpp).
#include "ada/topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <utility>

#include "ada/check.hpp"
#include "src/eval/threads.hpp"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

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

// "a comes before b" (topk_before): sorting by it puts the best first.
struct Before {
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
// blocking, which would let near-ties flip between layouts).
//
// Layout and loops: the shard keeps its rows in panels of kPanel items, [panel][D][kPanel] (zero
// past the last item), so one panel is 4 KB of contiguous memory at D = 64 and the fma chain
// vectorises across its items. A micro-kernel holds kQ queries x kPanel items of accumulators in
// registers for the whole chain over d (8 vector registers with AVX2). A search splits into work
// units (rows x panels); a unit streams its panels once, a tile of kTilePanels at a time (128 KB at
// D = 64, in L2), and scores every group of kRows of its queries against the tile before moving on,
// so the table is read once per unit, not once per group of queries. With fewer query groups than
// threads the units split the items instead, and the rows' lists are merged at the end.
class CpuSearcher final : public TopkSearcher {
 public:
  CpuSearcher(const float* E, const float* bias, int64_t lo, int64_t hi, int64_t D)
      : lo_(lo), hi_(hi), D_(D) {
    check_range("cpu searcher", E, lo, hi, D);
    const int64_t n = hi - lo;
    n_panels_ = (n + kPanel - 1) / kPanel;
    // every element written once, by the thread of its panel (no zero fill first: the first touch of
    // 256 MB at 1M items, D = 64, took 110 ms of page faults on one thread)
    Ep_.reset(new float[size_t(n_panels_ * D * kPanel)]);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < n_panels_; ++p)
      for (int64_t x = 0; x < kPanel; ++x) {
        const int64_t i = p * kPanel + x;
        for (int64_t d = 0; d < D; ++d) Ep_[size_t((p * D + d) * kPanel + x)] = i < n ? E[(lo + i) * D + d] : 0.0f;
      }
    if (bias) bias_.assign(bias + lo, bias + hi);
    build_int8(bias);
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
    const std::vector<Unit> units = plan(B);
    std::vector<std::vector<std::vector<Scored>>> found(units.size());
    // Every result is a function of its row alone (exact top-k under one total order), so neither
    // the thread count nor the split into units changes it.
    const bool int8 = int8_applies(U, B);
#pragma omp parallel for schedule(dynamic, 1) if (units.size() > 1)
    for (size_t u = 0; u < units.size(); ++u)
      found[u] = int8 ? run_int8(units[u], U, k, exclude, extra) : run(units[u], U, k, exclude, extra);
    const Before better;
#pragma omp parallel for schedule(static) if (B >= 64)
    for (int64_t b = 0; b < B; ++b) {
      std::vector<Scored> row;
      for (size_t u = 0; u < units.size(); ++u)
        if (b >= units[u].b0 && b < units[u].b1) {
          const auto& h = found[u][size_t(b - units[u].b0)];
          row.insert(row.end(), h.begin(), h.end());
        }
      const size_t m = std::min(row.size(), size_t(k));
      std::partial_sort(row.begin(), row.begin() + std::ptrdiff_t(m), row.end(), better);
      const size_t base = size_t(b * k);
      for (size_t i = 0; i < m; ++i) {
        out.ids[base + i] = row[i].second;
        out.scores[base + i] = row[i].first;
      }
      out.count[size_t(b)] = int32_t(m);
    }
    return out;
  }

 private:
  static constexpr int kPanel = 16;        // items per panel: two 8-float vectors
  static constexpr int kQ = 4;             // queries per micro-kernel call
  static constexpr int kRows = 8;          // queries scored against a tile at a time
  static constexpr int64_t kTilePanels = 32;  // 512 items per tile
  static constexpr int64_t kTileItems = kTilePanels * kPanel;
  static constexpr int64_t kInt8MaxRows = 2;  // batches up to this size take the int8 first pass
  static constexpr int64_t kInt8MaxD = 1024;  // (the bound's slack covers float sums of <= 1024 terms)

  struct Unit {
    int64_t b0, b1;  // query rows [b0, b1)
    int64_t p0, p1;  // panels [p0, p1)
  };

  // Rows split into one unit per thread when there are enough groups of kRows; otherwise all rows
  // in every unit and the panels split (each unit then reads only its part of the table).
  std::vector<Unit> plan(int64_t B) const {
    const int64_t P = max_threads(), groups = (B + kRows - 1) / kRows;
    std::vector<Unit> units;
    if (P <= 1) return {Unit{0, B, 0, n_panels_}};
    if (groups >= P || n_panels_ < 2 * P) {
      const int64_t n_units = std::min(P, groups);
      for (int64_t i = 0; i < n_units; ++i) {
        const int64_t g0 = groups * i / n_units, g1 = groups * (i + 1) / n_units;
        units.push_back(Unit{g0 * kRows, std::min(B, g1 * kRows), 0, n_panels_});
      }
    } else {
      for (int64_t i = 0; i < P; ++i) units.push_back(Unit{0, B, n_panels_ * i / P, n_panels_ * (i + 1) / P});
    }
    return units;
  }

  // acc[q * ld + x] = the fma chain of query q (of kQ, rows of uq with stride D) against the
  // panel's item x, for d = 0 .. D-1 from 0. Each vector lane is one score's chain, in the scalar
  // definition's order; with AVX2 the 4 x 16 accumulators are 8 registers for the whole chain (the
  // portable loop, which compilers vectorise less well, computes the same values).
  void micro(const float* __restrict uq, const float* __restrict panel, float* __restrict acc, int64_t ld) const {
#if defined(__AVX2__) && defined(__FMA__)
    static_assert(kQ == 4 && kPanel == 16, "the AVX2 micro-kernel is 4 queries x 2 vectors of 8 items");
    __m256 c[kQ][2];
    for (auto& cq : c) cq[0] = cq[1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D_; ++d) {
      const __m256 e0 = _mm256_loadu_ps(panel + d * kPanel), e1 = _mm256_loadu_ps(panel + d * kPanel + 8);
      for (int q = 0; q < kQ; ++q) {
        const __m256 u = _mm256_broadcast_ss(uq + q * D_ + d);
        c[q][0] = _mm256_fmadd_ps(u, e0, c[q][0]);
        c[q][1] = _mm256_fmadd_ps(u, e1, c[q][1]);
      }
    }
    for (int q = 0; q < kQ; ++q) {
      _mm256_storeu_ps(acc + q * ld, c[q][0]);
      _mm256_storeu_ps(acc + q * ld + 8, c[q][1]);
    }
#else
    float c[kQ][kPanel] = {};
    for (int64_t d = 0; d < D_; ++d) {
      const float* e = panel + d * kPanel;
      for (int q = 0; q < kQ; ++q) {
        const float u = uq[q * D_ + d];
        for (int x = 0; x < kPanel; ++x) c[q][x] = std::fma(u, e[x], c[q][x]);
      }
    }
    for (int q = 0; q < kQ; ++q)
      for (int x = 0; x < kPanel; ++x) acc[q * ld + x] = c[q][x];
#endif
  }

  // The first j in [j, end) whose score a[j] (+ bias[j]) is greater than t, or end.
  static int64_t skip_to_pass(const float* a, const float* bias, int64_t j, int64_t end, float t) {
#if defined(__AVX2__)
    // 8 at a time; _CMP_GT_OQ is false for NaN, as the scalar test is. a + bias rounds as the
    // scalar sum does.
    const __m256 tv = _mm256_set1_ps(t);
    for (; j + 8 <= end; j += 8) {
      __m256 v = _mm256_loadu_ps(a + j);
      if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
      const int m = _mm256_movemask_ps(_mm256_cmp_ps(v, tv, _CMP_GT_OQ));
      if (m) return j + __builtin_ctz(unsigned(m));
    }
#endif
    if (bias) {
      while (j < end && !(a[j] + bias[j] > t)) ++j;
    } else {
      while (j < end && !(a[j] > t)) ++j;
    }
    return j;
  }

  // Row lists: candidates go into a buffer of up to 2k; when it fills, nth_element keeps its best k
  // and the k-th best becomes the bar a later item must pass (O(1) per candidate, against a heap's
  // O(log k) sift). The buffer is unsorted; search() sorts the final lists.
  std::vector<std::vector<Scored>> run(const Unit& w, const float* U, int k, const Ragged& exclude,
                                       const Ragged* extra) const {
    const int64_t n = hi_ - lo_, rows = w.b1 - w.b0;
    const Before better;
    const size_t cap = 2 * size_t(k);
    std::vector<std::vector<Scored>> lists(static_cast<size_t>(rows));
    std::vector<std::vector<ItemId>> excl(static_cast<size_t>(rows));
    // The k-th best key kept so far, once a buffer has been cut to k (before that, every candidate
    // enters): -inf would not do as "no bar", since -inf and NaN scores are candidates too.
    std::vector<float> bar(static_cast<size_t>(rows), 0.0f);
    std::vector<char> has_bar(static_cast<size_t>(rows), 0);
    // A list never holds more than the unit's items (k may exceed them).
    const size_t unit_items = size_t(std::min(n, w.p1 * kPanel) - w.p0 * kPanel);
    for (int64_t r = 0; r < rows; ++r) {
      lists[size_t(r)].reserve(std::min(cap, unit_items));
      shard_exclusions(w.b0 + r, exclude, extra, excl[size_t(r)]);
    }
    const float* bias = bias_.empty() ? nullptr : bias_.data();
    // The unit's queries, zero rows up to a multiple of kQ (they score zeros, never read).
    std::vector<float> uq(size_t((rows + kQ - 1) / kQ * kQ * D_), 0.0f);
    std::copy(U + w.b0 * D_, U + w.b1 * D_, uq.begin());
    std::vector<float> acc(size_t(kRows * kTileItems));
    for (int64_t tp0 = w.p0; tp0 < w.p1; tp0 += kTilePanels) {
      const int64_t tp1 = std::min(w.p1, tp0 + kTilePanels);
      const int64_t j0 = tp0 * kPanel, j1 = std::min(n, tp1 * kPanel);  // shard-local items of the tile
      for (int64_t g0 = 0; g0 < rows; g0 += kRows) {
        const int grows = int(std::min<int64_t>(kRows, rows - g0));
        const int qrows = (grows + kQ - 1) / kQ * kQ;
        for (int64_t p = tp0; p < tp1; ++p)
          for (int q = 0; q < qrows; q += kQ)
            micro(uq.data() + (g0 + q) * D_, Ep_.get() + p * D_ * kPanel,
                  acc.data() + q * kTileItems + (p - tp0) * kPanel, kTileItems);
        for (int r = 0; r < grows; ++r) {
          const size_t hr = size_t(g0 + r);
          auto& list = lists[hr];
          const auto& ex = excl[hr];
          const float* a = acc.data() + r * kTileItems;     // the tile's scores, i = j - j0
          const float* b = bias ? bias + j0 : nullptr;
          const int64_t tn = j1 - j0;
          bool gated = has_bar[hr] != 0;
          float t = bar[hr];
          for (int64_t i = 0; i < tn; ++i) {
            // Items come in increasing id, so the bar's item (a smaller id) wins a tie: only a
            // strictly greater key can beat it. NaN fails the test, as it ranks as -inf. The scan
            // touches locals only, so they stay in registers.
            if (gated) i = skip_to_pass(a, b, i, tn, t);
            if (i == tn) break;
            const float v = b ? a[i] + b[i] : a[i];
            const ItemId id = ItemId(lo_ + j0 + i);
            if (id == 0 || std::binary_search(ex.begin(), ex.end(), id)) continue;
            list.emplace_back(v, id);
            if (list.size() == cap) {
              std::nth_element(list.begin(), list.begin() + (k - 1), list.end(), better);
              list.resize(size_t(k));
              t = topk_order_key(list.back().first);
              gated = true;
            }
          }
          bar[hr] = t;
          has_bar[hr] = char(gated);
        }
      }
    }
    return lists;
  }

  // ---- The int8 first pass (small batches) ----
  // A batch of one or two queries is bound by reading the table (256 MB at 1M items, D = 64), not
  // by arithmetic. For those, the shard also keeps its rows as int8 (a quarter of the bytes): item
  // i's row is q_i s_i with s_i = max_d |e_id| / 127, q_id = round(e_id / s_i). A search scores
  // every item from that copy, v'_i = (sum_d u_d q_id) s_i + b_i, with a bound w_i on how far the
  // exact score v_i (the fma chain of the other path) can be from it:
  //   |v_i - v'_i| <= |u|_1 err_i                       (err_i = max_d |e_id - q_id s_i|, measured)
  //                 + (4 D + 8) 2^-24 |u|_1 m_i          (both float chains' rounding, the product
  //                                                       by s_i and the bias add, twice over;
  //                                                       m_i = max_d |e_id|)
  //                 + 2^-22 |b_i|                       (the bias adds' rounding, twice over)
  // and keeps t = the k-th best lower bound v'_i - w_i of the eligible items seen so far. Every
  // item of the true top k has an exact score >= the k-th best, which is >= t, so its upper bound
  // v'_i + w_i is too: the items whose upper bound reaches t are candidates, and rescoring them
  // exactly (the same fma chain over the float rows) gives the same list, scores and order as the
  // float path, bit for bit. Used only when every value is finite and no score can come near
  // overflow (int8_ok_, int8_applies), where no NaN or inf can appear.
  void build_int8(const float* bias) {
    if (D_ > kInt8MaxD) return;  // int8_ok_ stays false
    const int64_t n = hi_ - lo_;
    q8_.reset(new int8_t[size_t(n_panels_ * D_ * kPanel)]);  // every element written below
    q8_scale_.assign(size_t(n), 0.0f);
    q8_err_.assign(size_t(n), 0.0f);
    q8_bias_err_.assign(size_t(n), 0.0f);
    bool finite = true;
    double max_m = 0, max_b = 0;
    // From the float panels (Ep_, zero past the last item), one panel of 16 items at a time, the
    // loops over its items innermost (contiguous, vectorised); panels are independent.
#pragma omp parallel for schedule(static) reduction(&& : finite) reduction(max : max_m, max_b)
    for (int64_t p = 0; p < n_panels_; ++p) {
      const float* ep = Ep_.get() + p * D_ * kPanel;
      int8_t* qp = q8_.get() + p * D_ * kPanel;
      // nan[x] = sum of e * 0 (NaN when the item has an inf or NaN): a form the loop vectorises
      float m[kPanel] = {}, nan[kPanel] = {}, sc[kPanel], inv[kPanel], err[kPanel] = {};
      for (int64_t d = 0; d < D_; ++d)
        for (int x = 0; x < kPanel; ++x) {
          nan[x] += ep[d * kPanel + x] * 0.0f;
          m[x] = std::max(m[x], std::fabs(ep[d * kPanel + x]));
        }
      bool fin = true;
      for (int x = 0; x < kPanel; ++x) fin = fin && nan[x] == 0.0f;
      for (int x = 0; x < kPanel; ++x) {
        sc[x] = m[x] / 127.0f;
        inv[x] = m[x] > 0.0f ? 127.0f / m[x] : 0.0f;
      }
      for (int64_t d = 0; d < D_; ++d)
        for (int x = 0; x < kPanel; ++x) {
          // any rounding to an int in [-127, 127] will do: err measures what it leaves, e - q sc
          // by one fma, which rounds by 2^-24 of it at most (the 2^-20 below covers that)
          const float e = ep[d * kPanel + x];
          const float q = std::max(-127.0f, std::min(127.0f, std::nearbyint(e * inv[x])));
          qp[d * kPanel + x] = int8_t(q);
          err[x] = std::max(err[x], std::fabs(std::fma(-q, sc[x], e)));
        }
      for (int x = 0; x < kPanel && p * kPanel + x < n; ++x) {
        const int64_t i = p * kPanel + x;
        const double b = bias ? double(bias[lo_ + i]) : 0.0;
        fin = fin && std::isfinite(b);
        q8_scale_[size_t(i)] = sc[x];
        q8_err_[size_t(i)] = float((double(err[x]) + (4.0 * double(D_) + 8.0) * 0x1p-24 * double(m[x])) * (1.0 + 0x1p-20));
        q8_bias_err_[size_t(i)] = float(0x1p-22 * std::fabs(b) * (1.0 + 0x1p-20));
        max_m = std::max(max_m, double(m[x]));
        max_b = std::max(max_b, std::fabs(b));
      }
      finite = finite && fin;
    }
    q8_max_abs_ = max_m;
    int8_ok_ = finite && max_m < 1e15 && max_b < 1e30;
  }

  // Whether a search of these B queries takes the int8 pass: a small batch whose every |u|_1 is
  // finite and keeps |u|_1 max_i m_i (a bound on every |score| before the bias) under 1e30.
  bool int8_applies(const float* U, int64_t B) const {
    if (!int8_ok_ || B < 1 || B > kInt8MaxRows) return false;
    for (int64_t b = 0; b < B; ++b) {
      const double u1 = l1_norm(U + b * D_);
      if (!(u1 * q8_max_abs_ < 1e30)) return false;  // false for NaN and inf too
    }
    return true;
  }
  double l1_norm(const float* u) const {
    double s = 0.0;
    for (int64_t d = 0; d < D_; ++d) s += std::fabs(double(u[d]));
    return s;
  }

  // acc[x] = sum_d u[d] q8[panel][d][x], an fma chain in float (the ints are exact in float), for
  // the panel's 16 items.
  void micro_int8(const float* __restrict u, const int8_t* __restrict panel, float* __restrict acc) const {
#if defined(__AVX2__) && defined(__FMA__)
    static_assert(kPanel == 16, "the AVX2 int8 micro-kernel is 2 vectors of 8 items");
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    for (int64_t d = 0; d < D_; ++d) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(panel + d * kPanel));
      const __m256 e0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
      const __m256 e1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
      const __m256 ud = _mm256_broadcast_ss(u + d);
      c0 = _mm256_fmadd_ps(ud, e0, c0);
      c1 = _mm256_fmadd_ps(ud, e1, c1);
    }
    _mm256_storeu_ps(acc, c0);
    _mm256_storeu_ps(acc + 8, c1);
#else
    float c[kPanel] = {};
    for (int64_t d = 0; d < D_; ++d)
      for (int x = 0; x < kPanel; ++x) c[x] = std::fma(u[d], float(panel[d * kPanel + x]), c[x]);
    std::copy(c, c + kPanel, acc);
#endif
  }

  // The exact score of shard-local item i for query u: micro()'s fma chain, then the bias.
  float exact_score(const float* u, int64_t i) const {
    const float* e = Ep_.get() + (i / kPanel) * D_ * kPanel + i % kPanel;
    float acc = 0.0f;
    for (int64_t d = 0; d < D_; ++d) acc = std::fma(u[d], e[d * kPanel], acc);
    return bias_.empty() ? acc : acc + bias_[size_t(i)];
  }

  // run() for the int8 pass: the same lists (see build_int8).
  std::vector<std::vector<Scored>> run_int8(const Unit& w, const float* U, int k, const Ragged& exclude,
                                            const Ragged* extra) const {
    const int64_t n = hi_ - lo_, rows = w.b1 - w.b0;
    const Before better;
    const size_t kk = size_t(k);
    std::vector<std::vector<Scored>> lists(static_cast<size_t>(rows));
    for (int64_t r0 = 0; r0 < rows; ++r0) {
      const int64_t b = w.b0 + r0;
      const float* u = U + b * D_;
      std::vector<ItemId> ex;
      shard_exclusions(b, exclude, extra, ex);
      const float u1 = float(l1_norm(u) * (1.0 + 0x1p-20));
      // t: the k-th best lower bound so far (-inf until k eligible items are seen); low: the lower
      // bounds above t, cut to the best k when 2k are held; cand: (upper bound, item) of the items
      // whose upper bound reached t when they were seen (those below the final t dropped later)
      float t = -std::numeric_limits<float>::infinity();
      std::vector<float> low;
      low.reserve(2 * kk);
      std::vector<std::pair<float, ItemId>> cand;
      size_t cand_cap = std::max<size_t>(4 * kk, 4096);
      float acc[kTileItems], hi_b[kTileItems], lo_b[kTileItems];
      for (int64_t tp0 = w.p0; tp0 < w.p1; tp0 += kTilePanels) {
        const int64_t tp1 = std::min(w.p1, tp0 + kTilePanels);
        const int64_t j0 = tp0 * kPanel, tn = std::min(n, tp1 * kPanel) - j0;
        for (int64_t p = tp0; p < tp1; ++p)
          micro_int8(u, q8_.get() + p * D_ * kPanel, acc + (p - tp0) * kPanel);
        const float* sc = q8_scale_.data() + j0;
        const float* er = q8_err_.data() + j0;
        const float* be = q8_bias_err_.data() + j0;
        const float* bi = bias_.empty() ? nullptr : bias_.data() + j0;
        for (int64_t i = 0; i < tn; ++i) {
          const float v = acc[i] * sc[i] + (bi ? bi[i] : 0.0f);
          // the bound, and room for the rounding of v +- it (each float step here rounds by 2^-24
          // of its value at most; the 2^-10 slack and the 2^-21 |v| cover them)
          const float wb = (u1 * er[i] + be[i]) * (1.0f + 0x1p-10f) + std::fabs(v) * 0x1p-21f;
          hi_b[i] = v + wb;
          lo_b[i] = v - wb;
        }
        for (int64_t i = 0;; ++i) {
          // hi_b >= t, as skip_to_pass's > the float below t (the bounds are finite here)
          i = skip_to_pass(hi_b, nullptr, i, tn, std::nextafter(t, -std::numeric_limits<float>::infinity()));
          if (i == tn) break;
          const ItemId id = ItemId(lo_ + j0 + i);
          if (id == 0 || std::binary_search(ex.begin(), ex.end(), id)) continue;
          cand.emplace_back(hi_b[i], id);
          if (lo_b[i] > t) {
            low.push_back(lo_b[i]);
            if (low.size() == 2 * kk) {
              std::nth_element(low.begin(), low.begin() + (k - 1), low.end(), std::greater<float>());
              low.resize(kk);
              t = low[kk - 1];
            }
          }
          if (cand.size() >= cand_cap) {  // (room doubles when nothing could go: equal items)
            prune(cand, t);
            cand_cap = std::max(cand_cap, 2 * cand.size());
          }
        }
      }
      if (low.size() >= kk) {  // fewer than 2k eligible items leave low uncut
        std::nth_element(low.begin(), low.begin() + (k - 1), low.end(), std::greater<float>());
        t = std::max(t, low[kk - 1]);
      }
      prune(cand, t);
      auto& list = lists[size_t(r0)];
      list.reserve(cand.size());
      for (const auto& c : cand) list.emplace_back(exact_score(u, int64_t(c.second) - lo_), c.second);
      if (list.size() > kk) {
        std::nth_element(list.begin(), list.begin() + (k - 1), list.end(), better);
        list.resize(kk);
      }
    }
    return lists;
  }
  static void prune(std::vector<std::pair<float, ItemId>>& cand, float t) {
    cand.erase(std::remove_if(cand.begin(), cand.end(), [t](const std::pair<float, ItemId>& c) { return c.first < t; }),
               cand.end());
  }

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
  int64_t n_panels_ = 0;
  std::unique_ptr<float[]> Ep_;  // [n_panels][D][kPanel]
  std::vector<float> bias_;  // [n], empty without bias
  // the int8 copy (build_int8): rows [n_panels][D][kPanel], per item its scale, its error term
  // (err_i + (4 D + 8) 2^-24 m_i) and its bias term (2^-22 |b_i|), each rounded up
  std::unique_ptr<int8_t[]> q8_;
  std::vector<float> q8_scale_, q8_err_, q8_bias_err_;
  double q8_max_abs_ = 0.0;  // max_i m_i
  bool int8_ok_ = false;
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
    const Before better;
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
