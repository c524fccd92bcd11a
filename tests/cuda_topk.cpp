// The fused CUDA score + top-k kernel (kernels/topk.cu) against the CPU shard searcher, which does
// the same FP32 arithmetic (fma over d in order, then + bias): lists and scores must be identical.
// Without a CUDA device every case reports itself as skipped.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string>

#include "ada/ada_model.hpp"
#include "ada/batching.hpp"
#include "ada/check.hpp"
#include "ada/checkpoint.hpp"
#include "ada/device.hpp"
#include "ada/retriever.hpp"
#include "ada/topk.hpp"
#include "tests/cuda_test_util.hpp"
#include "tests/test_util.hpp"
#include "tests/topk_util.hpp"

using namespace topk_test;
using ada_test::require_gpu;

namespace {

// GPU and CPU searchers over the same range give the same lists, bit for bit (the sign of a zero
// score included). Without `with_bias` both searchers get no bias.
void compare(const Problem& p, int64_t lo, int64_t hi, int k, const Ragged* extra = nullptr, bool with_bias = true) {
  const float* bias = with_bias ? p.bias.data() : nullptr;
  auto cpu = ada::make_cpu_searcher(p.E.data(), bias, lo, hi, p.D);
  auto gpu = ada::make_gpu_searcher(p.E.data(), bias, lo, hi, p.D, 0);
  const ada::TopkLists want = cpu->search(p.U.data(), p.B, k, p.exclude, extra);
  const ada::TopkLists got = gpu->search(p.U.data(), p.B, k, p.exclude, extra);
  INFO("B " << p.B << " N " << p.N << " D " << p.D << " k " << k << " range [" << lo << ", " << hi << ")");
  REQUIRE(got.count == want.count);
  REQUIRE(got.ids == want.ids);
  for (size_t i = 0; i < got.scores.size(); ++i) {
    INFO("entry " << i);
    if (std::isinf(want.scores[i]))
      REQUIRE(std::isinf(got.scores[i]));
    else
      REQUIRE(std::memcmp(&got.scores[i], &want.scores[i], sizeof(float)) == 0);
  }
}

// One of the GPU searches' process-wide switches set for a scope and back to its default at the end.
template <class T>
class Scoped {
 public:
  Scoped(void (*set)(T), T value, T default_value) : set_(set), default_(default_value) { set_(value); }
  ~Scoped() { set_(default_); }
  Scoped(const Scoped&) = delete;
  Scoped& operator=(const Scoped&) = delete;

