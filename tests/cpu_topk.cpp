// Sharded exact top-k on the CPU (topk.hpp): shards merged equal the unsharded search and the
// evaluation's topk_excluding, ties by id, short shards, errors.
#include <catch2/catch.hpp>

#include "ada/check.hpp"
#include "ada/device.hpp"
#include "ada/eval.hpp"
#include "ada/topk.hpp"
#include "tests/topk_util.hpp"

#include <cstring>
#include <tuple>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace topk_test;

namespace {

ada::ShardedSearcher cpu_shards(const Problem& p, int shards) {
  ada::ShardedSearcher s;
  for (auto [lo, hi] : ada::split_items(p.N, shards))
    s.add(ada::make_cpu_searcher(p.E.data(), p.bias.data(), lo, hi, p.D));
  return s;
}

}  // namespace

TEST_CASE("split_items covers 1..N-1 with disjoint near-equal ranges", "[topk]") {
  for (int64_t N : {2, 3, 10, 12102}) {
    for (int shards : {1, 2, 7}) {
      if (shards > N - 1) {
        REQUIRE_THROWS_AS(ada::split_items(N, shards), ada::Error);
        continue;
      }
      const auto r = ada::split_items(N, shards);
      REQUIRE(int(r.size()) == shards);
      REQUIRE(r.front().first == 1);
      REQUIRE(r.back().second == N);
      for (size_t i = 0; i < r.size(); ++i) {
        REQUIRE(r[i].first < r[i].second);
        if (i) REQUIRE(r[i].first == r[i - 1].second);
        REQUIRE(r[i].second - r[i].first <= (N - 1) / shards + 1);
      }
    }
  }
}

TEST_CASE("sharded CPU search equals the unsharded one bit for bit, and topk_excluding up to rounding", "[topk]") {
  for (auto [B, N, D, k] : {std::tuple<int64_t, int64_t, int64_t, int>{1, 50, 8, 5}, {7, 1001, 64, 20},
                            {33, 3000, 17, 100}, {5, 300, 32, 250}}) {
    const Problem p = random_problem(B, N, D, uint32_t(B * 31 + N), 40);
    std::vector<ItemId> ref_ids(size_t(B * k));
    std::vector<float> ref_s(size_t(B * k));
    ada::topk_excluding(p.U.data(), B, p.E.data(), p.bias.data(), N, D, k, p.exclude, nullptr, ref_ids.data(),
                        ref_s.data());
    const ada::TopkLists one = cpu_shards(p, 1).search(p.U.data(), B, k, p.exclude);
    for (int64_t b = 0; b < B; ++b) check_row_topk(p, b, k, one, 1e-4);
    // topk_excluding (sgemm) agrees up to rounding: same lists except between near-equal scores.
    ada::TopkLists ref;
    ref.reset(B, k);
    ref.ids = ref_ids;
    ref.scores = ref_s;
    std::fill(ref.count.begin(), ref.count.end(), k);
    for (int64_t b = 0; b < B; ++b) check_row_topk(p, b, k, ref, 1e-4);
    for (int shards : {2, 3, 7}) {
      INFO("B " << B << " N " << N << " k " << k << " shards " << shards);
      const ada::TopkLists got = cpu_shards(p, shards).search(p.U.data(), B, k, p.exclude);
      REQUIRE(got.ids == one.ids);
      REQUIRE(got.scores == one.scores);
      REQUIRE(got.count == one.count);
    }
  }
}

