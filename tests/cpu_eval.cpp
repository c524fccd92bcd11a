// Full-ranking evaluation, top-k retrieval and metrics (eval.hpp) against hand-computed cases and
// brute-force double-precision references.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "ada/check.hpp"
#include "ada/eval.hpp"
#include "tests/topk_util.hpp"

namespace {

using ada::ItemId;
using ada::Ragged;

Ragged make_ragged(const std::vector<std::vector<ItemId>>& rows) {
  Ragged r;
  for (const auto& row : rows) r.push_row(row.data(), row.data() + row.size());
  return r;
}

using topk_test::Problem;  // its exclusion lists are not used here: the tests below make their own

Problem random_problem(int64_t B, int64_t N, int64_t D, uint32_t seed) {
  return topk_test::random_problem(B, N, D, seed, /*max_excl=*/0);
}

// Scores of one user in double precision.
std::vector<double> scores_f64(const Problem& p, int64_t b, bool with_bias) {
  std::vector<double> s(size_t(p.N));
  for (int64_t j = 0; j < p.N; ++j) {
    double acc = 0;
    for (int64_t d = 0; d < p.D; ++d) acc += double(p.U[size_t(b * p.D + d)]) * double(p.E[size_t(j * p.D + d)]);
    s[size_t(j)] = acc + (with_bias ? double(p.bias[size_t(j)]) : 0.0);
  }
  return s;
}

// Random exclusion lists: duplicates, item 0 and (sometimes) the target included on purpose.
Ragged random_excludes(int64_t B, int64_t N, const std::vector<ItemId>* targets, uint32_t seed, int max_len) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> item(1, int(N) - 1), len(0, max_len), coin(0, 3);
  Ragged r;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<ItemId> row;
    const int n = len(rng);
    for (int i = 0; i < n; ++i) row.push_back(ItemId(item(rng)));
    if (!row.empty() && coin(rng) == 0) row.push_back(row.front());  // duplicate
    if (coin(rng) == 0) row.push_back(0);
    if (targets && coin(rng) != 0) row.push_back((*targets)[size_t(b)]);
    std::shuffle(row.begin(), row.end(), rng);
    r.push_row(row.data(), row.data() + row.size());
  }
  return r;
}

constexpr double kTieEps = 1e-5;

}  // namespace

TEST_CASE("ranking_metrics on hand-computed ranks", "[cpu]") {
  SECTION("rank 0 is a hit with ndcg 1") {
    auto m = ada::ranking_metrics({0});
    REQUIRE(m.size() == 4);
    CHECK(m.at("hit@50") == 1.0);
    CHECK(m.at("ndcg@50") == 1.0);
    CHECK(m.at("hit@100") == 1.0);
    CHECK(m.at("ndcg@100") == 1.0);
  }
  SECTION("rank 1 gives ndcg 1/log2(3)") {
    auto m = ada::ranking_metrics({1}, {50});
    REQUIRE(m.size() == 2);
    CHECK(m.at("hit@50") == 1.0);
    CHECK(m.at("ndcg@50") == Approx(1.0 / std::log2(3.0)).epsilon(1e-12));
  }
  SECTION("a target outside the top K counts zero") {
    auto m = ada::ranking_metrics({60}, {50, 100});
    CHECK(m.at("hit@50") == 0.0);
    CHECK(m.at("ndcg@50") == 0.0);
    CHECK(m.at("hit@100") == 1.0);
    CHECK(m.at("ndcg@100") == Approx(1.0 / std::log2(62.0)).epsilon(1e-12));
    // rank == k is already outside the top k (0-based ranks)
    auto edge = ada::ranking_metrics({50}, {50});
    CHECK(edge.at("hit@50") == 0.0);
  }
  SECTION("mean over several users") {
    const std::vector<int32_t> ranks{0, 1, 49, 50, 99, 100};
    auto m = ada::ranking_metrics(ranks, {50, 100});
    CHECK(m.at("hit@50") == Approx(3.0 / 6));
    CHECK(m.at("ndcg@50") == Approx((1.0 + 1.0 / std::log2(3.0) + 1.0 / std::log2(51.0)) / 6));
    CHECK(m.at("hit@100") == Approx(5.0 / 6));
    CHECK(m.at("ndcg@100") == Approx((1.0 + 1.0 / std::log2(3.0) + 1.0 / std::log2(51.0) +
                                      1.0 / std::log2(52.0) + 1.0 / std::log2(101.0)) /
                                     6));
  }
  SECTION("other cutoffs name their keys") {
    auto m = ada::ranking_metrics({3, 7}, {5, 10, 20});
    CHECK(m.size() == 6);
    CHECK(m.at("hit@5") == 0.5);
    CHECK(m.at("hit@10") == 1.0);
    CHECK(m.count("ndcg@20") == 1);
  }
  SECTION("bad input throws") {
    CHECK_THROWS_AS(ada::ranking_metrics({}), ada::Error);
    CHECK_THROWS_AS(ada::ranking_metrics({1}, {0}), ada::Error);
    CHECK_THROWS_AS(ada::ranking_metrics({-1}), ada::Error);
  }
}