 private:
  void (*set_)(T);
  T default_;
};
// The tensor-core mode (default kAuto), whether small batches use the staged warp kernel (default
// on), which tensor-core bounds kernel runs (default kAuto), the select kernel's threads per query
// (default 0). (The tests run untuned, tests/main.cpp: auto then means the fixed rules.)
struct TensorCoreMode : Scoped<ada::TensorCores> {
  explicit TensorCoreMode(ada::TensorCores m) : Scoped(ada::set_gpu_topk_tensor_cores, m, ada::TensorCores::kAuto) {}
};
struct StagedMode : Scoped<bool> {
  explicit StagedMode(bool on) : Scoped(ada::set_gpu_topk_staged, on, true) {}
};
struct TcKernelMode : Scoped<ada::TcKernel> {
  explicit TcKernelMode(ada::TcKernel k) : Scoped(ada::set_gpu_topk_tc_kernel, k, ada::TcKernel::kAuto) {}
};
struct SelectThreadsMode : Scoped<int> {
  explicit SelectThreadsMode(int threads) : Scoped(ada::set_gpu_topk_select_threads, threads, 0) {}
};

// Coordinates so small that their squares underflow in float: the tensor-core error margin must
// still cover the TF32 rounding (norms are summed in double). Item 5 wins by 2^-86 (exactly), but
// TF32 rounds its coordinates down and every other item's first one up, so the approximate scores
// rank it last. And with no bias, a score of -0 (an underflowing negative product) stays -0.
void check_tiny_coordinates() {
  const TensorCoreMode scope(ada::TensorCores::kAlways);
  Problem p = random_problem(64, 700, 32, 29u, 0);
  std::fill(p.U.begin(), p.U.end(), 1.0f);
  std::fill(p.bias.begin(), p.bias.end(), 0.0f);
  const float t = std::ldexp(1.0f, -80);
  for (int64_t j = 0; j < p.N; ++j)
    for (int64_t d = 0; d < p.D; ++d) {
      float v = t;
      if (j == 5)
        v = t * (1.0f + std::ldexp(1.0f, -11) - std::ldexp(1.0f, -23));
      else if (j < 8)
        v = 0.0f;  // item 5's group-mates
      else if (d == 0)
        v = t * (1.0f + std::ldexp(1.0f, -11));
      p.E[size_t(j * p.D + d)] = v;
    }
  compare(p, 0, p.N, 1);
  compare(p, 0, p.N, 20);

  Problem z = random_problem(3, 300, 8, 31u, 5);
  for (auto& u : z.U) u = -t;
  for (auto& e : z.E) e = t;  // every product -2^-160: every score -0
  compare(z, 0, z.N, 10, nullptr, /*with_bias=*/false);
  for (size_t j = 0; j < z.bias.size(); ++j) z.bias[j] = j % 2 ? 0.0f : -0.0f;
  compare(z, 0, z.N, 10);
}

// A tensor-core bounds kernel other than the default gives the CPU's lists: D = 32, 64 and 128, a
// last block of queries cut short (and, for mma.sync, blocks whose later warps have no query), k
// from 1 to 1000, near ties that send groups to exact rescoring, and 1024 queries (16 query blocks
// of wmma, so each block loops over 3 item tiles: the barrier before a tile is staged over the
// last one's products is then needed).
void check_tc_kernel(ada::TcKernel kernel) {
  const TensorCoreMode tc(ada::TensorCores::kAlways);
  const TcKernelMode mode(kernel);
  for (int64_t D : {32, 64, 128}) {
    const Problem p = random_problem(D == 64 ? 130 : 70, 5003, D, uint32_t(37 + D), 20);
    for (int k : {1, 100, 1000}) compare(p, 0, p.N, k);
    compare(p, 9, p.N - 5, 50);
  }
  Problem p = random_problem(64, 3001, 64, 41u, 10);
  std::vector<float> c(p.E.begin() + 64, p.E.begin() + 128);
  for (int64_t j = 0; j < p.N; ++j)
    for (int64_t d = 0; d < 64; ++d) {
      float& e = p.E[size_t(j * 64 + d)];
      e = c[size_t(d)] * (1.0f + 1e-6f * e);
    }
  for (int k : {1, 300}) compare(p, 0, p.N, k);
  const Problem many = random_problem(1024, 12102, 32, 43u, 20);
  compare(many, 0, many.N, 100);
}

}  // namespace

// Every kernel variant on problems small enough for compute-sanitizer (scripts/gpu-check runs the
// tests not tagged [large] under memcheck and racecheck): the warp kernel, the register-tiled FP32
// kernel, the tensor-core kernel; group rescoring (winners side by side) and exclusions in each.
TEST_CASE("cuda top-k: every bounds kernel on small problems", "[cuda][topk]") {
  require_gpu();
  const TensorCoreMode scope(ada::TensorCores::kAlways);
  for (int64_t B : {3, 20, 70}) {
    Problem p = random_problem(B, 700, 32, uint32_t(23 + B), 40);
    compare(p, 0, p.N, 10);
    compare(p, 100, p.N, 33);
    for (int64_t j = 0; j < p.N; ++j)  // score grows with the id: the winners share groups
      for (int64_t d = 0; d < p.D; ++d) p.E[size_t(j * p.D + d)] = float(j) / float(p.N) * p.U[size_t(d)];
    compare(p, 0, p.N, 50);
    if (B < 16) {  // the warp kernel that reads rows from global memory (the staged one ran above)
      const StagedMode unstaged(false);
      compare(p, 0, p.N, 10);
      compare(p, 100, p.N, 33);
    }
  }
  // The staged warp kernel with groups of 64 items (two stages of 32 rows per warp, the last
  // warp's span cut short), D = 64 and 32, one and three queries.
  for (int64_t D : {64, 32}) {
    const Problem p = random_problem(D == 64 ? 1 : 3, 70001, D, uint32_t(31 + D), 10);
    compare(p, 0, p.N, 5);
    compare(p, 1000, p.N - 7, 40);
  }
}

// The TF32 error margin with tiny coordinates (check_tiny_coordinates) on the default tensor-core kernel.
TEST_CASE("cuda top-k: tiny coordinates under tensor cores, negative-zero scores without bias", "[cuda][topk]") {
  require_gpu();
  check_tiny_coordinates();
}

