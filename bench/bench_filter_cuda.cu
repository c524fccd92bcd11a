// The fused learnable-filter block of IRA (Backend::filter_block_forward / _backward: DFT along the
// K context items, complex weight, inverse DFT, Linear D -> D, bias, dropout, residual, LayerNorm;
// kernels/fused_filter.cu) against two composed baselines, at the Beauty training shapes: D = 64,
// K = kc = 20 context items per round, R = 4096 filter blocks (round 4 of T = 5 with B = 1024: four
// earlier rounds' blocks per sample) and R = 1024 (one round). Dropout p = 0.5 (Beauty's), LayerNorm
// eps 1e-12.
//
//   BM_filter_block_<dir>/<R>                  the CUDA backend's fused op (one kernel forward; one
//                                              kernel plus the per-CTA partials' reduce backward)
//   BM_filter_block_<dir>_baseline_ops/<R>     the op-level path the model ran before: the CUDA
//                                              backend's filter (direct-DFT kernel), linear (cuBLAS
//                                              SGEMM + bias kernel), dropout, add_inplace and
//                                              layernorm ops, and their backward (LayerNorm
//                                              backward, dropout, linear backward = 2 SGEMMs + bias
//                                              column sum, filter backward, add)
//   BM_filter_block_<dir>_baseline_cufft/<R>   cuFFT + cuBLAS + elementwise kernels: transpose
//                                              [R,K,D] -> [R,D,K], batched R2C, complex-weight
//                                              kernel, C2R, scale and transpose back, then the
//                                              backend's linear (cuBLAS), dropout, add and
//                                              LayerNorm ops; backward: the backend's LayerNorm,
//                                              dropout and linear backward, then the filter's
//                                              adjoint through cuFFT (two R2C of dF and E, a kernel
//                                              for dF's spectrum times conj(W), a block-per-bin
//                                              reduction for the complex-weight gradient, C2R,
//                                              transpose back) and the residual add
// with <dir> = fwd, bwd and fwd_bwd (forward then backward). scripts/gpu-check pairs
// BM_<k>_baseline_<what>/<args> with BM_<k>/<args> and prints the speed-up.
// Counters: bytes/s over the op's compulsory traffic (the same byte count for the fused op and its
// baselines: each tensor read or written once) and FLOP/s over the direct-DFT + Linear arithmetic
// (the same count for all three). Inputs are random; only the time matters here
// (tests/cuda_fused_filter.cpp checks the values).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>
#include <cufft.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
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

constexpr int64_t kK = 20, kD = 64, kF = kK / 2 + 1;
constexpr float kP = 0.5f, kEps = 1e-12f;
constexpr uint64_t kSeed = 7;
const uint64_t kStream = ada::rng_stream(ada::RngPurpose::kDropout, 1, 4 * 128 + 64);

// Everything one configuration needs: inputs, weights, saved tensors, gradients, scratch.
struct Data {
  int64_t R, n, nD;
  DeviceArray<float> E, cw, Wd, bd, lw, lb;               // inputs and parameters
  DeviceArray<float> Et, F, Rr, mean, rstd;               // forward outputs (saved)
  DeviceArray<float> dEt, dE, g_cw, g_wd, g_bd, g_lw, g_lb;  // backward
  DeviceArray<float> t0, t1;                              // baselines' scratch [n, D]
  explicit Data(int64_t r)
      : R(r), n(r * kK), nD(r * kK * kD), E(random_device(size_t(nD), 1)),
        cw(random_device(size_t(kF * kD * 2), 2, 0.3f)),
        Wd(random_device(size_t(kD * kD), 3, 0.125f)), bd(random_device(size_t(kD), 4, 0.1f)),
        lw(random_device(size_t(kD), 5, 0.1f, 1.f)), lb(random_device(size_t(kD), 6, 0.1f)),
        Et(size_t(nD)), F(size_t(nD)), Rr(size_t(nD)), mean(size_t(n)), rstd(size_t(n)),
        dEt(random_device(size_t(nD), 7)), dE(size_t(nD)), g_cw(size_t(kF * kD * 2)),
        g_wd(size_t(kD * kD)), g_bd(size_t(kD)), g_lw(size_t(kD)), g_lb(size_t(kD)),
        t0(size_t(nD)), t1(size_t(nD)) {
    for (auto* a : {&g_cw, &g_wd, &g_bd, &g_lw, &g_lb}) a->fill_zero();
  }
};

