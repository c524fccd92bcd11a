// The launch order of the CUDA kernels that take one block per item of uneven work
// (src/core/work_order.hpp): most work first, equal work in index order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "ada/check.hpp"
#include "src/core/work_order.hpp"

using namespace ada;

namespace {

// The order by its definition: a stable sort of the indices by work, descending.
std::vector<int32_t> reference(const std::vector<int64_t>& work) {
  std::vector<int32_t> o(work.size());
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](int32_t a, int32_t b) { return work[size_t(a)] > work[size_t(b)]; });
  return o;
}

std::vector<int32_t> ordered(const std::vector<int64_t>& work) {
  std::vector<int32_t> o(work.size(), -1);
  order_by_work_desc(work.data(), int64_t(work.size()), o.data());
  return o;
}

}  // namespace

TEST_CASE("work order: most work first, ties in index order", "[cpu]") {
  CHECK(ordered({3, 0, 5, 3, 5, 1}) == std::vector<int32_t>{2, 4, 0, 3, 5, 1});
  CHECK(ordered({}).empty());
  CHECK(ordered({7}) == std::vector<int32_t>{0});
  CHECK(ordered({2, 2, 2, 2}) == std::vector<int32_t>{0, 1, 2, 3});  // uniform work: the launch order kept
}

TEST_CASE("work order: the counting sort and the comparison sort agree with the definition", "[cpu]") {
  std::mt19937_64 rng(20261129);
  for (int64_t n : {1, 2, 17, 1000, 4096}) {
    // small work (counting sort), work far above n (comparison sort), and a mix with one huge value
    for (int64_t top : {int64_t(3), int64_t(50), int64_t(2500), int64_t(1) << 40}) {
      std::vector<int64_t> work(static_cast<size_t>(n));
      for (auto& w : work) w = int64_t(rng() % uint64_t(top + 1));
      CHECK(ordered(work) == reference(work));
      work[size_t(n / 2)] = int64_t(1) << 50;
      CHECK(ordered(work) == reference(work));
    }
  }
}

TEST_CASE("work order: spans of a jagged layout", "[cpu]") {
  const std::vector<int64_t> off{0, 2, 2, 52, 53, 103};  // spans 2, 0, 50, 1, 50
  std::vector<int32_t> o(5, -1);
  order_by_span_desc(off.data(), 5, o.data());
  CHECK(o == std::vector<int32_t>{2, 4, 0, 3, 1});
}

TEST_CASE("work order: negative work is an error naming the item", "[cpu]") {
  const std::vector<int64_t> off{0, 4, 3};  // item 1 spans -1
  std::vector<int32_t> o(2);
  try {
    order_by_span_desc(off.data(), 2, o.data());
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("item 1 has negative work -1") != std::string::npos);
  }
}