// The wmma kernel with its products stored over the item tile (ada::TcKernel::kWmmaShared). The
// barrier between the products and their store shows only where one warp runs ahead of the
// others: the emulator's `warps` schedule (scripts/test runs it) and racecheck
// (scripts/gpu-check --sanitize).
TEST_CASE("cuda top-k: tensor-core bounds with the products over the item tile", "[cuda][topk]") {
  require_gpu();
  check_tc_kernel(ada::TcKernel::kWmmaShared);
}

// The mma.sync kernel (ada::TcKernel::kMma): the cases above, the tiny coordinates (its item
// operands reach the tensor cores unrounded), and groups of 8 items (a group per n-tile) up to 128
// (a group over two 64-item tiles of the cp.async ring, with chunks ending inside the ring).
TEST_CASE("cuda top-k: tensor-core bounds on mma.sync, the products folded in registers", "[cuda][topk]") {
  require_gpu();
  check_tc_kernel(ada::TcKernel::kMma);
  const TcKernelMode mode(ada::TcKernel::kMma);
  check_tiny_coordinates();
  const TensorCoreMode tc(ada::TensorCores::kAlways);
  const Problem p = random_problem(64, 140001, 32, 47u, 30);  // groups of 128 items at k = 10
  compare(p, 77, p.N - 3, 10);
}

// The select kernel with one warp and with two warps per query (set_gpu_topk_select_threads), after
// exact FP32 bounds and after the mma.sync bounds: the CPU's lists with exclusions, k up to 1000
// (the candidate buffer compacted many times), winners side by side (whole groups rescored, the
// list of groups to rescore written over the keys already read), every score a signed zero, and
// the best items of the best groups excluded. Bad thread counts are refused.
TEST_CASE("cuda top-k: select blocks of one and two warps", "[cuda][topk]") {
  require_gpu();
  for (int threads : {32, 64}) {
    const SelectThreadsMode sel(threads);
    for (ada::TensorCores tcm : {ada::TensorCores::kNever, ada::TensorCores::kAlways}) {
      const TensorCoreMode tc(tcm);
      const TcKernelMode mma(ada::TcKernel::kMma);
      INFO(threads << " select threads, tensor cores " << (tcm == ada::TensorCores::kAlways));
      Problem p = random_problem(70, 3001, 32, uint32_t(53 + threads), 40);
      compare(p, 0, p.N, 10);
      compare(p, 5, p.N, 1000);
      for (int64_t j = 0; j < p.N; ++j)  // score grows with the id: the winners share groups
        for (int64_t d = 0; d < p.D; ++d) p.E[size_t(j * p.D + d)] = float(j) / float(p.N) * p.U[size_t(d)];
      compare(p, 0, p.N, 300);

      Problem z = random_problem(64, 2000, 32, 59u, 20);
      std::fill(z.E.begin(), z.E.end(), 0.0f);
      for (size_t j = 0; j < z.bias.size(); ++j) z.bias[j] = j % 3 == 1 ? -0.0f : 0.0f;
      compare(z, 0, z.N, 70);

      Problem x = random_problem(64, 4000, 32, 61u, 0);
      auto cpu = ada::make_cpu_searcher(x.E.data(), x.bias.data(), 0, x.N, x.D);
      const ada::TopkLists top = cpu->search(x.U.data(), x.B, 200, x.exclude);
      Ragged extra;
      for (int64_t b = 0; b < x.B; ++b) extra.push_row(top.ids.data() + b * 200, top.ids.data() + (b + 1) * 200);
      compare(x, 0, x.N, 20, &extra);
    }
  }
  for (int bad : {-32, 16, 48, 2048}) REQUIRE_THROWS_WITH(ada::set_gpu_topk_select_threads(bad), Catch::Contains("select threads"));
}

// A tuning's report: each launch timed once, a positive time each, the chosen one among them and
// the fastest of them.
void check_tuning(const ada::GpuTopkTuning& t) {
  std::set<std::string> seen;
  for (const auto& [what, ms] : t.tried) {
    INFO(what << ": " << ms << " ms, chosen " << t.chosen << ": " << t.chosen_ms << " ms");
    CHECK(seen.insert(what).second);
    CHECK(ms > 0);
    CHECK(ms >= t.chosen_ms);
  }
  CHECK(std::count(t.tried.begin(), t.tried.end(), std::make_pair(t.chosen, t.chosen_ms)) == 1);
}

