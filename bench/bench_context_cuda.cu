// The fused context-aware attention block (Backend::context_block_forward / _backward, IRA:
// attention over the round's context + dropout + residual + LayerNorm; kernels/fused_context.cu)
// against two composed baselines, at the Beauty training shapes: B = 1,024 samples, D = 64, about
// 15% empty histories that keep all 50 padding tokens and the rest 1..20 items (the "tokens"
// counter gives the count), context Nc = 80 rows (round 4 of T = 5, kc = 20) and Nc = 20 (round 1).
// Dropout p = 0.5 (Beauty's), LayerNorm eps 1e-12.
//
//   BM_context_block_<dir>/<Nc>                  the CUDA backend's fused op (one kernel per
//                                                direction, plus the LayerNorm parameter reduce in
//                                                the backward)
//   BM_context_block_<dir>_baseline_ops/<Nc>     the op-level path the model ran before: the CUDA
//                                                backend's context_attention, dropout, add_inplace
//                                                and layernorm ops (and their backward, with the
//                                                residual's copy)
//   BM_context_block_<dir>_baseline_cublas/<Nc>  the padded path: histories scattered into a
//                                                [B, 50, D] tensor, cublasSgemmStridedBatched for
//                                                S = X C^T / sqrt(D), a softmax kernel,
//                                                cublasSgemmStridedBatched for P C, gathered back
//                                                to the jagged rows, then the backend's dropout,
//                                                add and LayerNorm ops; the backward likewise
//                                                (LayerNorm backward, copy, dropout, pad, dP = dA C^T,
//                                                softmax backward, dX = dS C, dC += P^T dA + dS^T X,
//                                                gather-add)
// with <dir> = fwd, bwd and fwd_bwd (forward then backward). scripts/gpu-check pairs
// BM_<k>_baseline_<what>/<args> with BM_<k>/<args> and prints the speed-up. The padding
// scatter/gather is part of the cuBLAS baseline's time: the model's histories are jagged.
// Counters: tokens, and bytes/s over the op's compulsory traffic (the same byte count for the fused
// op and its baselines: each tensor read or written once). Inputs are random; only the time
// matters here (tests/cuda_fused_context.cpp checks the values).
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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
using ada_bench::blas;
using ada_bench::random_device;
using ada_bench::Timer;

constexpr int64_t kB = 1024, kD = 64, kL = 50;
constexpr float kP = 0.5f, kEps = 1e-12f;
constexpr uint64_t kSeed = 11, kStream = 12;

// Beauty-like jagged batch (as bench_kernels_cuda.cu): 15% empty histories (all 50 padding tokens),
// else 1..20 items. off: the query offsets; row/pos: each token's sample and its slot in the padded
// [B, 50] layout.
struct Jagged {
  std::vector<int64_t> off{0};
  DeviceArray<int32_t> tok_row, tok_pos;
  int64_t tokens() const { return off.back(); }
};

const Jagged& batch() {
  static const Jagged j = [] {
    Jagged b;
    std::mt19937 rng(3);
    std::vector<int32_t> row, pos;
    for (int64_t s = 0; s < kB; ++s) {
      const bool empty = rng() % 100 < 15;
      const int64_t n = empty ? kL : 1 + int64_t(rng() % 20);
      for (int64_t i = 0; i < n; ++i) {
        row.push_back(int32_t(s));
        pos.push_back(int32_t(i));
      }
      b.off.push_back(b.off.back() + n);
    }
    b.tok_row = DeviceArray<int32_t>::from(row);
    b.tok_pos = DeviceArray<int32_t>::from(pos);
    return b;
  }();
  return j;
}