// ---- the fused op and the op-level composition ----------------------------------------------------

void fused_fwd(ada::Backend<float>* be, Data& d) {
  be->filter_block_forward(d.Et.data(), d.F.data(), d.Rr.data(), d.mean.data(), d.rstd.data(),
                           d.E.data(), d.cw.data(), d.Wd.data(), d.bd.data(), d.lw.data(),
                           d.lb.data(), d.R, kK, kD, kEps, kP, kSeed, kStream);
}
void fused_bwd(ada::Backend<float>* be, Data& d) {
  be->filter_block_backward(d.dE.data(), d.g_cw.data(), d.g_wd.data(), d.g_bd.data(),
                            d.g_lw.data(), d.g_lb.data(), d.dEt.data(), d.E.data(), d.F.data(),
                            d.Rr.data(), d.mean.data(), d.rstd.data(), d.cw.data(), d.Wd.data(),
                            d.lw.data(), d.R, kK, kD, kP, kSeed, kStream);
}

// The sequence the model ran before the op (= Backend's default definition, with the scratch
// preallocated here instead of per call).
void ops_fwd(ada::Backend<float>* be, Data& d) {
  be->filter_forward(d.F.data(), d.E.data(), d.cw.data(), d.R, kK, kD);
  be->linear_forward(d.Rr.data(), d.F.data(), d.Wd.data(), d.bd.data(), d.n, kD, kD);
  be->dropout_forward(d.Rr.data(), d.Rr.data(), d.nD, kP, kSeed, kStream);
  be->add_inplace(d.Rr.data(), d.E.data(), d.nD);
  be->layernorm_forward(d.Et.data(), d.mean.data(), d.rstd.data(), d.Rr.data(), d.lw.data(),
                        d.lb.data(), d.n, kD, kEps);
}
void ops_bwd(ada::Backend<float>* be, Data& d) {
  be->layernorm_backward(d.dE.data(), d.g_lw.data(), d.g_lb.data(), d.dEt.data(), d.Rr.data(),
                         d.lw.data(), d.mean.data(), d.rstd.data(), d.n, kD);
  be->dropout_backward(d.t0.data(), d.dE.data(), d.nD, kP, kSeed, kStream);
  be->linear_backward(d.t1.data(), d.g_wd.data(), d.g_bd.data(), d.t0.data(), d.F.data(),
                      d.Wd.data(), d.n, kD, kD, false);
  be->filter_backward(d.t0.data(), d.g_cw.data(), d.t1.data(), d.E.data(), d.cw.data(), d.R, kK,
                      kD);
  be->add_inplace(d.dE.data(), d.t0.data(), d.nD);
}

// ---- the cuFFT baseline --------------------------------------------------------------------------

__global__ void transpose_rkd_to_rdk(float* out, const float* in, int64_t R, int K, int D) {
  const int64_t n = R * K * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / (int64_t(K) * D);
    const int k = int((i / D) % K), d = int(i % D);
    out[(r * D + d) * K + k] = in[i];
  }
}

__global__ void transpose_rdk_to_rkd_scaled(float* out, const float* in, int64_t R, int K, int D,
                                            float scale) {
  const int64_t n = R * K * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / (int64_t(K) * D);
    const int k = int((i / D) % K), d = int(i % D);
    out[i] = in[(r * D + d) * K + k] * scale;
  }
}

// spectrum [R, D, F] times W [F, D] (real, imag pairs)
__global__ void complex_weight(cufftComplex* spec, const float* W, int64_t R, int D, int F) {
  const int64_t n = R * D * F;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int f = int(i % F), d = int((i / F) % D);
    const float wr = W[(f * D + d) * 2], wi = W[(f * D + d) * 2 + 1];
    const cufftComplex s = spec[i];
    spec[i] = cufftComplex{s.x * wr - s.y * wi, s.x * wi + s.y * wr};
  }
}