// Autotuning (ada::set_gpu_topk_autotune; the other tests run without it): the first search of a
// kind times each launch its auto switches allow (tensor cores or not, which tensor-core kernel,
// the select threads) and keeps the fastest for the kind; the lists stay the CPU's throughout.
TEST_CASE("cuda top-k: autotuning times the allowed launches once per kind and keeps the fastest", "[cuda][topk]") {
  require_gpu();
  struct AutotuneOn {
    AutotuneOn() { ada::set_gpu_topk_autotune(ada::TopkAutotune::kOn); }
    ~AutotuneOn() { ada::set_gpu_topk_autotune(ada::TopkAutotune::kOff); }
  } on;
  REQUIRE(ada::gpu_topk_autotune() == ada::TopkAutotune::kOn);
  REQUIRE(ada::gpu_topk_tunings().empty());
  const Problem p = random_problem(70, 3001, 32, 71u, 40);
  compare(p, 0, p.N, 20);  // the first search of its kind: tuned
  std::vector<ada::GpuTopkTuning> t = ada::gpu_topk_tunings();
  REQUIRE(t.size() == 1);
  CHECK(t[0].batch == 128);  // kinds by powers of two
  CHECK(t[0].items == p.N);
  CHECK(t[0].dim == 32);
  CHECK(t[0].k == 32);
  CHECK(t[0].bias);
  // 70 queries: tensor cores allowed, so every bounds kernel (FP32 and the three on tensor cores),
  // then the select threads after the fastest; each launch timed once
  check_tuning(t[0]);
  bool fp32 = false, mma = false, warp = false;
  for (const auto& [what, ms] : t[0].tried) {
    fp32 = fp32 || what.find("fp32") == 0;
    mma = mma || what.find("mma.sync") == 0;
    warp = warp || what.find(", 32 select threads") != std::string::npos;
  }
  CHECK((fp32 && mma && warp));
  CHECK(t[0].tried.size() >= 7);

  // the same kind (up to 128 queries, k up to 32; the table does not matter): no new tuning
  compare(random_problem(100, 3001, 32, 73u, 40), 0, 3001, 25);
  CHECK(ada::gpu_topk_tunings().size() == 1);
  // k up to 128 is another kind
  compare(p, 0, p.N, 100);
  REQUIRE(ada::gpu_topk_tunings().size() == 2);
  check_tuning(ada::gpu_topk_tunings()[1]);

  // a fixed switch forgets the tunings and leaves the others to tune
  {
    const SelectThreadsMode sel(64);
    CHECK(ada::gpu_topk_tunings().empty());
    compare(p, 0, p.N, 20);
    t = ada::gpu_topk_tunings();
    REQUIRE(t.size() == 1);
    CHECK(t[0].tried.size() == 4);  // the four bounds kernels
    check_tuning(t[0]);
    for (const auto& tried : t[0].tried) CHECK(tried.first.find(", 64 select threads") != std::string::npos);
    // nothing left to choose: tensor cores off and the select threads fixed (no tuning recorded)
    const TensorCoreMode never(ada::TensorCores::kNever);
    compare(p, 0, p.N, 20);
    CHECK(ada::gpu_topk_tunings().empty());
  }
  // below 64 queries only the select threads are left to choose (one bounds launch, timed once)
  const Problem one = random_problem(3, 3001, 32, 79u, 40);
  compare(one, 0, one.N, 20);
  t = ada::gpu_topk_tunings();
  REQUIRE(t.size() == 1);
  CHECK(t[0].tried.size() == 5);
  check_tuning(t[0]);
  // off: no tuning
  ada::set_gpu_topk_autotune(ada::TopkAutotune::kOff);
  compare(p, 0, p.N, 20);
  CHECK(ada::gpu_topk_tunings().empty());
}

// The select kernel's phase clock (ada::set_cuda_phase_clock, for benchmarks): every query's block
// of every call counted, each phase's cycles a sane non-negative number (a phase timed against the
// wrong boundary wraps around), the counts within their bounds, the lists still the CPU's, and
// nothing counted once it is off.
TEST_CASE("cuda top-k: the select kernel's phase clock counts every query and changes no list", "[cuda][topk]") {
  require_gpu();
  const Problem p = random_problem(70, 3001, 32, 67u, 40);  // 376 groups of 8 items
  {
    const ada_test::PhaseClockOn on;
    compare(p, 0, p.N, 10);
    compare(p, 0, p.N, 100);
    const ada::PhaseClockReading r = ada::cuda_phase_clock("topk_select");
    CHECK(r.units == 2 * p.B);
    CHECK(r.unit == "query");
    const auto at = [&](const char* name) { return ada_test::reading_of(r, name); };
    double total = 0;
    for (const char* ph : {"keys", "tau", "offers", "rescore", "sort", "out"}) {
      CHECK(at(ph) >= 0);
      CHECK(at(ph) < 1e12);
      total += at(ph);
    }
    CHECK(total > 0);
    CHECK(at("max_block") >= total);  // the slowest block took at least the mean block's time
    CHECK(at("tau_steps") >= 1);  // every row needs tau: k + 40 excluded + 1 <= 376 groups
    CHECK(at("tau_steps") <= 33);
    CHECK(at("rescored_groups") >= 0);
    CHECK(at("rescored_groups") <= 376);
    CHECK(at("candidates") >= (10 + 100) / 2.0);  // the buffer holds each row's k best at the end
  }
  compare(p, 0, p.N, 10);
  CHECK(ada::cuda_phase_clock("topk_select").units == 0);
  REQUIRE_THROWS_WITH(ada::cuda_phase_clock("no_such_kernel"), Catch::Contains("topk_select"));
}

