// Autotuning of the fused top-k kernel's launch (topk.cuh: topk_autotune; topk.hpp:
// set_gpu_topk_autotune) and the entry points that consult it, topk_device and
// topk_device_bounds_only. Host code only: the kernels are in topk.cu.
//
// Every launch that a plan can describe returns the same lists and scores (tests/cuda_topk.cpp
// checks each against the CPU bit for bit), so which one runs is a question of speed only, and the
// answer depends on the GPU and the shape: on an H100 the FP32 bounds beat the tensor cores at 12k
// items and lost at 1M. Rather than fixed rules measured on one GPU, the first search of a kind
// times the candidates the knobs left to auto allow, on that search's own inputs, and keeps the
// fastest: the bounds kernel first (with the select threads of the rules), then the select threads
// with that bounds kernel (the two interact only through the bounds' tightness, which the first
// stage already measures).
#include "kernels/topk.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "ada/check.hpp"
#include "ada/topk.hpp"
#include "kernels/cuda_util.cuh"

namespace ada {
namespace cuda {
namespace {

// The select threads a tuning tries beside the batch's rule (0).
constexpr int kSelectCandidates[] = {0, 32, 64, 128, 256};
// Timed runs of a candidate after its warm-up: at least one, at most kMaxRuns, until kEnoughMs.
constexpr int kMaxRuns = 5;
constexpr float kEnoughMs = 2.0f;

struct Kind {
  int device;
  int64_t batch, items;
  int dim, k;
  bool bias;
  bool operator<(const Kind& o) const {
    return std::tie(device, batch, items, dim, k, bias) < std::tie(o.device, o.batch, o.items, o.dim, o.k, o.bias);
  }
};

struct Tuned {
  TopkKnobs knobs;  // the chosen settings (no knob left to auto where a choice was timed)
  GpuTopkTuning report;
};

std::mutex g_mu;                    // guards everything below; held through a tuning
std::map<Kind, Tuned> g_tuned;      // by kind
std::vector<Kind> g_order;          // the kinds in the order they were tuned
int g_mode = -1;                    // topk_autotune's mode; -1: not yet read from the environment

int64_t pow2_at_least(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

int mode_locked() {
  if (g_mode < 0) {
    const char* e = std::getenv("ADA_TOPK_AUTOTUNE");
    const std::string v = e ? e : "";
    if (v.empty() || v == "1" || v == "on")
      g_mode = 1;
    else if (v == "0" || v == "off")
      g_mode = 0;
    else if (v == "verbose" || v == "2")
      g_mode = 2;
    else
      ADA_FAIL("ADA_TOPK_AUTOTUNE=\"" << v << "\": expected 0 (off), 1 (on) or verbose");
  }
  return g_mode;
}

bool any_auto(const TopkKnobs& k) { return k.tensor_cores == 0 || k.tc_kernel == kTcAuto || k.select_threads == 0; }

// Two plans launch the same kernels with the same shapes.
bool same_launch(const TopkPlan& a, const TopkPlan& b) {
  return std::tie(a.tensor_cores, a.tc_kernel, a.tiled, a.staged, a.queries_per_block, a.group, a.n_groups,
                  a.chunk_items, a.select_threads, a.cap) ==
         std::tie(b.tensor_cores, b.tc_kernel, b.tiled, b.staged, b.queries_per_block, b.group, b.n_groups,
                  b.chunk_items, b.select_threads, b.cap);
}

std::string describe(const TopkPlan& p) {
  static const char* const tc[] = {"wmma", "wmma-shared", "mma.sync"};
  std::string s = p.tensor_cores ? std::string(tc[p.tc_kernel]) + " bounds"
                  : p.tiled      ? "fp32 tiled bounds (" + std::to_string(p.queries_per_block) + " queries a block)"
                  : p.staged     ? "staged warp bounds"
                                 : "warp bounds";
  return s + ", " + std::to_string(p.select_threads) + " select threads";
}

// The bounds-kernel settings to try for `base` (fixed knobs stay as they are).
std::vector<TopkKnobs> bounds_candidates(const TopkKnobs& base) {
  std::vector<int> kernels = {base.tc_kernel};
  if (base.tc_kernel == kTcAuto) kernels = {0, 1, 2};
  std::vector<TopkKnobs> out;
  if (base.tensor_cores == 0) {
    TopkKnobs k = base;
    k.tensor_cores = 2;
    out.push_back(k);
  }
  if (base.tensor_cores != 2)
    for (int tk : kernels) {
      TopkKnobs k = base;
      k.tensor_cores = 1;
      k.tc_kernel = tk;
      out.push_back(k);
    }
  if (out.empty()) out.push_back(base);
  return out;
}

struct Problem {
  const float* U;
  int64_t B;
  int D;
  const float* E;
  const float* bias;
  int64_t lo, n;
  int k;
  const int64_t* ex_off;
  const int32_t* ex_ids;
  float* out_scores;
  int32_t* out_ids;
  int32_t* out_count;
  TopkWorkspace* ws;
  cudaStream_t stream;

  void run(const TopkPlan& p) const {
    run_topk_plan(p, U, B, D, E, bias, lo, n, k, ex_off, ex_ids, out_scores, out_ids, out_count, *ws, stream, true);
  }
};

// Event pair, destroyed with the scope.
struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    ADA_CUDA_CHECK(cudaEventCreate(&a));
    ADA_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Events() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
};

// A warm-up run (module loading, the kernels' attributes), then the best of up to kMaxRuns timed
// runs, stopping once kEnoughMs have been timed.
double time_plan(const Problem& pr, const TopkPlan& p, Events& ev) {
  pr.run(p);
  float best = std::numeric_limits<float>::infinity(), total = 0;
  for (int r = 0; r < kMaxRuns && (r == 0 || total < kEnoughMs); ++r) {
    ADA_CUDA_CHECK(cudaEventRecord(ev.a, pr.stream));
    pr.run(p);
    ADA_CUDA_CHECK(cudaEventRecord(ev.b, pr.stream));
    ADA_CUDA_CHECK(cudaEventSynchronize(ev.b));
    float ms = 0;
    ADA_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.a, ev.b));
    best = std::min(best, ms);
    total += ms;
  }
  return double(best);
}

// Whether the knobs left to auto allow more than one launch for pr (the select threads always do;
// the bounds kernels collapse to one below 64 queries, or with tensor cores off).
bool has_choice(const Problem& pr, const TopkKnobs& base, int device) {
  if (base.select_threads == 0) return true;
  const std::vector<TopkKnobs> c = bounds_candidates(base);
  const TopkPlan first = plan_topk(pr.B, pr.n, pr.D, pr.k, device, c[0]);
  for (size_t i = 1; i < c.size(); ++i)
    if (!same_launch(first, plan_topk(pr.B, pr.n, pr.D, pr.k, device, c[i]))) return true;
  return false;
}

// Times the candidates for `base` on pr (its outputs end up those of the chosen launch).
Tuned tune(const Problem& pr, const TopkKnobs& base, const Kind& kind) {
  Tuned t;
  GpuTopkTuning& r = t.report;
  r.device = kind.device;
  r.batch = kind.batch;
  r.items = kind.items;
  r.dim = kind.dim;
  r.k = kind.k;
  r.bias = kind.bias;
  Events ev;
  std::vector<TopkPlan> timed;  // every distinct launch timed, with r.tried
  int last = -1;  // the launch run last (its results are in the outputs)
  // the time of knobs' launch (timing it unless the same launch was timed already)
  auto measure = [&](const TopkKnobs& knobs, TopkPlan* plan_out) {
    const TopkPlan p = plan_topk(pr.B, pr.n, pr.D, pr.k, kind.device, knobs);
    *plan_out = p;
    for (size_t i = 0; i < timed.size(); ++i)
      if (same_launch(timed[i], p)) return r.tried[i].second;
    const double ms = time_plan(pr, p, ev);
    timed.push_back(p);
    r.tried.emplace_back(describe(p), ms);
    last = int(timed.size()) - 1;
    return ms;
  };
  double best_ms = std::numeric_limits<double>::infinity();
  TopkPlan best_plan, p;
  TopkKnobs best = base;
  for (const TopkKnobs& c : bounds_candidates(base)) {
    const double ms = measure(c, &p);
    if (ms < best_ms) best_ms = ms, best = c, best_plan = p;
  }
  if (base.select_threads == 0) {
    const TopkKnobs bounds = best;
    for (int threads : kSelectCandidates) {
      TopkKnobs c = bounds;
      c.select_threads = threads;
      const double ms = measure(c, &p);
      if (ms < best_ms) best_ms = ms, best = c, best_plan = p;
    }
  }
  // the chosen launch's results are the ones returned (they equal every other's, but this way the
  // call returns exactly what a later search of the kind would)
  if (last < 0 || !same_launch(timed[size_t(last)], best_plan)) pr.run(best_plan);
  t.knobs = best;
  r.chosen = describe(best_plan);
  r.chosen_ms = best_ms;
  return t;
}

void report(const GpuTopkTuning& r) {
  std::string tried;
  for (const auto& [what, ms] : r.tried) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " %.4g ms", ms);
    tried += (tried.empty() ? "" : "; ") + what + buf;
  }
  std::fprintf(stderr,
               "ada: top-k tuned (GPU %d, batch <= %lld, %lld items, D %d, k <= %d, %s): %s (%.4g ms); tried: %s\n",
               r.device, static_cast<long long>(r.batch), static_cast<long long>(r.items), r.dim, r.k,
               r.bias ? "bias" : "no bias", r.chosen.c_str(), r.chosen_ms, tried.c_str());
}

}  // namespace

