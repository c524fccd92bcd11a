// End-to-end serving: AdaRetriever::retrieve_batch with T = 5 rounds and k = 100 on a synthetic
// Ada-SASRec (random weights, D = 64) over a catalog of 1M items (12,101 with --benchmark_filter on
// /12101/). Latency at B = 1 and throughput at B = 64 and 1024 (users/s), for each way of searching
// the catalog: the evaluation's sgemm path (shards 0) and 4 CPU shards with the model on the CPU
// backend, and the GPU (skipped without a CUDA device): the model on the CUDA backend, its context
// and the returned lists from the fused top-k kernel. scripts/gpu-check runs the GPU rows.
//   BM_retrieve/<device: 0 cpu-sgemm, 1 cpu-shards, 2 cuda (the top-k launches autotuned, as by
//               default: the tuning happens in the untimed first call), 3 cuda with the top-k's
//               fixed launch rules instead (autotuning off)>/<N>/<B>
//   BM_user_vectors/<device>/<N>/<B>   the model's part alone: forward() of the T rounds with its
//                                      T - 1 context searches (BM_retrieve runs T searches in all,
//                                      each giving a round's list and the next round's context)
//   BM_batching/<device>/<N>/<how>/threads:<n>  n threads at once, each sending one history at a
//                                      time through one model: how 0 = each takes a mutex and calls
//                                      retrieve_scored (B = 1), 1 = a BatchingRetriever (one worker
//                                      serves the waiting requests as one batch); requests/s, and
//                                      the mean and largest batch
//   BM_retrieve_phases/<device>/<N>/<B>  BM_retrieve with AdaRetriever's timing on: where a call's
//                                      time goes (ms per call: forward launches or CPU forward,
//                                      wait for the device, searches, bookkeeping, request), as the
//                                      ph<NN>_ counters scripts/gpu-check prints after the time
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>

#include "ada/ada_model.hpp"
#include "ada/batching.hpp"
#include "ada/checkpoint.hpp"
#include "ada/device.hpp"
#include "ada/retriever.hpp"
#include "ada/topk.hpp"

namespace {

using namespace ada;

// The checkpoints this process wrote (260 MB each at 1M items), removed when it exits normally.
struct Checkpoints {
  std::map<int32_t, std::string> made;
  ~Checkpoints() {
    for (const auto& f : made) {
      std::error_code ec;
      std::filesystem::remove(f.second, ec);
    }
  }
};

// One checkpoint file per catalog size, written once per process.
std::string checkpoint_for(int32_t n_items) {
  static Checkpoints files;
  auto& made = files.made;
  auto it = made.find(n_items);
  if (it != made.end()) return it->second;
  SasRecConfig c;
  c.n_items = n_items + 1;
  AdaConfig a;  // T = 5, K = 100
  auto be = make_cpu_backend<float>();
  AdaSasRec<float> m(c, a, *be);
  m.init(11);
  ModelInfo info;
  info.sasrec = c;
  info.ada = true;
  info.ada_cfg = a;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("ada_bench_serving_" + std::to_string(n_items) + "_" + std::to_string(::getpid()) +
                             ".safetensors"))
                               .string();
  save_checkpoint(path, m.params(), info);
  made[n_items] = path;
  return path;
}

std::vector<std::vector<ItemId>> histories(int64_t B, int32_t n_items) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> item(1, n_items), len(1, 50);
  std::vector<std::vector<ItemId>> out(static_cast<size_t>(B));
  for (auto& h : out) {
    h.resize(size_t(len(rng)));
    for (auto& x : h) x = item(rng);
  }
  return out;
}

// The retriever and histories of a row (device, catalog, batch); nullopt (and the row skipped) when
// it asks for a GPU and there is none.
std::optional<std::pair<AdaRetriever, std::vector<std::vector<ItemId>>>> setup(benchmark::State& st) {
  const int mode = int(st.range(0));
  const int32_t n_items = int32_t(st.range(1));
  if (mode >= 2 && cuda_device_count() == 0) {
    st.SkipWithError("no CUDA device");
    return std::nullopt;
  }
  RetrieverOptions o;
  o.device = mode >= 2 ? "cuda" : "cpu";
  o.shards = mode == 1 ? 4 : (mode >= 2 ? 1 : 0);
  return std::make_pair(AdaRetriever::load(checkpoint_for(n_items), o), histories(st.range(2), n_items));
}