TEST_CASE("a CPU shard's scores are the fma chain over d in order plus the bias, for any thread count", "[topk]") {
  // Odd shapes on purpose: D not a multiple of the vector width, shards that end inside a panel of
  // 16 items, batches that are not a multiple of the 4-query micro-kernel, one batch smaller than
  // the thread count (the items are split between threads) and one larger (the rows are); with and
  // without the item bias.
  for (auto [B, N, D, k] : {std::tuple<int64_t, int64_t, int64_t, int>{3, 2001, 13, 37}, {37, 1500, 64, 50},
                            {1, 700, 1, 9}, {9, 5000, 31, 300}}) {
    Problem p = random_problem(B, N, D, uint32_t(N + D), 30);
    std::fill_n(p.E.begin() + 5 * D, D, std::nanf(""));  // item 5 scores NaN: it ranks last
    for (bool with_bias : {true, false}) {
      const float* bias = with_bias ? p.bias.data() : nullptr;
      auto search = [&] {
        ada::ShardedSearcher s;
        for (auto [lo, hi] : ada::split_items(N, 2)) s.add(ada::make_cpu_searcher(p.E.data(), bias, lo, hi, D));
        return s.search(p.U.data(), B, k, p.exclude);
      };
      std::vector<ada::TopkLists> runs;
#ifdef _OPENMP
      const int saved = omp_get_max_threads();
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        runs.push_back(search());
      }
      omp_set_num_threads(saved);
#else
      runs.push_back(search());
#endif
      INFO("B " << B << " N " << N << " D " << D << " bias " << with_bias);
      const ada::TopkLists& got = runs.front();
      for (const auto& r : runs) {
        REQUIRE(r.ids == got.ids);
        REQUIRE(std::memcmp(r.scores.data(), got.scores.data(), r.scores.size() * sizeof(float)) == 0);
      }
      if (with_bias)
        for (int64_t b = 0; b < B; ++b) check_row_topk(p, b, k, got, 1e-4);
      for (int64_t b = 0; b < B; ++b) {
        REQUIRE(got.count[size_t(b)] == k);
        for (int i = 0; i < k; ++i) {
          const ItemId j = got.ids[size_t(b * k + i)];
          REQUIRE(j != 5);
          float acc = 0.0f;
          for (int64_t d = 0; d < D; ++d) acc = std::fma(p.U[size_t(b * D + d)], p.E[size_t(j * D + d)], acc);
          if (with_bias) acc += p.bias[size_t(j)];
          const float s = got.scores[size_t(b * k + i)];
          INFO("row " << b << " item " << j);
          REQUIRE(std::memcmp(&s, &acc, sizeof(float)) == 0);
          if (i + 1 < k) REQUIRE(s >= got.scores[size_t(b * k + i + 1)]);
        }
      }
    }
  }
}

TEST_CASE("ties are broken by the smaller id in every shard layout", "[topk]") {
  const Problem p = random_problem(6, 400, 16, 7, 10, /*ties=*/true);
  const int k = 31;
  const ada::TopkLists one = cpu_shards(p, 1).search(p.U.data(), p.B, k, p.exclude);
  for (int shards : {2, 5, 13}) {
    const ada::TopkLists many = cpu_shards(p, shards).search(p.U.data(), p.B, k, p.exclude);
    REQUIRE(many.ids == one.ids);
    REQUIRE(many.scores == one.scores);
  }
  for (int64_t b = 0; b < p.B; ++b)
    for (int i = 0; i + 1 < k; ++i) {
      const float s0 = one.scores[size_t(b * k + i)], s1 = one.scores[size_t(b * k + i + 1)];
      REQUIRE(s0 >= s1);
      if (s0 == s1) REQUIRE(one.ids[size_t(b * k + i)] < one.ids[size_t(b * k + i + 1)]);
    }
}

TEST_CASE("extra exclusions (earlier rounds) are honoured by every shard", "[topk]") {
  const Problem p = random_problem(4, 500, 24, 11, 20);
  Ragged extra;
  for (int64_t b = 0; b < p.B; ++b) {
    std::vector<ItemId> row;
    for (int i = 0; i < 60; ++i) row.push_back(ItemId(1 + (b * 37 + i * 7) % 499));
    extra.push_row(row.data(), row.data() + row.size());
  }
  const ada::TopkLists got = cpu_shards(p, 3).search(p.U.data(), p.B, 40, p.exclude, &extra);
  for (int64_t b = 0; b < p.B; ++b) check_row_topk(p, b, 40, got, 1e-4, &extra);
}

TEST_CASE("a shard with fewer candidates than k returns a shorter list", "[topk]") {
  const Problem p = random_problem(3, 100, 8, 5, 0);
  Ragged excl;
  const std::vector<ItemId> row0 = {10, 11, 12, 13, 14};       // row 0: 5 of the shard's 10 excluded
  std::vector<ItemId> row1;                                    // row 1: the whole shard excluded
  for (ItemId j = 10; j < 20; ++j) row1.push_back(j);
  const std::vector<ItemId> row2;
  excl.push_row(row0.data(), row0.data() + row0.size());
  excl.push_row(row1.data(), row1.data() + row1.size());
  excl.push_row(row2.data(), row2.data());
  auto shard = ada::make_cpu_searcher(p.E.data(), p.bias.data(), 10, 20, p.D);
  const ada::TopkLists got = shard->search(p.U.data(), 3, 8, excl);
  REQUIRE(got.count == std::vector<int32_t>{5, 0, 8});
  for (int i = 0; i < 8; ++i) REQUIRE(got.ids[size_t(8 + i)] == -1);
  for (int i = 0; i < 5; ++i) {
    REQUIRE(got.ids[size_t(i)] >= 15);
    REQUIRE(got.ids[size_t(i)] < 20);
  }
}

