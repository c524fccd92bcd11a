#include "src/core/work_order.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include "ada/check.hpp"

namespace ada {
namespace {

// Counting sort where the largest work is at most a few times n (the common case: spans of a
// batch), else a stable comparison sort; both give the same order.
template <class WorkAt>
void order_desc(WorkAt work_at, int64_t n, int32_t* order) {
  ADA_CHECK(n >= 0 && n <= INT32_MAX, "order_by_work_desc: " << n << " items");
  int64_t top = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t w = work_at(i);
    ADA_CHECK(w >= 0, "order_by_work_desc: item " << i << " has negative work " << w);
    top = std::max(top, w);
  }
  if (top <= 4 * n + 1024) {
    std::vector<int64_t> start(size_t(top) + 2, 0);  // start[top - w + 1] counts work w
    for (int64_t i = 0; i < n; ++i) ++start[size_t(top - work_at(i) + 1)];
    for (size_t v = 1; v < start.size(); ++v) start[v] += start[v - 1];
    for (int64_t i = 0; i < n; ++i) order[start[size_t(top - work_at(i))]++] = int32_t(i);
    return;
  }
  std::iota(order, order + n, 0);
  std::stable_sort(order, order + n, [&](int32_t a, int32_t b) { return work_at(a) > work_at(b); });
}

}  // namespace

void order_by_work_desc(const int64_t* work, int64_t n, int32_t* order) {
  order_desc([work](int64_t i) { return work[i]; }, n, order);
}

void order_by_span_desc(const int64_t* offsets, int64_t n, int32_t* order) {
  order_desc([offsets](int64_t i) { return offsets[i + 1] - offsets[i]; }, n, order);
}

}  // namespace ada
