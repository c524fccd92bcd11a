// The CUDA backend's ops at the Beauty training shapes (B = 1024 samples, D = 64): a per-op profile
// of one SASRec / Ada step's pieces, and the filter against its composed cuFFT baseline.
//
//   BM_<op>                     one call of the CUDA backend's op (make_cuda_backend), CUDA-event time
//   BM_filter_fwd_baseline_cufft  the same filter through cuFFT: transpose [R,K,D] -> [R,D,K], batched
//                               R2C, complex multiply by W, C2R, scale 1/K and transpose back
//
// Shapes: 1,024 sequences, about 15% of them empty histories that keep all 50 padding tokens and
// the rest 1-20 items (BM_attention_fwd's "tokens" counter gives the count), 16 heads of 4, inner 512, 101 sampled items per sample; Ada round 4: four
// earlier blocks of K = 20 context items per sample (R = 4096 blocks), Nc = 80 context rows.
// Inputs are random; only the time matters here (tests/cuda_backend_ops.cpp checks the values).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>
#include <cufft.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "ada/backend.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"
#include "bench/cuda_bench_util.cuh"

namespace {

using ada_bench::backend;
using ada_bench::random_device;
using ada_bench::Timer;

using ada::DeviceArray;

constexpr int64_t kB = 1024, kD = 64, kL = 50, kHeads = 16, kInner = 512, kCand = 101;
constexpr int64_t kK = 20, kBlocks = 4 * kB, kNc = 80;

// Beauty-like jagged batch: 15% empty histories (all 50 padding tokens, all_masked), else 1..20 items.
struct Jagged {
  std::vector<int64_t> off{0};
  std::vector<uint8_t> masked;
  ada::JaggedLayout layout() const {
    ada::JaggedLayout l;
    l.num_seqs = int64_t(masked.size());
    l.num_tokens = off.back();
    l.tok_offsets = off.data();
    l.all_masked = masked.data();
    return l;
  }
};

const Jagged& batch() {
  static const Jagged j = [] {
    Jagged b;
    std::mt19937 rng(3);
    for (int64_t s = 0; s < kB; ++s) {
      const bool empty = rng() % 100 < 15;
      b.masked.push_back(empty ? 1 : 0);
      b.off.push_back(b.off.back() + (empty ? kL : 1 + int64_t(rng() % 20)));
    }
    return b;
  }();
  return j;
}

// Runs `op` (which enqueues work on the backend's stream) under CUDA-event timing.
template <class F>
void timed(benchmark::State& st, F&& op) {
  op();  // warm-up (scratch allocation)
  ada::cuda_synchronize();
  Timer t;
  for (auto _ : st) {
    t.start();
    op();
    st.SetIterationTime(t.stop());
  }
}

ada::AttentionShape attn_shape(bool last_only) {
  ada::AttentionShape s;
  s.layout = batch().layout();
  s.heads = int(kHeads);
  s.head_dim = int(kD / kHeads);
  s.last_only = last_only;
  s.dropout = 0.1777f;
  s.seed = 1;
  s.stream = 2;
  return s;
}

void BM_attention_fwd(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  const auto shape = attn_shape(false);
  const int64_t T = shape.layout.num_tokens;
  auto q = random_device(size_t(T * kD), 1), k = random_device(size_t(T * kD), 2), v = random_device(size_t(T * kD), 3);
  DeviceArray<float> out{size_t(T * kD)}, probs{size_t(shape.prob_size())};
  timed(st, [&] { be->attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), shape); });
  st.counters["tokens"] = double(T);
}

void BM_attention_bwd(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  const auto shape = attn_shape(false);
  const int64_t T = shape.layout.num_tokens;
  auto q = random_device(size_t(T * kD), 1), k = random_device(size_t(T * kD), 2), v = random_device(size_t(T * kD), 3);
  auto g = random_device(size_t(T * kD), 4);
  DeviceArray<float> out{size_t(T * kD)}, probs{size_t(shape.prob_size())}, dq{size_t(T * kD)},
      dk{size_t(T * kD)}, dv{size_t(T * kD)};
  be->attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), shape);
  timed(st, [&] {
    be->attention_backward(dq.data(), dk.data(), dv.data(), g.data(), probs.data(), q.data(), k.data(), v.data(),
                           shape);
  });
}

void BM_layernorm_fwd_bwd(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  const int64_t M = batch().off.back();
  auto x = random_device(size_t(M * kD), 5), w = random_device(size_t(kD), 6), b = random_device(size_t(kD), 7);
  auto g = random_device(size_t(M * kD), 8);
  DeviceArray<float> out{size_t(M * kD)}, mean{size_t(M)}, rstd{size_t(M)}, dx{size_t(M * kD)}, dw{size_t(kD)},
      db{size_t(kD)};
  timed(st, [&] {
    be->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), M, kD, 1e-10f);
    be->layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), mean.data(), rstd.data(),
                           M, kD);
  });
}