// dW[f, d] += sum_r (dgr fr + dgi fi, dgi fr - dgr fi) with dg = coef s G, F = s X: one block per
// (f, d), threads over r, a shared-memory tree at the end.
__global__ void cw_grad(float* dW, const cufftComplex* G, const cufftComplex* X, int64_t R, int K,
                        int D, int F, float s) {
  __shared__ float red_r[256], red_i[256];
  const int f = int(blockIdx.x) / D, d = int(blockIdx.x) % D;
  const float coef = (f == 0 || 2 * f == K) ? 1.f : 2.f;
  float ar = 0.f, ai = 0.f;
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
    const int64_t i = (r * D + d) * F + f;
    const float dgr = G[i].x * s * coef, dgi = G[i].y * s * coef;
    const float fr = X[i].x * s, fi = X[i].y * s;
    ar += dgr * fr + dgi * fi;
    ai += dgi * fr - dgr * fi;
  }
  red_r[threadIdx.x] = ar;
  red_i[threadIdx.x] = ai;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) {
      red_r[threadIdx.x] += red_r[threadIdx.x + o];
      red_i[threadIdx.x] += red_i[threadIdx.x + o];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    dW[(f * D + d) * 2] += red_r[0];
    dW[(f * D + d) * 2 + 1] += red_i[0];
  }
}

// G <- dG conj(W) with dG = coef s G, halved on the Hermitian-paired bins (C2R counts them twice;
// the adjoint of rfft weighs every bin once)
__global__ void adjoint_weight(cufftComplex* G, const float* W, int64_t R, int K, int D, int F,
                               float s) {
  const int64_t n = R * D * F;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int f = int(i % F), d = int((i / F) % D);
    const bool real_bin = f == 0 || 2 * f == K;
    const float coef = real_bin ? 1.f : 2.f, half = real_bin ? 1.f : 0.5f;
    const float wr = W[(f * D + d) * 2], wi = W[(f * D + d) * 2 + 1];
    const float dgr = G[i].x * s * coef, dgi = G[i].y * s * coef;
    G[i] = cufftComplex{(dgr * wr + dgi * wi) * half, (dgi * wr - dgr * wi) * half};
  }
}

struct CufftPlans {
  int64_t R = 0;
  cufftHandle fwd = 0, inv = 0;
  cufftComplex* specA = nullptr;
  cufftComplex* specB = nullptr;
  DeviceArray<float> xt, yt;
  bool ok = false;
  explicit CufftPlans(int64_t r) : R(r), xt(size_t(r * kK * kD)), yt(size_t(r * kK * kD)) {
    int n[1] = {int(kK)};
    const int batch = int(R * kD);
    ok = cufftPlanMany(&fwd, 1, n, nullptr, 1, int(kK), nullptr, 1, int(kF), CUFFT_R2C, batch) ==
             CUFFT_SUCCESS &&
         cufftPlanMany(&inv, 1, n, nullptr, 1, int(kF), nullptr, 1, int(kK), CUFFT_C2R, batch) ==
             CUFFT_SUCCESS;
    CK(cudaMalloc(&specA, size_t(R * kD * kF) * sizeof(cufftComplex)));
    CK(cudaMalloc(&specB, size_t(R * kD * kF) * sizeof(cufftComplex)));
  }
  ~CufftPlans() {
    if (fwd) cufftDestroy(fwd);
    if (inv) cufftDestroy(inv);
    cudaFree(specA);
    cudaFree(specB);
  }
  CufftPlans(const CufftPlans&) = delete;
  CufftPlans& operator=(const CufftPlans&) = delete;
};

