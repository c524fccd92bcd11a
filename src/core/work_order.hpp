// The order in which a kernel with one block per item of uneven work (a sample's queries, a
// sequence's attention pairs) takes its items: the most work first. The hardware hands blocks to the
// multiprocessors roughly in increasing block index, so a long item whose block comes late in a grid
// of several waves runs on after the rest have finished; taking blocks in this order instead is
// longest-processing-time-first list scheduling (a long block starts in the first wave and short
// ones fill in around it). Each block still computes exactly the item it is given, so the results
// do not depend on the order, only the time does.
#pragma once
#include <cstdint>

namespace ada {

// order[0..n) := the indices 0 .. n-1 by work[i] descending, equal work in increasing index (a
// stable order: equal work keeps the launch order it had). work[i] >= 0, else ada::Error.
void order_by_work_desc(const int64_t* work, int64_t n, int32_t* order);

// The same with work[i] = offsets[i + 1] - offsets[i] (a jagged layout's per-item counts).
void order_by_span_desc(const int64_t* offsets, int64_t n, int32_t* order);

}  // namespace ada