void BM_ffn_linear_fwd_bwd(benchmark::State& st) {  // 64 -> 512 (cuBLAS + bias kernels)
  auto* be = backend(st);
  if (!be) return;
  const int64_t M = batch().off.back();
  auto x = random_device(size_t(M * kD), 9), W = random_device(size_t(kInner * kD), 10, 0.02f),
       b = random_device(size_t(kInner), 11), g = random_device(size_t(M * kInner), 12);
  DeviceArray<float> out{size_t(M * kInner)}, dx{size_t(M * kD)}, dW{size_t(kInner * kD)}, db{size_t(kInner)};
  timed(st, [&] {
    be->linear_forward(out.data(), x.data(), W.data(), b.data(), M, kD, kInner);
    be->linear_backward(dx.data(), dW.data(), db.data(), g.data(), x.data(), W.data(), M, kD, kInner, false);
  });
}

void BM_sampled_bce(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  const int64_t N = 12102;
  auto u = random_device(size_t(kB * kD), 13), table = random_device(size_t(N * kD), 14, 0.02f),
       bias = random_device(size_t(N), 15, 0.1f);
  std::vector<int32_t> items(size_t(kB * kCand));
  std::mt19937 rng(16);
  for (auto& i : items) i = int32_t(1 + rng() % uint32_t(N - 1));
  auto d_items = DeviceArray<int32_t>::from(items);
  DeviceArray<float> logits{size_t(kB * kCand)}, du{size_t(kB * kD)}, dtable{size_t(N * kD)}, dbias{size_t(N)};
  timed(st, [&] {
    benchmark::DoNotOptimize(be->sampled_bce(logits.data(), du.data(), dtable.data(), dbias.data(), u.data(),
                                             table.data(), bias.data(), d_items.data(), kB, kCand, kD, 1.0));
  });
}

void BM_filter_fwd(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  auto x = random_device(size_t(kBlocks * kK * kD), 17), W = random_device(size_t((kK / 2 + 1) * kD * 2), 18, 0.02f);
  DeviceArray<float> out{size_t(kBlocks * kK * kD)};
  timed(st, [&] { be->filter_forward(out.data(), x.data(), W.data(), kBlocks, kK, kD); });
}

void BM_filter_bwd(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  auto x = random_device(size_t(kBlocks * kK * kD), 17), W = random_device(size_t((kK / 2 + 1) * kD * 2), 18, 0.02f);
  auto g = random_device(size_t(kBlocks * kK * kD), 19);
  DeviceArray<float> dx{size_t(kBlocks * kK * kD)}, dW{size_t((kK / 2 + 1) * kD * 2)};
  timed(st, [&] { be->filter_backward(dx.data(), dW.data(), g.data(), x.data(), W.data(), kBlocks, kK, kD); });
}

// ---- the cuFFT baseline of the filter -------------------------------------------------------------
__global__ void transpose_rkd_to_rdk(float* out, const float* in, int64_t R, int K, int D) {
  const int64_t n = R * K * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / (int64_t(K) * D);
    const int k = int((i / D) % K), d = int(i % D);
    out[(r * D + d) * K + k] = in[i];
  }
}

__global__ void transpose_rdk_to_rkd_scaled(float* out, const float* in, int64_t R, int K, int D, float scale) {
  const int64_t n = R * K * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / (int64_t(K) * D);
    const int k = int((i / D) % K), d = int(i % D);
    out[i] = in[(r * D + d) * K + k] * scale;
  }
}

// spectrum [R, D, F] (F = K/2 + 1) times W [F, D] (real, imag pairs)
__global__ void complex_weight(cufftComplex* spec, const float* W, int64_t R, int D, int F) {
  const int64_t n = R * D * F;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int f = int(i % F), d = int((i / F) % D);
    const float wr = W[(f * D + d) * 2], wi = W[(f * D + d) * 2 + 1];
    const cufftComplex s = spec[i];
    spec[i] = cufftComplex{s.x * wr - s.y * wi, s.x * wi + s.y * wr};
  }
}