TEST_CASE("the padding item is never returned, even by a shard that holds it", "[topk]") {
  Problem p = random_problem(2, 20, 4, 3, 0);
  std::fill(p.E.begin(), p.E.begin() + 4, 100.0f);  // padding would win every row
  p.bias[0] = 100.0f;
  auto shard = ada::make_cpu_searcher(p.E.data(), p.bias.data(), 0, 20, p.D);
  const ada::TopkLists got = shard->search(p.U.data(), 2, 19, p.exclude);
  for (ItemId id : got.ids) REQUIRE(id != 0);
  REQUIRE(got.count == std::vector<int32_t>{19, 19});
}

TEST_CASE("sharded search errors: too few candidates, overlapping shards, bad k", "[topk]") {
  const Problem p = random_problem(2, 30, 4, 9, 0);
  auto index = cpu_shards(p, 3);
  REQUIRE(index.search(p.U.data(), 2, 29, p.exclude).count == std::vector<int32_t>{29, 29});  // k = every item
  try {
    index.search(p.U.data(), 2, 30, p.exclude);
    FAIL("k larger than the catalog was accepted");
  } catch (const ada::Error& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("row 0") && Catch::Contains("fewer than k = 30"));
  }
  REQUIRE_THROWS_AS(index.search(p.U.data(), 2, 0, p.exclude), ada::Error);
  ada::ShardedSearcher bad;
  bad.add(ada::make_cpu_searcher(p.E.data(), p.bias.data(), 1, 20, p.D));
  REQUIRE_THROWS_WITH(bad.add(ada::make_cpu_searcher(p.E.data(), p.bias.data(), 15, 30, p.D)),
                      Catch::Contains("overlaps"));
  REQUIRE_THROWS_AS(ada::make_cpu_searcher(p.E.data(), p.bias.data(), 5, 5, p.D), ada::Error);
}

TEST_CASE("merge_topk keeps the best k of the union and rejects a repeated item", "[topk]") {
  ada::TopkLists a, b;
  a.reset(1, 3);
  b.reset(1, 3);
  a.ids = {5, 2, -1};
  a.scores = {3.0f, 1.0f, -INFINITY};
  a.count = {2};
  b.ids = {9, 7, 8};
  b.scores = {3.0f, 2.0f, 0.5f};
  b.count = {3};
  const ada::TopkLists m = ada::merge_topk({a, b}, 4);
  REQUIRE(m.ids == std::vector<ItemId>{5, 9, 7, 2});  // 5 and 9 tie: the smaller id first
  REQUIRE(m.count == std::vector<int32_t>{4});
  REQUIRE_THROWS_WITH(ada::merge_topk({a, a}, 4), Catch::Contains("appears in two parts"));
}

TEST_CASE("the GPU searcher refuses a device that is not there, naming it", "[topk]") {
  const Problem p = random_problem(1, 10, 4, 1, 0);
  const int missing = ada::cuda_device_count();  // one past the last device (0 without CUDA or GPU)
  REQUIRE_THROWS_WITH(ada::make_gpu_searcher(p.E.data(), p.bias.data(), 1, 10, p.D, missing),
                      Catch::Contains("CUDA") && Catch::Contains("device " + std::to_string(missing)));
}

