// Synthetic interaction data with real sequential structure, for tests and quick training runs.
//
// Items 1..n_items are split into n_clusters contiguous, balanced id ranges (the latent interests):
// item id i belongs to cluster (i - 1) * n_clusters / n_items. Inside a cluster, position q (0 =
// the cluster's first id) has popularity 1 / (q + 1)^kPopularityExponent. Each user holds
// interests_per_user distinct clusters and walks through them:
//   - with probability `noise` the next item is uniform over all items;
//   - otherwise, after switching with probability switch_prob to another of the user's interests,
//     the next item comes from the current interest: near the user's previous item of that
//     interest (weight exp(-|q - q_prev| / kWalkScale)) times the popularity above, or by
//     popularity alone the first time the interest is visited.
// Items already in the sequence are never drawn again. So the next item is predictable from the
// recent history (same cluster, neighbouring ids), which a sequential model can learn and a
// popularity baseline cannot. Every draw comes from the counter RNG: stream (kSynthetic, user, 1),
// one counter per user, so the data depend on the options alone.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "ada/check.hpp"
#include "ada/data.hpp"
#include "ada/rng.hpp"

namespace ada {

namespace {

constexpr double kPopularityExponent = 0.8;
constexpr double kWalkScale = 2.0;

// Sequential draws from one counter-RNG stream.
class Draws {
 public:
  Draws(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}
  uint32_t u32() { return random_u32(seed_, stream_, counter_++); }
  uint32_t below(uint32_t n) { return u32_to_range(u32(), n); }
  double unit() { return double(u32()) * (1.0 / 4294967296.0); }  // [0, 1)

 private:
  uint64_t seed_, stream_;
  uint64_t counter_ = 0;
};

}  // namespace

Dataset generate_synthetic(const SyntheticOptions& opt) {
  ADA_CHECK(opt.n_users >= 1, "generate_synthetic: n_users must be >= 1, got " << opt.n_users);
  ADA_CHECK(opt.n_items >= 3, "generate_synthetic: n_items must be >= 3, got " << opt.n_items);
  ADA_CHECK(opt.n_clusters >= 1 && opt.n_clusters <= opt.n_items,
            "generate_synthetic: n_clusters must be in 1..n_items, got " << opt.n_clusters);
  ADA_CHECK(opt.interests_per_user >= 1 && opt.interests_per_user <= opt.n_clusters,
            "generate_synthetic: interests_per_user must be in 1..n_clusters, got "
                << opt.interests_per_user);
  ADA_CHECK(opt.min_len >= 3 && opt.min_len <= opt.max_len,
            "generate_synthetic: need 3 <= min_len <= max_len, got " << opt.min_len << ", "
                                                                     << opt.max_len);
  ADA_CHECK(opt.max_len <= opt.n_items, "generate_synthetic: max_len "
                                            << opt.max_len << " exceeds n_items " << opt.n_items
                                            << " (items do not repeat within a sequence)");
  ADA_CHECK(opt.switch_prob >= 0 && opt.switch_prob <= 1,
            "generate_synthetic: switch_prob must be in [0, 1], got " << opt.switch_prob);
  ADA_CHECK(opt.noise >= 0 && opt.noise <= 1,
            "generate_synthetic: noise must be in [0, 1], got " << opt.noise);

  const int m = opt.n_items, c_count = opt.n_clusters;
  // First 0-based item index of cluster c: the smallest k with k * C / m == c.
  auto cluster_begin = [&](int c) { return int((int64_t(c) * m + c_count - 1) / c_count); };
  int max_cluster = 0;
  for (int c = 0; c < c_count; ++c)
    max_cluster = std::max(max_cluster, cluster_begin(c + 1) - cluster_begin(c));
  std::vector<double> popularity(static_cast<size_t>(max_cluster));
  for (int q = 0; q < max_cluster; ++q)
    popularity[size_t(q)] = std::pow(double(q + 1), -kPopularityExponent);

  Dataset ds;
  ds.name = "synthetic";
  ds.n_items = m + 1;
  ds.sequences.reserve(size_t(opt.n_users));
  ds.user_names.reserve(size_t(opt.n_users));

  std::vector<char> used(size_t(m) + 1, 0);  // used[id]: already in the current sequence
  std::vector<int> clusters(static_cast<size_t>(c_count));
  std::vector<double> weight(static_cast<size_t>(max_cluster));
  const int k = opt.interests_per_user;
  std::vector<int> interest(static_cast<size_t>(k)), last_pos(static_cast<size_t>(k));

  for (int u = 0; u < opt.n_users; ++u) {
    Draws rng(opt.seed, rng_stream(RngPurpose::kSynthetic, uint32_t(u), 1));
    // Distinct interests: the first k entries of a partial Fisher-Yates shuffle of the clusters.
    std::iota(clusters.begin(), clusters.end(), 0);
    for (int i = 0; i < k; ++i) {
      const int j = i + int(rng.below(uint32_t(c_count - i)));
      std::swap(clusters[size_t(i)], clusters[size_t(j)]);
      interest[size_t(i)] = clusters[size_t(i)];
      last_pos[size_t(i)] = -1;
    }
    // Length skewed towards short sequences, as in real logs.
    const double r = rng.unit();
    const int len =
        std::min(opt.max_len, opt.min_len + int(double(opt.max_len - opt.min_len + 1) * r * r));

    std::vector<ItemId> seq;
    seq.reserve(size_t(len));
    auto uniform_unused = [&]() {
      for (;;) {
        const ItemId id = ItemId(1 + rng.below(uint32_t(m)));
        if (!used[size_t(id)]) return id;
      }
    };
    int cur = int(rng.below(uint32_t(k)));
    for (int step = 0; step < len; ++step) {
      if (step > 0 && k > 1 && rng.unit() < opt.switch_prob)
        cur = (cur + 1 + int(rng.below(uint32_t(k - 1)))) % k;  // any other interest, uniformly
      ItemId id = 0;
      if (rng.unit() >= opt.noise) {
        const int c = interest[size_t(cur)];
        const int b = cluster_begin(c), size = cluster_begin(c + 1) - b;
        const int prev = last_pos[size_t(cur)];
        double total = 0;
        for (int q = 0; q < size; ++q) {
          double w = 0;
          if (!used[size_t(b + q + 1)]) {
            w = popularity[size_t(q)];
            if (prev >= 0) w *= std::exp(-std::abs(q - prev) / kWalkScale);
          }
          weight[size_t(q)] = w;
          total += w;
        }
        if (total > 0) {
          const double x = rng.unit() * total;
          double acc = 0;
          int pick = -1;
          for (int q = 0; q < size; ++q) {
            if (weight[size_t(q)] <= 0) continue;
            acc += weight[size_t(q)];
            pick = q;  // the last positive weight also absorbs rounding at the top end
            if (x < acc) break;
          }
          id = ItemId(b + pick + 1);
          last_pos[size_t(cur)] = pick;
        }
      }
      if (id == 0) id = uniform_unused();  // noise, or the interest is exhausted
      used[size_t(id)] = 1;
      seq.push_back(id);
    }
    for (ItemId id : seq) used[size_t(id)] = 0;
    ds.sequences.push_back(std::move(seq));
    ds.user_names.push_back(std::to_string(u + 1));
  }
  return ds;
}

}  // namespace ada