void BM_filter_fwd_baseline_cufft(benchmark::State& st) {
  if (ada::cuda_device_count() == 0) {
    st.SkipWithError("no CUDA device");
    return;
  }
  const int F = int(kK / 2 + 1);
  auto x = random_device(size_t(kBlocks * kK * kD), 17), W = random_device(size_t(F * kD * 2), 18, 0.02f);
  DeviceArray<float> xt{size_t(kBlocks * kK * kD)}, yt{size_t(kBlocks * kK * kD)}, out{size_t(kBlocks * kK * kD)};
  cufftComplex* spec = nullptr;
  CK(cudaMalloc(&spec, size_t(kBlocks * kD * F) * sizeof(cufftComplex)));
  cufftHandle fwd, inv;
  int n[1] = {int(kK)};
  if (cufftPlanMany(&fwd, 1, n, nullptr, 1, int(kK), nullptr, 1, F, CUFFT_R2C, int(kBlocks * kD)) != CUFFT_SUCCESS ||
      cufftPlanMany(&inv, 1, n, nullptr, 1, F, nullptr, 1, int(kK), CUFFT_C2R, int(kBlocks * kD)) != CUFFT_SUCCESS) {
    st.SkipWithError("cufftPlanMany failed");
    return;
  }
  Timer t;
  for (auto _ : st) {
    t.start();
    transpose_rkd_to_rdk<<<1024, 256>>>(xt.data(), x.data(), kBlocks, int(kK), int(kD));
    cufftExecR2C(fwd, xt.data(), spec);
    complex_weight<<<1024, 256>>>(spec, W.data(), kBlocks, int(kD), F);
    cufftExecC2R(inv, spec, yt.data());
    // ortho norm both ways: 1/sqrt(K) twice
    transpose_rdk_to_rkd_scaled<<<1024, 256>>>(out.data(), yt.data(), kBlocks, int(kK), int(kD), 1.0f / float(kK));
    st.SetIterationTime(t.stop());
  }
  CK(cudaGetLastError());
  cufftDestroy(fwd);
  cufftDestroy(inv);
  CK(cudaFree(spec));
}

void BM_context_attention_fwd_bwd(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  const Jagged& jb = batch();
  const int64_t Q = jb.off.back();
  auto X = random_device(size_t(Q * kD), 20), C = random_device(size_t(kB * kNc * kD), 21), g = random_device(size_t(Q * kD), 22);
  DeviceArray<float> out{size_t(Q * kD)}, probs{size_t(Q * kNc)}, dX{size_t(Q * kD)}, dC{size_t(kB * kNc * kD)};
  timed(st, [&] {
    be->context_attention_forward(out.data(), probs.data(), X.data(), C.data(), jb.off.data(), kB, kNc, kD);
    be->context_attention_backward(dX.data(), dC.data(), g.data(), probs.data(), X.data(), C.data(), jb.off.data(), kB,
                                   kNc, kD);
  });
}

void BM_gru_cell_fwd_bwd(benchmark::State& st) {
  auto* be = backend(st);
  if (!be) return;
  auto gi = random_device(size_t(kB * 3 * kD), 23), gh = random_device(size_t(kB * 3 * kD), 24),
       h = random_device(size_t(kB * kD), 25), g = random_device(size_t(kB * kD), 26);
  DeviceArray<float> hn{size_t(kB * kD)}, gates{size_t(kB * 3 * kD)}, dgi{size_t(kB * 3 * kD)}, dgh{size_t(kB * 3 * kD)},
      dh{size_t(kB * kD)};
  timed(st, [&] {
    be->gru_cell_forward(hn.data(), gates.data(), gi.data(), gh.data(), h.data(), kB, kD);
    be->gru_cell_backward(dgi.data(), dgh.data(), dh.data(), g.data(), gates.data(), gh.data(), h.data(), kB, kD);
  });
}

void BM_adam_update(benchmark::State& st) {  // Ada-SASRec on Beauty: about 1.01M parameters
  auto* be = backend(st);
  if (!be) return;
  const int64_t n = 1011718;
  auto p = random_device(size_t(n), 27), g = random_device(size_t(n), 28);
  DeviceArray<float> m{size_t(n)}, v{size_t(n)};
  m.fill_zero();
  v.fill_zero();
  int64_t step = 0;
  timed(st, [&] { be->adam_update(p.data(), m.data(), v.data(), g.data(), n, 1e-3, 0.9, 0.999, 1e-8, ++step); });
  st.SetBytesProcessed(int64_t(st.iterations()) * n * 4 * int64_t(sizeof(float)));
}

#define ADA_KERNEL_BENCH(fn) BENCHMARK(fn)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)->MinWarmUpTime(0.01)
ADA_KERNEL_BENCH(BM_attention_fwd);
ADA_KERNEL_BENCH(BM_attention_bwd);
ADA_KERNEL_BENCH(BM_layernorm_fwd_bwd);
ADA_KERNEL_BENCH(BM_ffn_linear_fwd_bwd);
ADA_KERNEL_BENCH(BM_sampled_bce);
ADA_KERNEL_BENCH(BM_filter_fwd);
ADA_KERNEL_BENCH(BM_filter_fwd_baseline_cufft);
ADA_KERNEL_BENCH(BM_filter_bwd);
ADA_KERNEL_BENCH(BM_context_attention_fwd_bwd);
ADA_KERNEL_BENCH(BM_gru_cell_fwd_bwd);
ADA_KERNEL_BENCH(BM_adam_update);

}  // namespace

BENCHMARK_MAIN();