// Mode 3: the top-k's autotuning off for the scope of a row (back to what it was at its end).
struct Variants {
  explicit Variants(int mode) : on(mode == 3) {
    if (!on) return;
    was = gpu_topk_autotune();
    set_gpu_topk_autotune(TopkAutotune::kOff);
  }
  ~Variants() {
    if (on) set_gpu_topk_autotune(was);
  }
  Variants(const Variants&) = delete;
  Variants& operator=(const Variants&) = delete;
  bool on;
  TopkAutotune was = TopkAutotune::kOn;
};

// One untimed call before the timed ones: the first call of a freshly loaded retriever allocates
// every activation and workspace buffer and faults their pages in (on the dev machine, 389k page
// faults and 1.9 s for the CPU row at 12,101 items and B = 1024, against 1.2-1.3 s for the calls
// after it), and a row that runs a single timed iteration (the slow CPU rows) would report that
// first call instead of the steady state a server sees.
template <class Call>
void warm_up(Call call) {
  benchmark::DoNotOptimize(call());
}

void BM_retrieve(benchmark::State& st) {
  auto s = setup(st);
  if (!s) return;
  const Variants v(int(st.range(0)));
  warm_up([&] { return s->first.retrieve_batch(s->second, 100, 5); });
  for (auto _ : st) benchmark::DoNotOptimize(s->first.retrieve_batch(s->second, 100, 5));
  st.counters["users/s"] = benchmark::Counter(double(st.range(2)), benchmark::Counter::kIsIterationInvariantRate);
}

// The model's part of BM_retrieve alone: the T rounds' user vectors (forward() with its T - 1
// context searches) and their copy to the host. BM_retrieve's forward_lists runs T searches that
// give both the lists and the contexts, so the difference is the lists' extra search and host work.
void BM_user_vectors(benchmark::State& st) {
  auto s = setup(st);
  if (!s) return;
  const Variants v(int(st.range(0)));
  warm_up([&] { return s->first.user_vectors(s->second, 5); });
  for (auto _ : st) benchmark::DoNotOptimize(s->first.user_vectors(s->second, 5));
  st.counters["users/s"] = benchmark::Counter(double(st.range(2)), benchmark::Counter::kIsIterationInvariantRate);
}