// Every tensor of the block, forward and backward, at context size Nc.
struct Tensors {
  int64_t T, Nc;
  DeviceArray<float> X, C, w, b, out, probs, r, mean, rstd, dout, dX, dC, dw, db;
  // composed baselines' scratch
  DeviceArray<float> att, dr, datt, dq;                 // [T, D]
  DeviceArray<float> xpad, apad, gpad, dxpad, S, dS;    // [B, 50, D] and [B, 50, Nc]
  explicit Tensors(int64_t nc)
      : T(batch().tokens()), Nc(nc), X(random_device(size_t(T * kD), 1)),
        C(random_device(size_t(kB * nc * kD), 2)), w(random_device(size_t(kD), 3, 0.1f, 1.f)),
        b(random_device(size_t(kD), 4, 0.1f)), out(size_t(T * kD)), probs(size_t(T * nc)),
        r(size_t(T * kD)), mean(size_t(T)), rstd(size_t(T)), dout(random_device(size_t(T * kD), 5)),
        dX(size_t(T * kD)), dC(size_t(kB * nc * kD)), dw(size_t(kD)), db(size_t(kD)),
        att(size_t(T * kD)), dr(size_t(T * kD)), datt(size_t(T * kD)), dq(size_t(T * kD)),
        xpad(size_t(kB * kL * kD)), apad(size_t(kB * kL * kD)), gpad(size_t(kB * kL * kD)),
        dxpad(size_t(kB * kL * kD)), S(size_t(kB * kL * nc)), dS(size_t(kB * kL * nc)) {
    dC.fill_zero();
    dw.fill_zero();
    db.fill_zero();
    xpad.fill_zero();
    gpad.fill_zero();
  }
  // Compulsory bytes: forward reads X, C, w, b and writes out, r, probs, mean, rstd; backward reads
  // dout, probs, r, mean, rstd, X, C, w and reads/writes dC, dw, db, writes dX.
  int64_t fwd_bytes() const { return 4 * (3 * T * kD + kB * Nc * kD + T * Nc + 2 * T + 2 * kD); }
  int64_t bwd_bytes() const {
    return 4 * (4 * T * kD + 3 * kB * Nc * kD + T * Nc + 2 * T + 5 * kD);
  }
};

// ---- the fused op and the op-level baseline -------------------------------------------------------

void fused_fwd(ada::Backend<float>* be, Tensors& t) {
  be->context_block_forward(t.out.data(), t.probs.data(), t.r.data(), t.mean.data(), t.rstd.data(),
                            t.X.data(), t.C.data(), t.w.data(), t.b.data(), batch().off.data(), kB,
                            t.Nc, kD, true, kP, kSeed, kStream, kEps);
}
void fused_bwd(ada::Backend<float>* be, Tensors& t) {
  be->context_block_backward(t.dX.data(), t.dC.data(), t.dw.data(), t.db.data(), t.dout.data(),
                             t.probs.data(), t.r.data(), t.mean.data(), t.rstd.data(), t.X.data(),
                             t.C.data(), t.w.data(), batch().off.data(), kB, t.Nc, kD, true, kP,
                             kSeed, kStream);
}

void ops_fwd(ada::Backend<float>* be, Tensors& t) {
  const int64_t n = t.T * kD;
  be->context_attention_forward(t.att.data(), t.probs.data(), t.X.data(), t.C.data(),
                                batch().off.data(), kB, t.Nc, kD);
  be->dropout_forward(t.r.data(), t.att.data(), n, kP, kSeed, kStream);
  be->add_inplace(t.r.data(), t.X.data(), n);
  be->layernorm_forward(t.out.data(), t.mean.data(), t.rstd.data(), t.r.data(), t.w.data(),
                        t.b.data(), t.T, kD, kEps);
}
void ops_bwd(ada::Backend<float>* be, Tensors& t) {
  const int64_t n = t.T * kD;
  be->layernorm_backward(t.dr.data(), t.dw.data(), t.db.data(), t.dout.data(), t.r.data(),
                         t.w.data(), t.mean.data(), t.rstd.data(), t.T, kD);
  CK(cudaMemcpyAsync(t.dX.data(), t.dr.data(), sizeof(float) * size_t(n), cudaMemcpyDeviceToDevice));
  be->dropout_backward(t.datt.data(), t.dr.data(), n, kP, kSeed, kStream);
  be->context_attention_backward(t.dq.data(), t.dC.data(), t.datt.data(), t.probs.data(),
                                 t.X.data(), t.C.data(), batch().off.data(), kB, t.Nc, kD);
  be->add_inplace(t.dX.data(), t.dq.data(), n);
}