TEST_CASE("cuda top-k equals the CPU searcher on random problems", "[cuda][topk][large]") {
  require_gpu();
  struct Case {
    int64_t B, N, D;
    int k, max_excl;
  };
  for (const Case c : {Case{1, 2, 64, 1, 0}, Case{1, 12102, 64, 100, 50}, Case{64, 12102, 64, 20, 50},
                       Case{3, 1000, 17, 999, 30}, Case{257, 5000, 32, 1000, 200}, Case{5, 3001, 128, 1024, 10},
                       Case{1024, 12102, 64, 100, 50}, Case{2, 200003, 64, 100, 100}, Case{33, 129, 1, 7, 3},
                       Case{7, 70001, 128, 128, 0}, Case{1, 1000003, 64, 100, 100},
                       // the register-tiled kernel (B >= 16): odd D, 16/32/64 queries per block, D = 128
                       Case{40, 1000, 17, 50, 20}, Case{16, 5000, 64, 300, 10}, Case{100, 777, 128, 128, 5},
                       Case{65, 20000, 32, 1, 3},
                       // groups of 64 items (within a tile) and of 256 (carried across tiles)
                       Case{20, 100000, 8, 3, 5}, Case{17, 300001, 8, 5, 10}}) {
    const Problem p = random_problem(c.B, c.N, c.D, uint32_t(c.B * 7919 + c.N + c.k), c.max_excl);
    compare(p, 0, c.N, c.k);
    if (c.B >= 64)  // both bounds kernels for 64 queries or more: tensor cores and FP32
      for (auto mode : {ada::TensorCores::kAlways, ada::TensorCores::kNever}) {
        const TensorCoreMode scope(mode);
        compare(p, 0, c.N, c.k);
      }
    if (c.B < 16 && (c.D == 32 || c.D == 64)) {  // small batches: the unstaged warp kernel too
      const StagedMode scope(false);
      compare(p, 0, c.N, c.k);
    }
    if (c.B <= 8 || c.N <= 1000) {  // against exact double scores too, where that is cheap
      auto gpu = ada::make_gpu_searcher(p.E.data(), p.bias.data(), 0, c.N, c.D, 0);
      const ada::TopkLists got = gpu->search(p.U.data(), c.B, c.k, p.exclude);
      for (int64_t b = 0; b < c.B; ++b) check_row_topk(p, b, c.k, got, 1e-3);
    }
  }
}

TEST_CASE("cuda top-k: ties by id, extra exclusions, k equal to the candidates, empty rows", "[cuda][topk]") {
  require_gpu();
  const Problem tied = random_problem(9, 3000, 64, 3, 20, /*ties=*/true);
  compare(tied, 0, tied.N, 100);

  Problem p = random_problem(4, 600, 32, 5, 0);
  Ragged extra;
  std::vector<ItemId> all;
  for (ItemId j = 0; j < 600; ++j) all.push_back(j);
  const std::vector<ItemId> some = {1, 2, 3, 599, 300};
  extra.push_row(all.data(), all.data() + all.size());    // row 0: everything excluded -> empty list
  extra.push_row(some.data(), some.data() + some.size());
  extra.push_row(all.data() + 10, all.data() + all.size());  // row 2: 9 candidates left
  extra.push_row(some.data(), some.data());
  compare(p, 0, p.N, 599, &extra);  // k = every item (row 3 has exactly k candidates)
  auto gpu = ada::make_gpu_searcher(p.E.data(), p.bias.data(), 0, p.N, p.D, 0);
  const ada::TopkLists got = gpu->search(p.U.data(), p.B, 599, p.exclude, &extra);
  REQUIRE(got.count[0] == 0);
  for (int64_t b = 0; b < p.B; ++b) check_row_topk(p, b, 599, got, 1e-3, &extra);
}

