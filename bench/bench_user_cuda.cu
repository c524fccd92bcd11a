// The fused user representation adapter (Backend::user_adapter_forward/backward on the CUDA backend,
// kernels/fused_user.cu) against its composed baseline at the Beauty shapes: B = 1024 samples,
// D = 64, dropout 0.1777, round t = 4 (the last round of T = 5: a GRU over 4 earlier vectors) and
// t = 1 (one step).
//
//   BM_user_fwd/<t>                     the fused forward (one kernel)
//   BM_user_fwd_baseline_cublas/<t>     the composition the model ran before (Backend's default
//                                       definition on the CUDA backend's primitive ops: cuBLAS
//                                       GEMMs for every linear layer, a kernel per elementwise op)
//   BM_user_bwd/<t>, BM_user_bwd_baseline_cublas/<t>         the backward (saved tensors from one
//                                       forward; parameter gradients accumulate over iterations)
//   BM_user_fwdbwd/<t>, BM_user_fwdbwd_baseline_cublas/<t>   forward + backward
//   BM_user_bwd_phases/<t>              BM_user_bwd with its kernel's phase clock on (per CTA)
// CUDA-event time (UseManualTime); "FLOP/s" counts the nominal products (2 t 3D^2 x 2 for the GRU,
// 6 D^2 for the MLP, per row, x 2 FLOP; backward twice that: data and weight gradients).
// Inputs are random; tests/cuda_fused_user.cpp checks the values.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "ada/backend.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"
#include "ada/rng.hpp"
#include "bench/cuda_bench_util.cuh"

namespace {

using ada::DeviceArray;
using ada_bench::backend;
using ada_bench::random_device;
using ada_bench::Timer;

constexpr int64_t kB = 1024, kD = 64;

// Everything one adapter call needs, at round t.
struct Problem {
  ada::UserAdapterShape sh;
  std::vector<DeviceArray<float>> w, g, saved;
  DeviceArray<float> users, v, out, work, d_out, d_users, d_v;