// ---- the cuBLAS baseline --------------------------------------------------------------------------

// jagged [T, D] -> padded [B, 50, D] (padding rows untouched: zero from the start)
__global__ void pad_rows(float* pad, const float* rows, const int32_t* tok_row,
                         const int32_t* tok_pos, int64_t T, int D) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < T * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D;
    pad[(int64_t(tok_row[t]) * kL + tok_pos[t]) * D + i % D] = rows[i];
  }
}
// padded -> jagged rows (= or +=)
__global__ void unpad_rows(float* rows, const float* pad, const int32_t* tok_row,
                           const int32_t* tok_pos, int64_t T, int D, int accumulate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < T * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D;
    const float v = pad[(int64_t(tok_row[t]) * kL + tok_pos[t]) * D + i % D];
    rows[i] = accumulate ? rows[i] + v : v;
  }
}
// Row softmax in place over rows of n (a warp per row).
__global__ void softmax_rows(float* s, int64_t rows, int n) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; r < rows;
       r += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    float* p = s + r * n;
    float mx = -INFINITY;
    for (int j = lane; j < n; j += 32) mx = fmaxf(mx, p[j]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(p[j] - mx);
      p[j] = e;
      sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float inv = 1.f / sum;
    for (int j = lane; j < n; j += 32) p[j] *= inv;
  }
}
// dS = P (dP - rowsum(P dP)) * scale, in place over dP (a warp per row).
__global__ void softmax_rows_bwd(float* ds, const float* p, int64_t rows, int n, float scale) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; r < rows;
       r += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    float* g = ds + r * n;
    const float* pr = p + r * n;
    float dot = 0.f;
    for (int j = lane; j < n; j += 32) dot += pr[j] * g[j];
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    for (int j = lane; j < n; j += 32) g[j] = pr[j] * (g[j] - dot) * scale;
  }
}

unsigned grid(int64_t n) { return unsigned(std::min<int64_t>((n + 255) / 256, 4096)); }

