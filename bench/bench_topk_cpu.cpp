// The CPU baselines of the top-k grid (bench_topk_cuda.cu runs the GPU side):
//   BM_cpu_searcher/B/N/k    the CPU shard searcher (topk.hpp): fma scoring, bit-identical to the GPU kernel
//   BM_topk_excluding/B/N/k  the evaluation's sgemm-based top-k (eval.hpp)
// D = 64, 50 excluded items per row, one OpenMP/OpenBLAS configuration as the process starts.
// Counters: queries/s (items_per_second), table bytes/s, TFLOP/s of the scoring.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "ada/eval.hpp"
#include "ada/topk.hpp"

namespace {

constexpr int64_t kD = 64;

struct Problem {
  int64_t N = 0;
  std::vector<float> E, bias, U;
  ada::Ragged exclude;
};

const Problem& problem(int64_t N, int64_t B) {
  static Problem p;
  if (p.N != N || int64_t(p.exclude.rows()) < B) {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.f, 1.f);
    p = Problem{};
    p.N = N;
    p.E.resize(size_t(N * kD));
    p.bias.resize(size_t(N));
    p.U.resize(size_t(1024 * kD));
    for (auto& x : p.E) x = normal(rng);
    for (auto& x : p.bias) x = 0.1f * normal(rng);
    for (auto& x : p.U) x = normal(rng);
    std::uniform_int_distribution<int> item(1, int(N) - 1);
    for (int b = 0; b < 1024; ++b) {
      std::vector<ada::ItemId> row(50);
      for (auto& x : row) x = item(rng);
      p.exclude.push_row(row.data(), row.data() + row.size());
    }
  }
  return p;
}

ada::Ragged first_rows(const ada::Ragged& r, int64_t B) {
  ada::Ragged out;
  for (int64_t b = 0; b < B; ++b) out.push_row(r.row_begin(size_t(b)), r.row_end(size_t(b)));
  return out;
}

void counters(benchmark::State& st, int64_t B, int64_t N) {
  st.SetItemsProcessed(int64_t(st.iterations()) * B);
  st.SetBytesProcessed(int64_t(st.iterations()) * N * (kD + 1) * int64_t(sizeof(float)));
  st.counters["TFLOP/s"] =
      benchmark::Counter(2.0 * double(B) * double(N) * kD * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_cpu_searcher(benchmark::State& st) {
  const int64_t B = st.range(0), N = st.range(1);
  const int k = int(st.range(2));
  const Problem& p = problem(N, B);
  const ada::Ragged ex = first_rows(p.exclude, B);
  auto s = ada::make_cpu_searcher(p.E.data(), p.bias.data(), 1, N, kD);
  for (auto _ : st) benchmark::DoNotOptimize(s->search(p.U.data(), B, k, ex));
  counters(st, B, N);
}

void BM_topk_excluding(benchmark::State& st) {
  const int64_t B = st.range(0), N = st.range(1);
  const int k = int(st.range(2));
  const Problem& p = problem(N, B);
  const ada::Ragged ex = first_rows(p.exclude, B);
  std::vector<ada::ItemId> ids(size_t(B * k));
  std::vector<float> scores(size_t(B * k));
  for (auto _ : st)
    ada::topk_excluding(p.U.data(), B, p.E.data(), p.bias.data(), N, kD, k, ex, nullptr, ids.data(), scores.data());
  counters(st, B, N);
}

void grid(benchmark::internal::Benchmark* b) {
  for (int64_t N : {12101, 1000000})
    for (int64_t B : {1, 64, 1024})
      for (int64_t k : {20, 100, 1000}) b->Args({B, N, k});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_cpu_searcher)->Apply(grid);
BENCHMARK(BM_topk_excluding)->Apply(grid);

}  // namespace

BENCHMARK_MAIN();