  explicit Problem(int t) {
    sh.B = kB;
    sh.D = kD;
    sh.t = t;
    sh.p = 0.1777f;
    sh.seed = 7;
    sh.stream = ada::rng_stream(ada::RngPurpose::kDropout, 3, 41);
    sh.eps = 1e-12;
    const int64_t D = kD, B = kB;
    const int64_t ps[] = {3 * D * D, 3 * D, 3 * D * D, 3 * D, 4 * D * D, 2 * D, 2 * D * D, D, D, D};
    for (int i = 0; i < 10; ++i) {
      w.push_back(random_device(size_t(ps[i]), uint32_t(10 + i), 1.0f / std::sqrt(float(D))));
      g.push_back(random_device(size_t(ps[i]), uint32_t(30 + i), 0.01f));
    }
    for (int64_t n : {(t + 1) * B * D, t * B * 3 * D, t * B * 3 * D, B * 2 * D, B * D, B, B})
      saved.emplace_back(size_t(n));
    users = random_device(size_t(t * B * D), 1, 1.f);
    v = random_device(size_t(B * D), 2, 1.f);
    d_out = random_device(size_t(B * D), 3, 1.f);
    d_users = random_device(size_t(t * B * D), 4, 0.1f);
    out = DeviceArray<float>(size_t(B * D));
    d_v = DeviceArray<float>(size_t(B * D));
    work = DeviceArray<float>(size_t(ada::user_adapter_work_size(sh)));
  }
  ada::UserAdapterTensors<const float*> wt() {
    ada::UserAdapterTensors<const float*> t;
    const float** f[] = {&t.w_ih, &t.b_ih, &t.w_hh, &t.b_hh, &t.w1, &t.b1, &t.w2, &t.b2, &t.ln_w, &t.ln_b};
    for (int i = 0; i < 10; ++i) *f[i] = w[size_t(i)].data();
    return t;
  }
  ada::UserAdapterTensors<float*> gt() {
    ada::UserAdapterTensors<float*> t;
    float** f[] = {&t.w_ih, &t.b_ih, &t.w_hh, &t.b_hh, &t.w1, &t.b1, &t.w2, &t.b2, &t.ln_w, &t.ln_b};
    for (int i = 0; i < 10; ++i) *f[i] = g[size_t(i)].data();
    return t;
  }
  ada::UserAdapterSaved<float> sv() {
    ada::UserAdapterSaved<float> s;
    float** f[] = {&s.hs, &s.gates, &s.gh, &s.a1r, &s.r2, &s.mean, &s.rstd};
    for (int i = 0; i < 7; ++i) *f[i] = saved[size_t(i)].data();
    return s;
  }
  // fused = the CUDA backend's override; otherwise Backend's default definition (the composition)
  void forward(ada::Backend<float>& be, bool fused) {
    if (fused)
      be.user_adapter_forward(out.data(), sv(), work.data(), users.data(), v.data(), wt(), sh);
    else
      be.ada::Backend<float>::user_adapter_forward(out.data(), sv(), work.data(), users.data(), v.data(),
                                                  wt(), sh);
  }
  void backward(ada::Backend<float>& be, bool fused) {
    if (fused)
      be.user_adapter_backward(d_v.data(), d_users.data(), gt(), work.data(), d_out.data(), sv(),
                               users.data(), v.data(), wt(), sh);
    else
      be.ada::Backend<float>::user_adapter_backward(d_v.data(), d_users.data(), gt(), work.data(),
                                                   d_out.data(), sv(), users.data(), v.data(), wt(), sh);
  }
};

double fwd_flops(int t) {
  const double D = double(kD);
  return 2.0 * double(kB) * (2.0 * t * 3.0 * D * D + 6.0 * D * D);
}

template <class F>
void timed(benchmark::State& st, F&& op) {
  op();  // warm-up
  ada::cuda_synchronize();
  Timer tm;
  for (auto _ : st) {
    tm.start();
    op();
    st.SetIterationTime(tm.stop());
  }
}

// what: 0 forward, 1 backward, 2 forward + backward
void run(benchmark::State& st, int what, bool fused) {
  auto* be = backend(st);
  if (!be) return;
  const int t = int(st.range(0));
  Problem pr(t);
  pr.forward(*be, fused);  // saved tensors for the backward
  if (what == 0) timed(st, [&] { pr.forward(*be, fused); });
  if (what == 1) timed(st, [&] { pr.backward(*be, fused); });
  if (what == 2)
    timed(st, [&] {
      pr.forward(*be, fused);
      pr.backward(*be, fused);
    });
  const double f = fwd_flops(t) * (what == 0 ? 1.0 : what == 1 ? 2.0 : 3.0);
  st.counters["FLOP/s"] = benchmark::Counter(f, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_user_fwd(benchmark::State& st) { run(st, 0, true); }
void BM_user_fwd_baseline_cublas(benchmark::State& st) { run(st, 0, false); }
void BM_user_bwd(benchmark::State& st) { run(st, 1, true); }
void BM_user_bwd_baseline_cublas(benchmark::State& st) { run(st, 1, false); }
void BM_user_fwdbwd(benchmark::State& st) { run(st, 2, true); }
void BM_user_fwdbwd_baseline_cublas(benchmark::State& st) { run(st, 2, false); }
// BM_user_bwd with the backward kernel's phase clock on: its phases per CTA and the slowest CTA's
// cycles, the kernel's own time, next to BM_user_bwd's (which adds the cuBLAS weight GEMMs and the
// column sums).
void BM_user_bwd_phases(benchmark::State& st) {
  ada_bench::with_phase_clock(st, "user_adapter_backward", [&] { BM_user_bwd(st); });
}

}  // namespace

#define ADA_USER_BENCH(fn)                                                                        \
  BENCHMARK(fn)->Arg(4)->Arg(1)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)-> \
      MinWarmUpTime(0.01)
ADA_USER_BENCH(BM_user_fwd);
ADA_USER_BENCH(BM_user_fwd_baseline_cublas);
ADA_USER_BENCH(BM_user_bwd);
ADA_USER_BENCH(BM_user_bwd_baseline_cublas);
ADA_USER_BENCH(BM_user_fwdbwd);
ADA_USER_BENCH(BM_user_fwdbwd_baseline_cublas);
ADA_USER_BENCH(BM_user_bwd_phases);

BENCHMARK_MAIN();