TEST_CASE("full_ranking_ranks on hand-built scores", "[cpu]") {
  // D = 1 and u = 1: the score of item j is E[j] (+ bias[j]).
  const std::vector<float> U{1.f};
  const std::vector<float> E{9.f, 1.f, 5.f, 3.f, 5.f, 7.f};  // item 0 scores highest but never counts
  const int64_t N = 6;
  auto rank_of = [&](ItemId target, std::vector<ItemId> excl, const float* bias = nullptr) {
    Ragged ex = make_ragged({excl});
    return ada::full_ranking_ranks(U.data(), 1, E.data(), bias, N, 1, &target, ex).at(0);
  };

  // target 2 (score 5): item 5 (7) is above, item 4 ties and counts in the target's favour
  CHECK(rank_of(2, {}) == 1);
  // an excluded item above the target does not count, however often it is listed
  CHECK(rank_of(2, {5}) == 0);
  CHECK(rank_of(2, {5, 5, 5}) == 0);
  // the target in its own exclude list stays a candidate
  CHECK(rank_of(2, {2, 5, 2}) == 0);
  CHECK(rank_of(2, {2}) == 1);
  // target 1 (score 1): items 2, 3, 4, 5 are above; excluding 0 changes nothing
  CHECK(rank_of(1, {}) == 4);
  CHECK(rank_of(1, {0, 3, 3, 1, 0}) == 3);
  // excluded items below the target change nothing
  CHECK(rank_of(5, {1, 3}) == 0);
  // bias is added to every score, including the target's
  const std::vector<float> bias{0.f, 10.f, 0.f, 0.f, 0.f, 0.f};
  CHECK(rank_of(2, {}, bias.data()) == 2);
  CHECK(rank_of(1, {}, bias.data()) == 0);
  const std::vector<float> bias2{0.f, 0.f, 2.5f, 0.f, 0.f, 0.f};
  CHECK(rank_of(2, {}, bias2.data()) == 0);  // 7.5 beats 7
  CHECK(rank_of(5, {}, bias2.data()) == 1);
}

TEST_CASE("full_ranking_ranks with several users and dimensions", "[cpu]") {
  // Two users, D = 2, N = 5. User 0 = (1, 0) reads the first coordinate, user 1 = (0, 2) twice the second.
  const std::vector<float> U{1.f, 0.f, 0.f, 2.f};
  const std::vector<float> E{100.f, 100.f,  //
                             1.f, 4.f,      //
                             2.f, 3.f,      //
                             3.f, 2.f,      //
                             4.f, 1.f};
  const std::vector<ItemId> targets{2, 2};
  Ragged ex = make_ragged({{4}, {}});
  auto ranks = ada::full_ranking_ranks(U.data(), 2, E.data(), nullptr, 5, 2, targets.data(), ex);
  REQUIRE(ranks.size() == 2);
  CHECK(ranks[0] == 1);  // items 3 (3), 4 (4, excluded) above 2
  CHECK(ranks[1] == 1);  // item 1 (8) above item 2 (6)
}