// BM_retrieve with the retriever's timing on (a GPU model waits for its device work before each
// search, so the searches are timed alone; the other rows run without it). Counters: the parts of a
// call in ms (they add up to the row's time, up to the benchmark loop) and the searches per call.
void BM_retrieve_phases(benchmark::State& st) {
  auto s = setup(st);
  if (!s) return;
  const Variants v(int(st.range(0)));
  AdaRetriever& r = s->first;
  r.set_timing(true);
  warm_up([&] { return r.retrieve_batch(s->second, 100, 5); });
  r.reset_timing();
  for (auto _ : st) benchmark::DoNotOptimize(r.retrieve_batch(s->second, 100, 5));
  const RetrieveTiming t = r.timing();
  const double per_call_ms = t.calls > 0 ? 1e3 / double(t.calls) : 0.0;
  st.counters["ph01_forward"] = t.forward_s * per_call_ms;
  st.counters["ph02_wait"] = t.wait_s * per_call_ms;
  st.counters["ph03_search"] = t.search_s * per_call_ms;
  st.counters["ph04_host"] = t.host_s * per_call_ms;
  st.counters["ph05_request"] = t.request_s * per_call_ms;
  st.counters["ph06_searches"] = t.calls > 0 ? double(t.searches) / double(t.calls) : 0.0;
  st.counters["users/s"] = benchmark::Counter(double(st.range(2)), benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel("ms per call and searches per call");  // no comma: CSV
}

// One model shared by the row's threads (made by thread 0 before the loop, whose start and end
// every thread meets).
struct SharedModel {
  std::optional<AdaRetriever> model;
  std::unique_ptr<BatchingRetriever> server;
  std::mutex mu;
  std::vector<std::vector<ItemId>> seqs;
};

void BM_batching(benchmark::State& st) {
  static SharedModel* sh = nullptr;
  const int mode = int(st.range(0));
  const bool batching = st.range(2) == 1;
  if (st.thread_index() == 0) {
    sh = nullptr;
    if (mode < 2 || cuda_device_count() > 0) {
      RetrieverOptions o;
      o.device = mode >= 2 ? "cuda" : "cpu";
      sh = new SharedModel;
      sh->model.emplace(AdaRetriever::load(checkpoint_for(int32_t(st.range(1))), o));
      sh->seqs = histories(1024, int32_t(st.range(1)));
      for (int i = 0; i < 3; ++i) sh->model->retrieve_scored(sh->seqs[size_t(i)], 100, 5);  // first calls untimed
      if (batching) sh->server = std::make_unique<BatchingRetriever>(*sh->model, 100, 5);
    }
  }
  size_t i = size_t(st.thread_index());
  for (auto _ : st) {
    if (!sh) {
      st.SkipWithError("no CUDA device");
      break;
    }
    const std::vector<ItemId>& seq = sh->seqs[i % sh->seqs.size()];
    i += size_t(st.threads());
    if (batching) {
      benchmark::DoNotOptimize(sh->server->retrieve(seq));
    } else {
      const std::lock_guard<std::mutex> lock(sh->mu);
      benchmark::DoNotOptimize(sh->model->retrieve_scored(seq, 100, 5));
    }
  }
  st.SetItemsProcessed(int64_t(st.iterations()));  // summed over the threads: requests/s
  if (st.thread_index() == 0 && sh) {
    if (sh->server) {
      const BatchingRetriever::Stats s = sh->server->stats();
      st.counters["mean_batch"] = s.batches > 0 ? double(s.requests) / double(s.batches) : 0.0;
      st.counters["largest_batch"] = double(s.largest);
    }
    delete sh;
    sh = nullptr;
  }
}

void grid(benchmark::internal::Benchmark* b) {
  for (int mode : {0, 1, 2, 3})
    for (int64_t N : {12101, 1000000})
      for (int64_t B : {1, 64, 1024}) {
        if (mode < 2 && N == 1000000 && B == 1024) continue;  // minutes per iteration on a small CPU
        if (mode == 3 && B != 1024) continue;                 // the variants are for large batches
        b->Args({mode, N, B});
      }
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
}

// The breakdown where it matters: B = 1 (latency) and B = 1024 (throughput).
void phases_grid(benchmark::internal::Benchmark* b) {
  for (int mode : {0, 2, 3})
    for (int64_t N : {12101, 1000000})
      for (int64_t B : {1, 1024}) {
        if (mode < 2 && N == 1000000 && B == 1024) continue;
        if (mode == 3 && B != 1024) continue;
        b->Args({mode, N, B});
      }
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
}

// The breakdown first: in scripts/gpu-check's time budget for this program (90 s) the rows that say
// where the time goes come before the plain ones.
BENCHMARK(BM_retrieve_phases)->Apply(phases_grid);
BENCHMARK(BM_retrieve)->Apply(grid);
BENCHMARK(BM_user_vectors)->Apply(grid);
// CPU: 12,101 items, 8 threads; GPU: 1M items, 64 threads
BENCHMARK(BM_batching)->Args({0, 12101, 0})->Args({0, 12101, 1})->Threads(8)->UseRealTime()->MinTime(0.5);
BENCHMARK(BM_batching)->Args({2, 1000000, 0})->Args({2, 1000000, 1})->Threads(64)->UseRealTime()->MinTime(0.5);

}  // namespace

BENCHMARK_MAIN();