// Row-major batched products through column-major cuBLAS (a row-major [m, k] is a column-major
// [k, m] with ld k). Per sample b: X_b, A_b [50, D], C_b [Nc, D], S_b [50, Nc].
void cublas_fwd(ada::Backend<float>* be, Tensors& t) {
  const Jagged& jb = batch();
  const int Nc = int(t.Nc), D = int(kD), L = int(kL);
  const int64_t n = t.T * kD;
  const float scale = 1.0f / std::sqrt(float(kD)), zero = 0.f, one = 1.f;
  pad_rows<<<grid(n), 256>>>(t.xpad.data(), t.X.data(), jb.tok_row.data(), jb.tok_pos.data(), t.T, D);
  // S^T [Nc, 50] = C_b [Nc, D] X_b^T
  BK(cublasSgemmStridedBatched(blas(), CUBLAS_OP_T, CUBLAS_OP_N, Nc, L, D, &scale, t.C.data(), D,
                               int64_t(Nc) * D, t.xpad.data(), D, int64_t(L) * D, &zero, t.S.data(),
                               Nc, int64_t(L) * Nc, int(kB)));
  softmax_rows<<<grid(kB * kL * 32), 256>>>(t.S.data(), kB * kL, Nc);
  // A^T [D, 50] = C_b^T [D, Nc] P^T [Nc, 50]
  BK(cublasSgemmStridedBatched(blas(), CUBLAS_OP_N, CUBLAS_OP_N, D, L, Nc, &one, t.C.data(), D,
                               int64_t(Nc) * D, t.S.data(), Nc, int64_t(L) * Nc, &zero,
                               t.apad.data(), D, int64_t(L) * D, int(kB)));
  unpad_rows<<<grid(n), 256>>>(t.att.data(), t.apad.data(), jb.tok_row.data(), jb.tok_pos.data(),
                               t.T, D, 0);
  be->dropout_forward(t.r.data(), t.att.data(), n, kP, kSeed, kStream);
  be->add_inplace(t.r.data(), t.X.data(), n);
  be->layernorm_forward(t.out.data(), t.mean.data(), t.rstd.data(), t.r.data(), t.w.data(),
                        t.b.data(), t.T, kD, kEps);
}
void cublas_bwd(ada::Backend<float>* be, Tensors& t) {
  const Jagged& jb = batch();
  const int Nc = int(t.Nc), D = int(kD), L = int(kL);
  const int64_t n = t.T * kD;
  const float scale = 1.0f / std::sqrt(float(kD)), zero = 0.f, one = 1.f;
  be->layernorm_backward(t.dr.data(), t.dw.data(), t.db.data(), t.dout.data(), t.r.data(),
                         t.w.data(), t.mean.data(), t.rstd.data(), t.T, kD);
  CK(cudaMemcpyAsync(t.dX.data(), t.dr.data(), sizeof(float) * size_t(n), cudaMemcpyDeviceToDevice));
  be->dropout_backward(t.datt.data(), t.dr.data(), n, kP, kSeed, kStream);
  pad_rows<<<grid(n), 256>>>(t.gpad.data(), t.datt.data(), jb.tok_row.data(), jb.tok_pos.data(), t.T, D);
  // dP^T [Nc, 50] = C_b dA_b^T
  BK(cublasSgemmStridedBatched(blas(), CUBLAS_OP_T, CUBLAS_OP_N, Nc, L, D, &one, t.C.data(), D,
                               int64_t(Nc) * D, t.gpad.data(), D, int64_t(L) * D, &zero,
                               t.dS.data(), Nc, int64_t(L) * Nc, int(kB)));
  softmax_rows_bwd<<<grid(kB * kL * 32), 256>>>(t.dS.data(), t.S.data(), kB * kL, Nc, scale);
  // dXq^T [D, 50] = C_b^T dS^T
  BK(cublasSgemmStridedBatched(blas(), CUBLAS_OP_N, CUBLAS_OP_N, D, L, Nc, &one, t.C.data(), D,
                               int64_t(Nc) * D, t.dS.data(), Nc, int64_t(L) * Nc, &zero,
                               t.dxpad.data(), D, int64_t(L) * D, int(kB)));
  // dC^T [D, Nc] += dA^T P + X^T dS   (column-major [D, 50] x [50, Nc])
  BK(cublasSgemmStridedBatched(blas(), CUBLAS_OP_N, CUBLAS_OP_T, D, Nc, L, &one, t.gpad.data(), D,
                               int64_t(L) * D, t.S.data(), Nc, int64_t(L) * Nc, &one, t.dC.data(),
                               D, int64_t(Nc) * D, int(kB)));
  BK(cublasSgemmStridedBatched(blas(), CUBLAS_OP_N, CUBLAS_OP_T, D, Nc, L, &one, t.xpad.data(), D,
                               int64_t(L) * D, t.dS.data(), Nc, int64_t(L) * Nc, &one, t.dC.data(),
                               D, int64_t(Nc) * D, int(kB)));
  unpad_rows<<<grid(n), 256>>>(t.dX.data(), t.dxpad.data(), jb.tok_row.data(), jb.tok_pos.data(),
                               t.T, D, 1);
}

// ---- the benchmarks -------------------------------------------------------------------------------

enum Dir { kFwd, kBwd, kFwdBwd };