void cufft_fwd(ada::Backend<float>* be, Data& d, CufftPlans& c) {
  transpose_rkd_to_rdk<<<1024, 256>>>(c.xt.data(), d.E.data(), d.R, int(kK), int(kD));
  cufftExecR2C(c.fwd, c.xt.data(), c.specA);
  complex_weight<<<1024, 256>>>(c.specA, d.cw.data(), d.R, int(kD), int(kF));
  cufftExecC2R(c.inv, c.specA, c.yt.data());
  // ortho norm both ways: 1/sqrt(K) twice
  transpose_rdk_to_rkd_scaled<<<1024, 256>>>(d.F.data(), c.yt.data(), d.R, int(kK), int(kD),
                                             1.0f / float(kK));
  be->linear_forward(d.Rr.data(), d.F.data(), d.Wd.data(), d.bd.data(), d.n, kD, kD);
  be->dropout_forward(d.Rr.data(), d.Rr.data(), d.nD, kP, kSeed, kStream);
  be->add_inplace(d.Rr.data(), d.E.data(), d.nD);
  be->layernorm_forward(d.Et.data(), d.mean.data(), d.rstd.data(), d.Rr.data(), d.lw.data(),
                        d.lb.data(), d.n, kD, kEps);
}

void cufft_bwd(ada::Backend<float>* be, Data& d, CufftPlans& c) {
  be->layernorm_backward(d.dE.data(), d.g_lw.data(), d.g_lb.data(), d.dEt.data(), d.Rr.data(),
                         d.lw.data(), d.mean.data(), d.rstd.data(), d.n, kD);
  be->dropout_backward(d.t0.data(), d.dE.data(), d.nD, kP, kSeed, kStream);
  be->linear_backward(d.t1.data(), d.g_wd.data(), d.g_bd.data(), d.t0.data(), d.F.data(),
                      d.Wd.data(), d.n, kD, kD, false);
  const float s = 1.0f / std::sqrt(float(kK));
  transpose_rkd_to_rdk<<<1024, 256>>>(c.xt.data(), d.t1.data(), d.R, int(kK), int(kD));  // dF
  cufftExecR2C(c.fwd, c.xt.data(), c.specA);
  transpose_rkd_to_rdk<<<1024, 256>>>(c.yt.data(), d.E.data(), d.R, int(kK), int(kD));
  cufftExecR2C(c.fwd, c.yt.data(), c.specB);
  cw_grad<<<unsigned(kF * kD), 256>>>(d.g_cw.data(), c.specA, c.specB, d.R, int(kK), int(kD),
                                      int(kF), s);
  adjoint_weight<<<1024, 256>>>(c.specA, d.cw.data(), d.R, int(kK), int(kD), int(kF), s);
  cufftExecC2R(c.inv, c.specA, c.yt.data());
  transpose_rdk_to_rkd_scaled<<<1024, 256>>>(d.t0.data(), c.yt.data(), d.R, int(kK), int(kD), s);
  be->add_inplace(d.dE.data(), d.t0.data(), d.nD);
}

// ---- timing and counters ------------------------------------------------------------------------

enum Dir { kFwd = 1, kBwd = 2, kBoth = 3 };

// Compulsory traffic (floats): forward reads E, writes Et, F, Rr, mean, rstd; backward reads dEt,
// E, F, Rr, mean, rstd, writes dE (parameters and their gradients are negligible).
double bytes_per_call(const Data& d, int dir) {
  double b = 0;
  if (dir & kFwd) b += 4.0 * double(4 * d.nD + 2 * d.n);
  if (dir & kBwd) b += 4.0 * double(5 * d.nD + 2 * d.n);
  return b;
}
// FLOPs of the direct formulation: per block, forward rfft + irfft (4 Kf K D FMAs) and the Linear
// (K D^2); backward two rffts, the adjoint irfft (6 Kf K D), dF = dG W and dW (2 K D^2).
double flops_per_call(const Data& d, int dir) {
  const double fwd = 2.0 * double(d.R) * (4.0 * kF * kK * kD + double(kK) * kD * kD);
  const double bwd = 2.0 * double(d.R) * (6.0 * kF * kK * kD + 2.0 * kK * kD * kD);
  return (dir & kFwd ? fwd : 0.0) + (dir & kBwd ? bwd : 0.0);
}

