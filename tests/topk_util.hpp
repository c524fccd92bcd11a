// Shared by the top-k tests (CPU and CUDA): random problems and a checker that accepts any exact
// top-k "up to ties" (scores from a different summation order may differ in the last bits).
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "ada/topk.hpp"

namespace topk_test {

using ada::ItemId;
using ada::Ragged;

struct Problem {
  int64_t B, N, D;
  std::vector<float> U, E, bias;
  Ragged exclude;
};

// N items (row 0 = padding), B queries, exclusion lists of 0..max_excl ids (duplicates and item 0
// included on purpose). With `ties`, items come in groups sharing one embedding and bias.
inline Problem random_problem(int64_t B, int64_t N, int64_t D, uint32_t seed, int max_excl, bool ties = false) {
  Problem p{B, N, D, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  p.U.resize(size_t(B * D));
  p.E.resize(size_t(N * D));
  p.bias.resize(size_t(N));
  for (auto& x : p.U) x = normal(rng);
  for (auto& x : p.E) x = 0.5f * normal(rng);
  for (auto& x : p.bias) x = 0.3f * normal(rng);
  if (ties)
    for (int64_t j = 1; j < N; ++j) {
      const int64_t src = 1 + (j - 1) / 3 * 3;  // groups of 3 identical items
      std::copy_n(p.E.begin() + src * D, D, p.E.begin() + j * D);
      p.bias[size_t(j)] = p.bias[size_t(src)];
    }
  std::uniform_int_distribution<int> item(0, int(N) - 1), len(0, std::max(0, max_excl));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<ItemId> row(size_t(len(rng)));
    for (auto& x : row) x = ItemId(item(rng));
    if (!row.empty() && row.size() > 1) row.push_back(row.front());  // a duplicate
    p.exclude.push_row(row.data(), row.data() + row.size());
  }
  return p;
}

inline double score_f64(const Problem& p, int64_t b, int64_t j) {
  double acc = 0;
  for (int64_t d = 0; d < p.D; ++d) acc += double(p.U[size_t(b * p.D + d)]) * double(p.E[size_t(j * p.D + d)]);
  return acc + double(p.bias[size_t(j)]);
}

// Candidates of row b (not padding, not excluded), and their exact scores.
inline std::vector<std::pair<double, ItemId>> candidates(const Problem& p, int64_t b, const Ragged* extra = nullptr) {
  std::set<ItemId> ex(p.exclude.row_begin(size_t(b)), p.exclude.row_end(size_t(b)));
  if (extra) ex.insert(extra->row_begin(size_t(b)), extra->row_end(size_t(b)));
  std::vector<std::pair<double, ItemId>> out;
  for (int64_t j = 1; j < p.N; ++j)
    if (!ex.count(ItemId(j))) out.emplace_back(score_f64(p, b, j), ItemId(j));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& c) {
    return a.first > c.first || (a.first == c.first && a.second < c.second);
  });
  return out;
}

// `got` is a correct top-k of row b up to ties within `tol` (absolute, on the score scale):
// min(k, candidates) distinct candidate ids, reported scores within tol of the exact ones, in
// non-increasing order (within tol), and no candidate left out that beats the last kept by > tol.
inline void check_row_topk(const Problem& p, int64_t b, int k, const ada::TopkLists& got, double tol,
                           const Ragged* extra = nullptr) {
  const auto cand = candidates(p, b, extra);
  const int want = int(std::min<size_t>(cand.size(), size_t(k)));
  INFO("row " << b << " k " << k << " candidates " << cand.size());
  REQUIRE(got.count[size_t(b)] == want);
  std::set<ItemId> cand_ids;
  for (const auto& c : cand) cand_ids.insert(c.second);
  std::set<ItemId> seen;
  double last = HUGE_VAL;
  for (int i = 0; i < want; ++i) {
    const ItemId id = got.ids[size_t(b * got.k + i)];
    const float s = got.scores[size_t(b * got.k + i)];
    INFO("position " << i << " id " << id);
    REQUIRE(cand_ids.count(id) == 1);
    REQUIRE(seen.insert(id).second);
    REQUIRE(std::isfinite(s));
    REQUIRE(std::abs(double(s) - score_f64(p, b, id)) <= tol);
    REQUIRE(double(s) <= last + tol);
    last = s;
  }
  for (int i = want; i < got.k; ++i) REQUIRE(got.ids[size_t(b * got.k + i)] == -1);
  if (want > 0) {
    for (const auto& c : cand)
      if (!seen.count(c.second)) {
        INFO("left out id " << c.second << " score " << c.first << ", last kept " << last);
        REQUIRE(c.first <= last + tol);
        break;  // the best left-out candidate decides
      }
  }
}

}  // namespace topk_test
