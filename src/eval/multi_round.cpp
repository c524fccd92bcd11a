#include <numeric>

#include "ada/check.hpp"
#include "ada/eval.hpp"

namespace ada {

void multi_round_topk(const float* users, int64_t B, const float* E, const float* bias, int64_t N, int64_t D,
                      const std::vector<int>& ks, const Ragged& exclude, ItemId* ids, float* scores) {
  ADA_CHECK(!ks.empty(), "multi_round_topk: no rounds");
  ADA_CHECK(int64_t(exclude.rows()) == B, "multi_round_topk: " << exclude.rows() << " exclusion rows for " << B << " users");
  const int total = std::accumulate(ks.begin(), ks.end(), 0);
  Ragged earlier;  // per row: the items of the rounds so far
  earlier.offsets.assign(size_t(B) + 1, 0);
  int done = 0;
  std::vector<ItemId> rid;
  std::vector<float> rsc;
  for (size_t t = 0; t < ks.size(); ++t) {
    const int k = ks[t];
    rid.resize(size_t(B * k));
    rsc.resize(size_t(B * k));
    topk_excluding(users + int64_t(t) * B * D, B, E, bias, N, D, k, exclude, t == 0 ? nullptr : &earlier, rid.data(),
                   rsc.data());
    for (int64_t b = 0; b < B; ++b)
      for (int j = 0; j < k; ++j) {
        ids[b * total + done + j] = rid[size_t(b * k + j)];
        scores[b * total + done + j] = rsc[size_t(b * k + j)];
      }
    done += k;
    // rebuild the per-row earlier lists from the concatenated output
    earlier.ids.resize(size_t(B * done));
    for (int64_t b = 0; b < B; ++b) {
      std::copy(ids + b * total, ids + b * total + done, earlier.ids.begin() + b * done);
      earlier.offsets[size_t(b) + 1] = (b + 1) * done;
    }
  }
}

void multi_round_topk(Backend<float>& be, const float* users, int64_t B, const float* E, const float* bias, int64_t N,
                      int64_t D, const std::vector<int>& ks, const Ragged& exclude, ItemId* ids, float* scores) {
  ADA_CHECK(!ks.empty(), "multi_round_topk: no rounds");
  ADA_CHECK(int64_t(exclude.rows()) == B, "multi_round_topk: " << exclude.rows() << " exclusion rows for " << B << " users");
  const int total = std::accumulate(ks.begin(), ks.end(), 0);
  std::vector<ItemId> rid;
  std::vector<float> rsc;
  Ragged ex;  // per row: its own exclusions, then the items of the rounds so far
  int done = 0;
  for (size_t t = 0; t < ks.size(); ++t) {
    const int k = ks[t];
    ex.offsets.assign(1, 0);
    ex.ids.clear();
    for (int64_t b = 0; b < B; ++b) {
      ex.ids.insert(ex.ids.end(), exclude.row_begin(size_t(b)), exclude.row_end(size_t(b)));
      ex.ids.insert(ex.ids.end(), ids + b * total, ids + b * total + done);
      ex.offsets.push_back(int64_t(ex.ids.size()));
    }
    rid.resize(size_t(B * k));
    rsc.resize(size_t(B * k));
    be.topk(rid.data(), users + int64_t(t) * B * D, B, E, bias, N, D, k, ex, rsc.data());
    for (int64_t b = 0; b < B; ++b)
      for (int j = 0; j < k; ++j) {
        ids[b * total + done + j] = rid[size_t(b * k + j)];
        scores[b * total + done + j] = rsc[size_t(b * k + j)];
      }
    done += k;
  }
}

std::vector<double> round_hits(const std::vector<int32_t>& ranks, int rounds, int k_per_round) {
  ADA_CHECK(!ranks.empty() && rounds > 0 && k_per_round > 0, "round_hits: empty input");
  std::vector<double> hits(size_t(rounds), 0.0);
  for (int32_t r : ranks) {
    const int t = r / k_per_round;
    if (r >= 0 && t < rounds) hits[size_t(t)] += 1.0;
  }
  for (double& h : hits) h /= double(ranks.size());
  return hits;
}

}  // namespace ada