TEST_CASE("full_ranking_ranks rejects bad input", "[cpu]") {
  const std::vector<float> U{1.f}, E{0.f, 1.f, 2.f};
  Ragged ex = make_ragged({{}});
  ItemId t0 = 0, t3 = 3, t1 = 1;
  CHECK_THROWS_AS(ada::full_ranking_ranks(U.data(), 1, E.data(), nullptr, 3, 1, &t0, ex), ada::Error);
  CHECK_THROWS_AS(ada::full_ranking_ranks(U.data(), 1, E.data(), nullptr, 3, 1, &t3, ex), ada::Error);
  Ragged bad_id = make_ragged({{5}});
  CHECK_THROWS_AS(ada::full_ranking_ranks(U.data(), 1, E.data(), nullptr, 3, 1, &t1, bad_id), ada::Error);
  Ragged two_rows = make_ragged({{}, {}});
  CHECK_THROWS_AS(ada::full_ranking_ranks(U.data(), 1, E.data(), nullptr, 3, 1, &t1, two_rows), ada::Error);
  Ragged none;
  CHECK(ada::full_ranking_ranks(U.data(), 0, E.data(), nullptr, 3, 1, nullptr, none).empty());
}

TEST_CASE("full_ranking_ranks matches a double-precision brute force", "[cpu]") {
  struct Shape {
    int64_t B, N, D;
  };
  // The second shape spans several user blocks.
  for (const Shape sh : {Shape{37, 1001, 16}, Shape{1100, 1001, 8}}) {
    for (const bool with_bias : {true, false}) {
      INFO("B=" << sh.B << " N=" << sh.N << " D=" << sh.D << " bias=" << with_bias);
      const Problem p = random_problem(sh.B, sh.N, sh.D, 7u + uint32_t(sh.B));
      std::mt19937 rng(11);
      std::uniform_int_distribution<int> item(1, int(sh.N) - 1);
      std::vector<ItemId> targets(size_t(sh.B));
      for (auto& t : targets) t = ItemId(item(rng));
      const Ragged ex = random_excludes(sh.B, sh.N, &targets, 5, 30);
      const auto ranks = ada::full_ranking_ranks(p.U.data(), sh.B, p.E.data(), with_bias ? p.bias.data() : nullptr,
                                                 sh.N, sh.D, targets.data(), ex);
      REQUIRE(int64_t(ranks.size()) == sh.B);
      int64_t exact = 0;
      for (int64_t b = 0; b < sh.B; ++b) {
        const auto s = scores_f64(p, b, with_bias);
        const ItemId t = targets[size_t(b)];
        std::set<ItemId> excluded(ex.row_begin(size_t(b)), ex.row_end(size_t(b)));
        int32_t lo = 0, hi = 0, mid = 0;  // strictly above by a margin / above within the margin / plain
        for (ItemId j = 1; j < sh.N; ++j) {
          if (j == t || excluded.count(j)) continue;
          const double d = s[size_t(j)] - s[size_t(t)];
          lo += d > kTieEps;
          hi += d > -kTieEps;
          mid += d > 0;
        }
        INFO("row " << b);
        CHECK(ranks[size_t(b)] >= lo);
        CHECK(ranks[size_t(b)] <= hi);
        exact += ranks[size_t(b)] == mid;
      }
      // Near-ties are rare with continuous random data.
      CHECK(exact >= sh.B - 2);
    }
  }
}

namespace {

// Candidates of row b sorted by (score desc, id asc) in double precision.
std::vector<std::pair<double, ItemId>> brute_topk(const Problem& p, int64_t b, bool with_bias, const Ragged& ex,
                                                  const Ragged* extra) {
  const auto s = scores_f64(p, b, with_bias);
  std::set<ItemId> excluded(ex.row_begin(size_t(b)), ex.row_end(size_t(b)));
  if (extra) excluded.insert(extra->row_begin(size_t(b)), extra->row_end(size_t(b)));
  std::vector<std::pair<double, ItemId>> c;
  for (ItemId j = 1; j < p.N; ++j)
    if (!excluded.count(j)) c.emplace_back(s[size_t(j)], j);
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b2) {
    return a.first > b2.first || (a.first == b2.first && a.second < b2.second);
  });
  return c;
}