void topk_autotune(int mode) {
  ADA_CHECK(mode >= -1 && mode <= 2, "topk: autotune mode " << mode << " (-1 environment, 0 off, 1 on, 2 verbose)");
  const std::lock_guard<std::mutex> lock(g_mu);
  g_mode = mode;
  g_tuned.clear();
  g_order.clear();
}

void topk_tunings_clear() {
  const std::lock_guard<std::mutex> lock(g_mu);
  g_tuned.clear();
  g_order.clear();
}

void topk_device(const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo, int64_t n, int k,
                 const int64_t* ex_off, const int32_t* ex_ids, float* out_scores, int32_t* out_ids,
                 int32_t* out_count, TopkWorkspace& ws, cudaStream_t stream) {
  if (B == 0) return;
  int device = 0;
  ADA_CUDA_CHECK(cudaGetDevice(&device));
  const Problem pr{U, B, D, E, bias, lo, n, k, ex_off, ex_ids, out_scores, out_ids, out_count, &ws, stream};
  const TopkKnobs knobs = topk_knobs();
  TopkKnobs use = knobs;  // what this search runs with
  if (any_auto(knobs)) {
    const Kind kind{device, pow2_at_least(B), n, D, int(pow2_at_least(k)), bias != nullptr};
    const std::lock_guard<std::mutex> lock(g_mu);  // (held through a tuning: one at a time)
    if (mode_locked() != 0) {
      const auto it = g_tuned.find(kind);
      if (it != g_tuned.end()) {
        use = it->second.knobs;  // run below, outside the lock
      } else {
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        ADA_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
        if (capture == cudaStreamCaptureStatusNone && has_choice(pr, knobs, device)) {
          // (k's range is checked by the plan; the tuning of a kind is made by its first search)
          Tuned t = tune(pr, knobs, kind);
          if (g_mode == 2) report(t.report);
          g_order.push_back(kind);
          g_tuned.emplace(kind, std::move(t));
          return;
        }
      }
    }
  }
  pr.run(plan_topk(B, n, D, k, device, use));
}