// The kernel bounds groups of items by their best and second-best scores and rescores a group item
// by item only when its other items may reach the threshold: these problems put the winners next to
// each other (whole groups of them), make every score a signed zero (all ties, decided by id), and
// exclude the best items of the best groups.
TEST_CASE("cuda top-k: adjacent winners, signed-zero ties, excluded group bests", "[cuda][topk][large]") {
  require_gpu();
  const TensorCoreMode scope(ada::TensorCores::kAlways);  // also below 2^16 items
  for (int64_t B : {3, 20, 70}) {  // the warp, register-tiled and tensor-core bounds kernels
    // score grows with the id (u . e_j = j * |u|^2 / N): the top k are the last k items, side by side
    Problem p = random_problem(B, 40001, 32, uint32_t(11 + B), 30);
    for (int64_t j = 0; j < p.N; ++j)
      for (int64_t d = 0; d < p.D; ++d) p.E[size_t(j * p.D + d)] = float(j) / float(p.N) * p.U[size_t(d)];
    std::fill(p.bias.begin(), p.bias.end(), 0.0f);
    for (int k : {1, 100, 1000}) compare(p, 0, p.N, k);
    compare(p, 7, p.N, 100);

    // every score +0 or -0 (zero embeddings, biases of either sign): the order is by id alone
    Problem z = random_problem(B, 9000, 32, uint32_t(13 + B), 20);
    std::fill(z.E.begin(), z.E.end(), 0.0f);
    for (size_t j = 0; j < z.bias.size(); ++j) z.bias[j] = j % 3 == 1 ? -0.0f : 0.0f;
    for (int k : {5, 300}) compare(z, 0, z.N, k);
    compare(z, 4000, 9000, 64);

    // the best items of many groups excluded: every row excludes the CPU's own top 600
    Problem x = random_problem(B, 30000, 32, uint32_t(17 + B), 0);
    auto cpu = ada::make_cpu_searcher(x.E.data(), x.bias.data(), 0, x.N, x.D);
    const ada::TopkLists top = cpu->search(x.U.data(), x.B, 600, x.exclude);
    Ragged extra;
    for (int64_t b = 0; b < B; ++b) extra.push_row(top.ids.data() + b * 600, top.ids.data() + (b + 1) * 600);
    for (int k : {10, 700}) compare(x, 0, x.N, k, &extra);
  }
}

// Scores that differ far below TF32's resolution (one shared embedding plus 1e-6 noise): the
// tensor-core bounds cannot order them, so the error margin must send the close groups to exact
// rescoring, and the lists still equal the CPU's.
TEST_CASE("cuda top-k: near ties below TF32 resolution", "[cuda][topk]") {
  require_gpu();
  const TensorCoreMode scope(ada::TensorCores::kAlways);  // also below 2^16 items
  for (int64_t D : {64, 24}) {  // the tensor-core and the FP32 register-tiled bounds kernels
    Problem p = random_problem(70, 6000, D, uint32_t(19 + D), 10);
    std::vector<float> c(p.E.begin() + D, p.E.begin() + 2 * D);
    for (int64_t j = 0; j < p.N; ++j)
      for (int64_t d = 0; d < D; ++d) {
        float& e = p.E[size_t(j * D + d)];
        e = c[size_t(d)] * (1.0f + 1e-6f * e);
      }
    std::fill(p.bias.begin(), p.bias.end(), 0.25f);
    for (int k : {1, 50, 600}) compare(p, 0, p.N, k);
  }
}

TEST_CASE("several shards on one GPU merge to the unsharded GPU result", "[cuda][topk][large]") {
  require_gpu();
  const Problem p = random_problem(65, 50001, 64, 17, 80);
  ada::ShardedSearcher one, many, mixed;
  one.add(ada::make_gpu_searcher(p.E.data(), p.bias.data(), 1, p.N, p.D, 0));
  for (auto [lo, hi] : ada::split_items(p.N, 5)) many.add(ada::make_gpu_searcher(p.E.data(), p.bias.data(), lo, hi, p.D, 0));
  int s = 0;
  for (auto [lo, hi] : ada::split_items(p.N, 3))
    mixed.add(s++ % 2 ? ada::make_cpu_searcher(p.E.data(), p.bias.data(), lo, hi, p.D)
                      : ada::make_gpu_searcher(p.E.data(), p.bias.data(), lo, hi, p.D, 0));
  for (int k : {1, 100, 1000}) {
    const ada::TopkLists a = one.search(p.U.data(), p.B, k, p.exclude);
    const ada::TopkLists b = many.search(p.U.data(), p.B, k, p.exclude);
    const ada::TopkLists c = mixed.search(p.U.data(), p.B, k, p.exclude);
    REQUIRE(b.ids == a.ids);
    REQUIRE(b.scores == a.scores);
    REQUIRE(c.ids == a.ids);
    REQUIRE(c.scores == a.scores);
  }
}

