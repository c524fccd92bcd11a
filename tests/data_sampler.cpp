// TrainSampler: negatives (rejection rules, count, determinism), shuffling, history truncation and
// independence from the batch size.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "ada/check.hpp"
#include "ada/data.hpp"
#include "tests/test_util.hpp"

namespace {

const ada::Dataset& small_synthetic() {
  static const ada::Dataset ds = [] {
    ada::SyntheticOptions opt;
    opt.n_users = 300;
    opt.n_items = 400;
    return ada::generate_synthetic(opt);
  }();
  return ds;
}

// Every row of every batch of the current epoch, in order.
struct Rows {
  std::vector<int32_t> users;
  std::vector<std::vector<ada::ItemId>> histories;
  std::vector<std::vector<ada::ItemId>> items;
};

Rows epoch_rows(const ada::TrainSampler& s, size_t batch_size) {
  Rows out;
  ada::Batch b;
  for (size_t i = 0; i < s.num_batches(batch_size); ++i) {
    s.fill_batch(i, batch_size, b);
    const size_t w = size_t(b.n_neg) + 1;
    REQUIRE(b.items.size() == b.size() * w);
    REQUIRE(b.histories.rows() == b.size());
    for (size_t r = 0; r < b.size(); ++r) {
      out.users.push_back(b.users[r]);
      out.histories.emplace_back(b.histories.row_begin(r), b.histories.row_end(r));
      out.items.emplace_back(b.items.begin() + long(r * w), b.items.begin() + long((r + 1) * w));
    }
  }
  return out;
}

}  // namespace

TEST_CASE("sampler negatives avoid the positive and the user's full sequence", "[data]") {
  const ada::Dataset& ds = small_synthetic();
  ada::TrainSampler sampler(ds, 7);
  sampler.start_epoch(1);
  const Rows rows = epoch_rows(sampler, 256);
  REQUIRE(rows.users.size() == sampler.num_samples());
  std::set<ada::ItemId> seen_negatives;
  for (size_t r = 0; r < rows.users.size(); ++r) {
    const auto& seq = ds.sequences[size_t(rows.users[r])];
    const std::set<ada::ItemId> full(seq.begin(), seq.end());
    const auto& items = rows.items[r];
    REQUIRE(items.size() == 101);  // the positive and 100 negatives
    REQUIRE(full.count(items[0]) == 1);
    for (size_t j = 1; j < items.size(); ++j) {
      INFO("row " << r << " column " << j << " item " << items[j]);
      REQUIRE(items[j] != items[0]);
      REQUIRE(full.count(items[j]) == 0);
      REQUIRE((items[j] >= 1 && items[j] < ds.n_items));
      seen_negatives.insert(items[j]);
    }
  }
  // Uniform over the catalogue: with ~1.5M draws over 400 items, every item shows up.
  CHECK(seen_negatives.size() == size_t(ds.n_items - 1));
}

TEST_CASE("sampler falls back to item 0 when every item is excluded", "[data]") {
  ada::Dataset ds;
  ds.sequences = {{1, 2, 3}, {3, 1, 2, 4}};
  ds.n_items = 5;
  ada::TrainSampler sampler(ds, 3, 5);
  ada::Batch b;
  sampler.fill_batch(0, 8, b);
  REQUIRE(b.size() == 3);
  CHECK(b.n_neg == 5);
  for (size_t r = 0; r < b.size(); ++r) {
    const bool user1 = b.users[r] == 1;
    for (int j = 1; j <= 5; ++j) {
      const ada::ItemId v = b.items[r * 6 + size_t(j)];
      // User 1 has every item; user 0 can only get item 4.
      CHECK(v == (user1 ? 0 : 4));
    }
  }
}

TEST_CASE("sampler is deterministic for (seed, epoch) and changes across epochs and seeds",
          "[data]") {
  const ada::Dataset& ds = small_synthetic();
  ada::TrainSampler a(ds, 11), b(ds, 11), c(ds, 12);
  a.start_epoch(2);
  b.start_epoch(5);
  b.start_epoch(2);  // an earlier epoch on the same object must not leave a trace
  c.start_epoch(2);
  const Rows ra = epoch_rows(a, 100), rb = epoch_rows(b, 100), rc = epoch_rows(c, 100);
  CHECK(ra.users == rb.users);
  CHECK(ra.histories == rb.histories);
  CHECK(ra.items == rb.items);
  CHECK(ra.items != rc.items);

  a.start_epoch(3);
  const Rows r3 = epoch_rows(a, 100);
  CHECK(r3.items != ra.items);
  // The shuffle differs, not just the negatives: count rows whose positive moved.
  size_t moved = 0;
  for (size_t i = 0; i < r3.items.size(); ++i) moved += r3.items[i][0] != ra.items[i][0];
  CHECK(moved > r3.items.size() / 2);
}