void topk_device_bounds_only(const float* U, int64_t B, int D, const float* E, const float* bias, int64_t lo,
                             int64_t n, int k, TopkWorkspace& ws, cudaStream_t stream) {
  if (B == 0) return;
  int device = 0;
  ADA_CUDA_CHECK(cudaGetDevice(&device));
  TopkKnobs knobs = topk_knobs();
  {
    const std::lock_guard<std::mutex> lock(g_mu);
    const auto it = g_tuned.find(Kind{device, pow2_at_least(B), n, D, int(pow2_at_least(k)), bias != nullptr});
    if (it != g_tuned.end()) knobs = it->second.knobs;
  }
  run_topk_plan(plan_topk(B, n, D, k, device, knobs), U, B, D, E, bias, lo, n, k, nullptr, nullptr, nullptr, nullptr,
                nullptr, ws, stream, false);
}

}  // namespace cuda

void set_gpu_topk_autotune(TopkAutotune mode) { cuda::topk_autotune(int(mode)); }
TopkAutotune gpu_topk_autotune() {
  const std::lock_guard<std::mutex> lock(cuda::g_mu);
  return TopkAutotune(cuda::mode_locked());
}

std::vector<GpuTopkTuning> gpu_topk_tunings() {
  const std::lock_guard<std::mutex> lock(cuda::g_mu);
  std::vector<GpuTopkTuning> out;
  for (const cuda::Kind& kind : cuda::g_order) out.push_back(cuda::g_tuned.at(kind).report);
  return out;
}

}  // namespace ada