template <class Fwd, class Bwd>
void run(benchmark::State& st, Dir dir, Fwd&& fwd, Bwd&& bwd) {
  auto* be = backend(st);
  if (!be) return;
  Tensors t(st.range(0));
  fwd(be, t);  // warm-up (scratch allocation) and the saved tensors of the backward
  bwd(be, t);
  CK(cudaGetLastError());
  ada::cuda_synchronize();
  Timer tm;
  for (auto _ : st) {
    tm.start();
    if (dir != kBwd) fwd(be, t);
    if (dir != kFwd) bwd(be, t);
    st.SetIterationTime(tm.stop());
  }
  CK(cudaGetLastError());
  const int64_t bytes = (dir != kBwd ? t.fwd_bytes() : 0) + (dir != kFwd ? t.bwd_bytes() : 0);
  st.SetBytesProcessed(int64_t(st.iterations()) * bytes);
  st.counters["tokens"] = double(t.T);
}

void BM_context_block_fwd(benchmark::State& st) { run(st, kFwd, fused_fwd, fused_bwd); }
void BM_context_block_fwd_baseline_ops(benchmark::State& st) { run(st, kFwd, ops_fwd, ops_bwd); }
void BM_context_block_fwd_baseline_cublas(benchmark::State& st) {
  run(st, kFwd, cublas_fwd, cublas_bwd);
}
void BM_context_block_bwd(benchmark::State& st) { run(st, kBwd, fused_fwd, fused_bwd); }
void BM_context_block_bwd_baseline_ops(benchmark::State& st) { run(st, kBwd, ops_fwd, ops_bwd); }
void BM_context_block_bwd_baseline_cublas(benchmark::State& st) {
  run(st, kBwd, cublas_fwd, cublas_bwd);
}
void BM_context_block_fwd_bwd(benchmark::State& st) { run(st, kFwdBwd, fused_fwd, fused_bwd); }
void BM_context_block_fwd_bwd_baseline_ops(benchmark::State& st) {
  run(st, kFwdBwd, ops_fwd, ops_bwd);
}
void BM_context_block_fwd_bwd_baseline_cublas(benchmark::State& st) {
  run(st, kFwdBwd, cublas_fwd, cublas_bwd);
}

// BM_context_block_fwd / _bwd with the kernel's phase clock on (ada::set_cuda_phase_clock): where
// its time goes per block / per sample, without a profiler (scripts/gpu-check prints the counters).
void BM_context_block_fwd_phases(benchmark::State& st) {
  ada_bench::with_phase_clock(st, "context_block_forward", [&] { BM_context_block_fwd(st); });
}
void BM_context_block_bwd_phases(benchmark::State& st) {
  ada_bench::with_phase_clock(st, "context_block_backward", [&] { BM_context_block_bwd(st); });
}

#define ADA_CTX_BENCH(fn)                                                                  \
  BENCHMARK(fn)->Arg(80)->Arg(20)->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05) \
      ->MinWarmUpTime(0.01)
ADA_CTX_BENCH(BM_context_block_fwd);
ADA_CTX_BENCH(BM_context_block_fwd_baseline_ops);
ADA_CTX_BENCH(BM_context_block_fwd_baseline_cublas);
ADA_CTX_BENCH(BM_context_block_bwd);
ADA_CTX_BENCH(BM_context_block_bwd_baseline_ops);
ADA_CTX_BENCH(BM_context_block_bwd_baseline_cublas);
ADA_CTX_BENCH(BM_context_block_fwd_bwd);
ADA_CTX_BENCH(BM_context_block_fwd_bwd_baseline_ops);
ADA_CTX_BENCH(BM_context_block_fwd_bwd_baseline_cublas);
ADA_CTX_BENCH(BM_context_block_fwd_phases);
ADA_CTX_BENCH(BM_context_block_bwd_phases);

}  // namespace

BENCHMARK_MAIN();