TEST_CASE("sampler batches do not depend on the batch size", "[data]") {
  const ada::Dataset& ds = small_synthetic();
  ada::TrainSampler s(ds, 5, 20);
  s.start_epoch(4);
  const Rows r1 = epoch_rows(s, 1), r7 = epoch_rows(s, 7),
             rall = epoch_rows(s, s.num_samples() + 3);
  CHECK(s.num_batches(7) == (s.num_samples() + 6) / 7);
  CHECK(r1.users == r7.users);
  CHECK(r1.items == r7.items);
  CHECK(r1.histories == r7.histories);
  CHECK(r1.items == rall.items);
  // And the last, short batch has the right size.
  ada::Batch b;
  s.fill_batch(s.num_batches(7) - 1, 7, b);
  CHECK(b.size() == s.num_samples() - 7 * (s.num_batches(7) - 1));
  CHECK_THROWS_AS(s.fill_batch(s.num_batches(7), 7, b), ada::Error);
}

TEST_CASE("sampler visits every sample exactly once per epoch", "[data]") {
  const ada::Dataset& ds = small_synthetic();
  ada::TrainSampler s(ds, 9, 1);
  for (uint32_t epoch : {0u, 1u}) {
    s.start_epoch(epoch);
    const Rows rows = epoch_rows(s, 64);
    // Items do not repeat inside a synthetic sequence, so (user, positive) names the sample.
    std::map<std::pair<int32_t, ada::ItemId>, int> count;
    for (size_t r = 0; r < rows.users.size(); ++r) ++count[{rows.users[r], rows.items[r][0]}];
    CHECK(count.size() == s.num_samples());
    for (const auto& kv : count) REQUIRE(kv.second == 1);
    for (const auto& t : ada::train_samples(ds)) {
      const ada::ItemId pos = ds.sequences[size_t(t.user)][size_t(t.pos)];
      REQUIRE(count.count({t.user, pos}) == 1);
    }
  }
}

TEST_CASE("sampler histories keep the most recent max_len items in order", "[data]") {
  ada::Dataset ds;
  std::vector<ada::ItemId> longer;
  for (int i = 1; i <= 30; ++i) longer.push_back(i);
  ds.sequences = {longer, {40, 41, 42}};
  ds.n_items = 50;
  const int max_len = 8;
  ada::TrainSampler s(ds, 1, 3, max_len);
  s.start_epoch(0);
  const Rows rows = epoch_rows(s, 5);
  REQUIRE(rows.users.size() == 28 + 1);
  size_t empty = 0, truncated = 0;
  for (size_t r = 0; r < rows.users.size(); ++r) {
    const auto& seq = ds.sequences[size_t(rows.users[r])];
    const ada::ItemId pos_item = rows.items[r][0];
    const size_t p = size_t(std::find(seq.begin(), seq.end(), pos_item) - seq.begin());
    const size_t start = p > size_t(max_len) ? p - size_t(max_len) : 0;
    const std::vector<ada::ItemId> want(seq.begin() + long(start), seq.begin() + long(p));
    REQUIRE(rows.histories[r] == want);
    empty += want.empty();
    truncated += p > size_t(max_len);
  }
  CHECK(empty == 2);       // p = 0 of each user: empty history
  CHECK(truncated == 19);  // p = 9..27 of the long user
}

TEST_CASE("sampler on Beauty: a whole epoch of negatives", "[data]") {
  const std::string path = ada_test::shared_file_or_skip("data/beauty.txt");
  const ada::Dataset ds = ada::load_fmlp(path);
  ada::TrainSampler s(ds, 366849);
  s.start_epoch(1);
  ada::Batch b;
  const auto t0 = std::chrono::steady_clock::now();
  size_t rows = 0, zeros = 0;
  for (size_t i = 0; i < s.num_batches(1024); ++i) {
    s.fill_batch(i, 1024, b);
    rows += b.size();
    zeros += size_t(std::count(b.items.begin(), b.items.end(), 0));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("Beauty epoch: %zu samples x 100 negatives in %.3f s\n", rows, secs);
  CHECK(rows == 153776);
  CHECK(zeros == 0);  // never needs the fallback with 12,101 items
  // Spot check the rejection rule on the last batch.
  for (size_t r = 0; r < b.size(); ++r) {
    const auto& seq = ds.sequences[size_t(b.users[r])];
    for (int j = 1; j <= b.n_neg; ++j)
      REQUIRE(std::find(seq.begin(), seq.end(), b.items[r * 101 + size_t(j)]) == seq.end());
  }
}