// Checks one top-k result against the brute force: same ids except where the brute-force scores of
// the two ids are within kTieEps, scores close, strictly sorted, no excluded or repeated ids.
void check_topk(const Problem& p, bool with_bias, int k, const Ragged& ex, const Ragged* extra,
                const std::vector<ItemId>& ids, const std::vector<float>& scores) {
  for (int64_t b = 0; b < p.B; ++b) {
    INFO("row " << b << " k=" << k);
    const auto bf = brute_topk(p, b, with_bias, ex, extra);
    REQUIRE(int64_t(bf.size()) >= k);
    const auto s = scores_f64(p, b, with_bias);
    std::set<ItemId> excluded(ex.row_begin(size_t(b)), ex.row_end(size_t(b)));
    if (extra) excluded.insert(extra->row_begin(size_t(b)), extra->row_end(size_t(b)));
    std::set<ItemId> seen;
    for (int i = 0; i < k; ++i) {
      const ItemId id = ids[size_t(b * k + i)];
      const float sc = scores[size_t(b * k + i)];
      INFO("position " << i << " id " << id << " expected " << bf[size_t(i)].second);
      REQUIRE(id >= 1);
      REQUIRE(id < p.N);
      CHECK(excluded.count(id) == 0);
      CHECK(seen.insert(id).second);
      CHECK(std::abs(double(sc) - s[size_t(id)]) < kTieEps);
      CHECK(std::abs(double(sc) - bf[size_t(i)].first) < kTieEps);
      if (id != bf[size_t(i)].second) CHECK(std::abs(s[size_t(id)] - bf[size_t(i)].first) < kTieEps);
      if (i > 0) {
        const float prev = scores[size_t(b * k + i - 1)];
        const ItemId prev_id = ids[size_t(b * k + i - 1)];
        CHECK((prev > sc || (prev == sc && prev_id < id)));
      }
    }
  }
}

}  // namespace

TEST_CASE("topk_excluding matches a double-precision brute force", "[cpu]") {
  const Problem p = random_problem(37, 1001, 16, 3);
  const Ragged ex = random_excludes(p.B, p.N, nullptr, 9, 40);
  const Ragged extra = random_excludes(p.B, p.N, nullptr, 10, 25);
  for (const bool with_bias : {true, false}) {
    for (const int k : {1, 5, 20, 100, 400}) {
      for (const bool use_extra : {false, true}) {
        INFO("bias=" << with_bias << " extra=" << use_extra);
        std::vector<ItemId> ids(size_t(p.B * k), -1);
        std::vector<float> scores(size_t(p.B * k));
        const Ragged* xr = use_extra ? &extra : nullptr;
        ada::topk_excluding(p.U.data(), p.B, p.E.data(), with_bias ? p.bias.data() : nullptr, p.N, p.D, k, ex, xr,
                            ids.data(), scores.data());
        check_topk(p, with_bias, k, ex, xr, ids, scores);
      }
    }
  }
}

TEST_CASE("topk_excluding on a larger catalog", "[cpu]") {
  // N large enough that the chunk prefilter handles k = 100 as well.
  const Problem p = random_problem(6, 5000, 16, 8);
  const Ragged ex = random_excludes(p.B, p.N, nullptr, 13, 60);
  for (const int k : {1, 100}) {
    std::vector<ItemId> ids(static_cast<size_t>(p.B * k));
    std::vector<float> scores(static_cast<size_t>(p.B * k));
    ada::topk_excluding(p.U.data(), p.B, p.E.data(), p.bias.data(), p.N, p.D, k, ex, nullptr, ids.data(),
                        scores.data());
    check_topk(p, true, k, ex, nullptr, ids, scores);
  }
}

TEST_CASE("topk_excluding over several user blocks", "[cpu]") {
  const Problem p = random_problem(1100, 1001, 8, 4);
  const Ragged ex = random_excludes(p.B, p.N, nullptr, 12, 20);
  const int k = 20;
  std::vector<ItemId> ids(size_t(p.B * k));
  std::vector<float> scores(size_t(p.B * k));
  ada::topk_excluding(p.U.data(), p.B, p.E.data(), p.bias.data(), p.N, p.D, k, ex, nullptr, ids.data(),
                      scores.data());
  check_topk(p, true, k, ex, nullptr, ids, scores);
}

TEST_CASE("topk_excluding breaks exact ties by the smaller id", "[cpu]") {
  // Integer scores with many exact ties: score(j) = (j * 7) % 13, u = 1, D = 1.
  Problem p{3, 1001, 1, {1.f, 1.f, 1.f}, {}, {}, {}};
  for (int64_t j = 0; j < p.N; ++j) p.E.push_back(float((j * 7) % 13));
  const Ragged ex = make_ragged({{}, {1, 2, 3, 12, 12}, {}});
  const Ragged extra = make_ragged({{}, {}, {25, 38, 0}});
  for (const int k : {1, 10, 77, 300}) {
    std::vector<ItemId> ids(size_t(p.B * k));
    std::vector<float> scores(size_t(p.B * k));
    ada::topk_excluding(p.U.data(), p.B, p.E.data(), nullptr, p.N, p.D, k, ex, &extra, ids.data(), scores.data());
    for (int64_t b = 0; b < p.B; ++b) {
      const auto bf = brute_topk(p, b, false, ex, &extra);
      for (int i = 0; i < k; ++i) {
        INFO("row " << b << " k " << k << " position " << i);
        CHECK(ids[size_t(b * k + i)] == bf[size_t(i)].second);
        CHECK(scores[size_t(b * k + i)] == float(bf[size_t(i)].first));
      }
    }
  }
}