template <class Fw, class Bw>
void run(benchmark::State& st, Data& d, int dir, Fw&& fw, Bw&& bw) {
  fw();  // warm-up (tables, scratch, cuBLAS) and the saved tensors for the backward
  bw();
  ada::cuda_synchronize();
  Timer t;
  for (auto _ : st) {
    t.start();
    if (dir & kFwd) fw();
    if (dir & kBwd) bw();
    st.SetIterationTime(t.stop());
  }
  st.SetBytesProcessed(int64_t(double(st.iterations()) * bytes_per_call(d, dir)));
  st.counters["FLOP/s"] = benchmark::Counter(double(st.iterations()) * flops_per_call(d, dir),
                                             benchmark::Counter::kIsRate);
}

template <int dir>
void BM_fused(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  Data d(st.range(0));
  run(st, d, dir, [&] { fused_fwd(be, d); }, [&] { fused_bwd(be, d); });
}

template <int dir>
void BM_ops(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  Data d(st.range(0));
  run(st, d, dir, [&] { ops_fwd(be, d); }, [&] { ops_bwd(be, d); });
}

template <int dir>
void BM_cufft(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  Data d(st.range(0));
  CufftPlans c(d.R);
  if (!c.ok) {
    st.SkipWithError("cufftPlanMany failed");
    return;
  }
  run(st, d, dir, [&] { cufft_fwd(be, d, c); }, [&] { cufft_bwd(be, d, c); });
  CK(cudaGetLastError());
}

void BM_filter_block_fwd(benchmark::State& st) { BM_fused<kFwd>(st); }
void BM_filter_block_fwd_baseline_ops(benchmark::State& st) { BM_ops<kFwd>(st); }
void BM_filter_block_fwd_baseline_cufft(benchmark::State& st) { BM_cufft<kFwd>(st); }
void BM_filter_block_bwd(benchmark::State& st) { BM_fused<kBwd>(st); }
void BM_filter_block_bwd_baseline_ops(benchmark::State& st) { BM_ops<kBwd>(st); }
void BM_filter_block_bwd_baseline_cufft(benchmark::State& st) { BM_cufft<kBwd>(st); }
void BM_filter_block_fwd_bwd(benchmark::State& st) { BM_fused<kBoth>(st); }
void BM_filter_block_fwd_bwd_baseline_ops(benchmark::State& st) { BM_ops<kBoth>(st); }
void BM_filter_block_fwd_bwd_baseline_cufft(benchmark::State& st) { BM_cufft<kBoth>(st); }

// BM_filter_block_fwd with the forward's phase clock on (ada::set_cuda_phase_clock): where its time
// goes per filter block, without a profiler (scripts/gpu-check prints the counters).
void BM_filter_block_fwd_phases(benchmark::State& st) {
  ada_bench::with_phase_clock(st, "filter_block_forward", [&] { BM_fused<kFwd>(st); });
}

#define ADA_FILTER_BENCH(fn)                                                                   \
  BENCHMARK(fn)->Arg(4096)->Arg(1024)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime( \
      0.05)->MinWarmUpTime(0.01)
ADA_FILTER_BENCH(BM_filter_block_fwd);
ADA_FILTER_BENCH(BM_filter_block_fwd_baseline_ops);
ADA_FILTER_BENCH(BM_filter_block_fwd_baseline_cufft);
ADA_FILTER_BENCH(BM_filter_block_bwd);
ADA_FILTER_BENCH(BM_filter_block_bwd_baseline_ops);
ADA_FILTER_BENCH(BM_filter_block_bwd_baseline_cufft);
ADA_FILTER_BENCH(BM_filter_block_fwd_bwd);
ADA_FILTER_BENCH(BM_filter_block_fwd_bwd_baseline_ops);
ADA_FILTER_BENCH(BM_filter_block_fwd_bwd_baseline_cufft);
ADA_FILTER_BENCH(BM_filter_block_fwd_phases);

}  // namespace

BENCHMARK_MAIN();