TEST_CASE("one- and two-query CPU searches (the int8 first pass) give the float path's lists bit for bit", "[topk]") {
  // A batch of one or two queries scores the catalog from an int8 copy of the rows with an error
  // bound, then rescores the candidates exactly (topk.cpp, build_int8); a batch of three takes the
  // float path. Row r searched alone (and rows 0-1 as a pair) must give row r of the batch of three:
  // the same ids, scores and count. Near ties on purpose: items in groups that differ by one ulp in
  // one coordinate, and exact duplicates; k from 1 to more than the catalog; 1-3 threads (the
  // items split between them); odd D; with and without bias; and the cases that must fall back to
  // the float path (a NaN row, a NaN query, magnitudes near overflow).
  struct Case {
    int64_t N, D;
    int k;
    bool bias;
    int kind;  // 0 random, 1 groups of 3 duplicates, 2 one-ulp near ties, 3 NaN row, 4 NaN query, 5 huge,
               // 6 every item the same (no item can be ruled out)
  };
  const std::vector<Case> cases = {{5000, 64, 100, true, 0},  {5000, 64, 1, false, 0},   {3001, 13, 37, true, 1},
                                   {2000, 64, 50, true, 2},    {2000, 128, 20, false, 2}, {300, 1, 9, true, 2},
                                   {700, 32, 1000, true, 0},   {900, 16, 30, true, 3},    {900, 16, 30, true, 4},
                                   {900, 16, 30, false, 5},    {20000, 16, 10, true, 6}};
  for (const Case& c : cases) {
    Problem p = random_problem(3, c.N, c.D, uint32_t(c.N * 7 + c.D + c.kind), 40, c.kind == 1);
    std::mt19937 rng(uint32_t(c.kind + 1));
    if (c.kind == 2)  // groups of 4: one base row, the others with one coordinate moved by an ulp
      for (int64_t j = 1; j < c.N; ++j) {
        const int64_t src = 1 + (j - 1) / 4 * 4;
        std::copy_n(p.E.begin() + src * c.D, c.D, p.E.begin() + j * c.D);
        p.bias[size_t(j)] = p.bias[size_t(src)];
        float& x = p.E[size_t(j * c.D + int64_t(rng() % uint32_t(c.D)))];
        x = std::nextafter(x, (j - src) % 2 ? 10.0f : -10.0f);
      }
    if (c.kind == 3) std::fill_n(p.E.begin() + 7 * c.D, c.D, std::nanf(""));
    if (c.kind == 4) p.U[0] = std::nanf("");
    if (c.kind == 5)
      for (auto& x : p.E) x *= 1e18f;
    if (c.kind == 6)
      for (int64_t j = 2; j < c.N; ++j) {
        std::copy_n(p.E.begin() + c.D, c.D, p.E.begin() + j * c.D);
        p.bias[size_t(j)] = p.bias[1];
      }
    const float* bias = c.bias ? p.bias.data() : nullptr;
    auto searcher = ada::make_cpu_searcher(p.E.data(), bias, 0, c.N, c.D);
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
#endif
      const ada::TopkLists three = searcher->search(p.U.data(), 3, c.k, p.exclude);
      INFO("N " << c.N << " D " << c.D << " k " << c.k << " bias " << c.bias << " kind " << c.kind);
      auto same_row = [&](const ada::TopkLists& got, int64_t gr, int64_t r) {
        INFO("row " << r);
        REQUIRE(got.count[size_t(gr)] == three.count[size_t(r)]);
        for (int i = 0; i < got.count[size_t(gr)]; ++i) {
          const size_t a = size_t(gr * c.k + i), b = size_t(r * c.k + i);
          REQUIRE(got.ids[a] == three.ids[b]);
          REQUIRE(std::memcmp(&got.scores[a], &three.scores[b], sizeof(float)) == 0);
        }
      };
      for (int64_t r = 0; r < 3; ++r) {
        Ragged ex;
        ex.push_row(p.exclude.row_begin(size_t(r)), p.exclude.row_end(size_t(r)));
        same_row(searcher->search(p.U.data() + r * c.D, 1, c.k, ex), 0, r);
      }
      Ragged ex2;
      for (int64_t r = 0; r < 2; ++r) ex2.push_row(p.exclude.row_begin(size_t(r)), p.exclude.row_end(size_t(r)));
      const ada::TopkLists two = searcher->search(p.U.data(), 2, c.k, ex2);
      for (int64_t r = 0; r < 2; ++r) same_row(two, r, r);
#ifdef _OPENMP
    }
    omp_set_num_threads(saved);
#endif
  }
  // The bound is nearly tight here: item 1's int8 row drops 0.49 from each of 7 coordinates, all
  // against the query's sign, so its int8 score (127) is 3.43 under its exact one (130.43), while
  // item 2's int8 row is exact (130). The best item is 1 only if the bound keeps it a candidate
  // (a bound of half the quantisation error would drop it and return item 2).
  {
    const int64_t D = 8, N = 4;
    std::vector<float> E(size_t(N * D), 0.0f), U(size_t(3 * D), 1.0f);
    E[size_t(1 * D)] = 127.0f;
    std::fill_n(E.begin() + 1 * D + 1, D - 1, 0.49f);
    E[size_t(2 * D)] = 127.0f;
    E[size_t(2 * D + 1)] = 3.0f;
    E[size_t(3 * D)] = 1.0f;
    auto searcher = ada::make_cpu_searcher(E.data(), nullptr, 0, N, D);
    Ragged none1, none3;
    none1.push_row(nullptr, nullptr);
    for (int r = 0; r < 3; ++r) none3.push_row(nullptr, nullptr);
    const ada::TopkLists one = searcher->search(U.data(), 1, 1, none1);
    const ada::TopkLists three = searcher->search(U.data(), 3, 1, none3);
    REQUIRE(three.ids[0] == 1);
    REQUIRE(one.ids[0] == 1);
    REQUIRE(std::memcmp(&one.scores[0], &three.scores[0], sizeof(float)) == 0);
  }
}