TEST_CASE("topk_excluding candidate counts and k limits", "[cpu]") {
  const Problem p = random_problem(2, 50, 4, 5);
  // Row 0: 10 distinct excluded items (with duplicates and item 0) -> 49 - 10 = 39 candidates.
  // Row 1: 3 excluded by `exclude`, 2 more by `extra` (one overlapping) -> 49 - 4 = 45 candidates.
  const Ragged ex = make_ragged({{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 3, 0}, {11, 12, 13}});
  const Ragged extra = make_ragged({{}, {13, 14}});
  auto run = [&](int k) {
    std::vector<ItemId> ids(size_t(p.B * std::max(k, 1)));
    std::vector<float> scores(ids.size());
    ada::topk_excluding(p.U.data(), p.B, p.E.data(), p.bias.data(), p.N, p.D, k, ex, &extra, ids.data(),
                        scores.data());
    return std::make_pair(ids, scores);
  };
  SECTION("k equal to the smallest candidate count returns every candidate of that row") {
    const auto out = run(39);
    check_topk(p, true, 39, ex, &extra, out.first, out.second);
    std::set<ItemId> row0(out.first.begin(), out.first.begin() + 39);
    CHECK(row0.size() == 39);
    CHECK(*row0.begin() == 11);
  }
  SECTION("k beyond a row's candidates throws naming the row and counts") {
    CHECK_THROWS_AS(run(40), ada::Error);
    try {
      run(40);
    } catch (const ada::Error& e) {
      const std::string msg = e.what();
      CHECK(msg.find("row 0") != std::string::npos);
      CHECK(msg.find("39") != std::string::npos);
      CHECK(msg.find("40") != std::string::npos);
    }
  }
  SECTION("k <= 0 throws") {
    CHECK_THROWS_AS(run(0), ada::Error);
    CHECK_THROWS_AS(run(-3), ada::Error);
  }
  SECTION("exclusion ids outside the catalog throw") {
    const Ragged bad = make_ragged({{50}, {}});
    std::vector<ItemId> ids(4);
    std::vector<float> scores(4);
    CHECK_THROWS_AS(ada::topk_excluding(p.U.data(), p.B, p.E.data(), nullptr, p.N, p.D, 2, bad, nullptr,
                                        ids.data(), scores.data()),
                    ada::Error);
  }
}

TEST_CASE("topk_excluding survives NaN scores", "[cpu]") {
  // A diverged model must not crash the evaluator: NaN items rank after every number.
  const int64_t N = 300;
  std::vector<float> U{1.f}, E(static_cast<size_t>(N));
  for (int64_t j = 0; j < N; ++j) E[size_t(j)] = float(j % 17);
  for (int64_t j = 5; j < N; j += 9) E[size_t(j)] = std::numeric_limits<float>::quiet_NaN();
  const Ragged ex = make_ragged({{}});
  int n_nan = 0;
  for (int64_t j = 1; j < N; ++j) n_nan += std::isnan(E[size_t(j)]);
  for (const int k : {10, int(N - 1)}) {
    std::vector<ItemId> ids(static_cast<size_t>(k));
    std::vector<float> scores(static_cast<size_t>(k));
    ada::topk_excluding(U.data(), 1, E.data(), nullptr, N, 1, k, ex, nullptr, ids.data(), scores.data());
    std::set<ItemId> uniq(ids.begin(), ids.end());
    CHECK(int(uniq.size()) == k);
    CHECK(scores[0] == 16.f);
    const int tail_nan = k == int(N - 1) ? n_nan : 0;
    for (int i = 0; i < k; ++i) CHECK(bool(std::isnan(scores[size_t(i)])) == (i >= k - tail_nan));
  }
}