TEST_CASE("cuda top-k rejects k above its limit and bad ranges with clear errors", "[cuda][topk]") {
  require_gpu();
  const Problem p = random_problem(2, 3000, 8, 1, 0);
  auto gpu = ada::make_gpu_searcher(p.E.data(), p.bias.data(), 0, p.N, p.D, 0);
  REQUIRE_THROWS_WITH(gpu->search(p.U.data(), p.B, ada::kGpuTopkMaxK + 1, p.exclude), Catch::Contains("k = 1025"));
  REQUIRE_THROWS_AS(gpu->search(p.U.data(), p.B, 0, p.exclude), ada::Error);
  REQUIRE_THROWS_AS(ada::make_gpu_searcher(p.E.data(), p.bias.data(), 10, 10, p.D, 0), ada::Error);
}

// Serving with the catalog searches on the GPU (RetrieverOptions{device = "cuda"}): the Ada model's
// own context and the returned lists come from the fused kernel, and equal the CPU shards' bit for bit.
TEST_CASE("AdaRetriever on device cuda: the model on the GPU, lists exact for its user vectors", "[cuda][topk]") {
  require_gpu();
  ada::SasRecConfig c;
  c.n_items = 301;
  c.hidden = 16;
  c.heads = 2;
  c.inner = 24;
  c.max_len = 10;
  c.dropout = 0.0f;
  ada::AdaConfig a;
  a.rounds = 3;
  a.total_k = 30;
  const bool ada_model = GENERATE(true, false);  // an Ada checkpoint, and a base one (one vector, T slices)
  INFO((ada_model ? "Ada model" : "base model"));
  auto be = ada::make_cpu_backend<float>();
  ada::ModelInfo info;
  info.sasrec = c;
  info.ada = ada_model;
  info.ada_cfg = a;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("ada_cuda_retr_" + std::to_string(::getpid()) + ".safetensors"))
                               .string();
  if (ada_model) {
    ada::AdaSasRec<float> m(c, a, *be);
    m.init(5);
    ada::save_checkpoint(path, m.params(), info);
  } else {
    ada::SasRec<float> m(c, *be);
    m.init(5);
    ada::save_checkpoint(path, m.params(), info);
  }
  ada::RetrieverOptions cpu, gpu, gpu_shards;
  cpu.shards = 2;
  gpu.device = "cuda";  // the fused kernel over the whole catalog (Backend::topk)
  gpu_shards.device = "cuda";
  gpu_shards.shards = 3;  // three GPU shard searchers, merged
  ada::AdaRetriever rc = ada::AdaRetriever::load(path, cpu), rg = ada::AdaRetriever::load(path, gpu),
                    rs = ada::AdaRetriever::load(path, gpu_shards);
  std::filesystem::remove(path);
  const std::vector<std::vector<ItemId>> seqs = {{3, 17, 42}, {}, {5}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}};
  const int T = 3, k = 40;
  const int64_t B = int64_t(seqs.size()), D = c.hidden;

  // The GPU forward gives the CPU's user vectors to rounding.
  const std::vector<float> uc = rc.user_vectors(seqs, T), ug = rg.user_vectors(seqs, T);
  REQUIRE(ug.size() == uc.size());
  for (size_t i = 0; i < uc.size(); ++i) {
    INFO("user vector element " << i);
    REQUIRE(std::abs(ug[i] - uc[i]) <= 1e-4f * (1.0f + std::abs(uc[i])));
  }
  CHECK(rs.user_vectors(seqs, T) == ug);  // one GPU model: the same forward either way

  // For the GPU's own vectors (of a batch of these histories), the lists are exact: the CPU
  // searcher's, round by round (history and earlier rounds excluded), scores bit for bit.
  auto exact = ada::make_cpu_searcher(rg.item_embeddings(), rg.item_bias(), 1, c.n_items, D);
  const std::vector<int> ks = ada::AdaRetriever::round_sizes(k, T);
  auto expected = [&](const std::vector<std::vector<ItemId>>& batch, const std::vector<float>& u) {
    const int64_t nb = int64_t(batch.size());
    std::vector<std::vector<ada::Retrieved>> want(batch.size());
    std::vector<std::vector<ItemId>> earlier(batch.size());
    ada::Ragged hist;
    for (const auto& s : batch) hist.push_row(s.data(), s.data() + s.size());
    for (int t = 0; t < T; ++t) {
      std::vector<float> U(size_t(nb * D));  // round t's vectors, [B, D] (user_vectors is [B, T, D])
      for (int64_t b = 0; b < nb; ++b)
        std::copy_n(u.begin() + long((b * T + t) * D), D, U.begin() + long(b * D));
      ada::Ragged extra;
      for (const auto& e : earlier) extra.push_row(e.data(), e.data() + e.size());
      const ada::TopkLists top = exact->search(U.data(), nb, ks[size_t(t)], hist, &extra);
      for (int64_t b = 0; b < nb; ++b)
        for (int i = 0; i < ks[size_t(t)]; ++i) {
          const size_t at = size_t(b * ks[size_t(t)] + i);
          want[size_t(b)].push_back({top.ids[at], top.scores[at], t});
          earlier[size_t(b)].push_back(top.ids[at]);
        }
    }
    return want;
  };
  auto check = [&](const std::vector<std::vector<ada::Retrieved>>& got,
                   const std::vector<std::vector<ada::Retrieved>>& want, const std::string& what) {
    REQUIRE(got.size() == want.size());
    for (size_t b = 0; b < got.size(); ++b) {
      REQUIRE(got[b].size() == want[b].size());
      for (size_t i = 0; i < got[b].size(); ++i) {
        INFO(what << ": user " << b << " position " << i);
        REQUIRE(got[b][i].item == want[b][i].item);
        REQUIRE(got[b][i].score == want[b][i].score);
        REQUIRE(got[b][i].round == want[b][i].round);
      }
    }
  };
  const std::vector<std::vector<ada::Retrieved>> want = expected(seqs, ug);
  // From the kernel, from the GPU shards, and from the kernel with the serving timing on (each
  // search first waits for the device).
  for (int pass = 0; pass < 3; ++pass) {
    ada::AdaRetriever* r = pass == 1 ? &rs : &rg;
    if (pass == 2) rg.set_timing(true);
    check(r->retrieve_batch(seqs, k, T), want, pass == 0 ? "kernel" : pass == 1 ? "shards" : "kernel, timed");
  }
  const ada::RetrieveTiming tm = rg.timing();
  REQUIRE(tm.calls == 1);
  REQUIRE(tm.users == B);
  REQUIRE(tm.searches == T);  // one per round (an Ada round's list and next context share one)
  REQUIRE(tm.search_s > 0.0);
  REQUIRE(tm.wait_s >= 0.0);
  REQUIRE(tm.host_s >= 0.0);
  REQUIRE(tm.forward_s + tm.wait_s + tm.search_s + tm.host_s + tm.request_s == Approx(tm.total_s).epsilon(1e-9));
  rg.set_timing(false);
  // Served as `ada retrieve --serve` does: batches that shrink and grow on the same model (its device
  // buffers reused), each exact for the vectors of its own batch.
  for (const std::vector<size_t>& rows : std::vector<std::vector<size_t>>{{2}, {3, 0}, {1}, {0, 1, 2, 3}, {3}}) {
    std::vector<std::vector<ItemId>> batch;
    for (size_t i : rows) batch.push_back(seqs[i]);
    check(rg.retrieve_batch(batch, k, T), expected(batch, rg.user_vectors(batch, T)),
          "a batch of " + std::to_string(rows.size()));
  }
  // Through a BatchingRetriever, whose worker thread runs the GPU model (made in this thread): one
  // request at a time, so each batch is that history alone.
  {
    std::vector<std::vector<std::vector<ada::Retrieved>>> alone;  // (made first: the server owns rg)
    for (const auto& s : seqs) alone.push_back(expected({s}, rg.user_vectors({s}, T)));
    ada::BatchingRetriever server(rg, k, T);
    for (size_t i = 0; i < seqs.size(); ++i)
      check({server.retrieve(seqs[i])}, alone[i], "through a BatchingRetriever, history " + std::to_string(i));
    CHECK(server.stats().batches == int64_t(seqs.size()));
  }
  // The host tables are the checkpoint's (for export and external indexes).
  REQUIRE(std::equal(rg.item_embeddings(), rg.item_embeddings() + c.n_items * D, rc.item_embeddings()));
}
