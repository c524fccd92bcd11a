// Batched top-k retrieval on the GPU: the fused kernel (kernels/topk.cu) against its baselines.
//
//   BM_topk/B/N/k                 exact score + exclusions + top-k (no B x N matrix), the launch
//                                 autotuned as by default (the tuning happens in the warm-up; with
//                                 ADA_TOPK_AUTOTUNE=verbose each tuning's times go to stderr)
//   BM_topk_untuned/B/N/k         BM_topk with the fixed launch rules (autotuning off): from B = 64
//                                 over 2^16 items or more TF32 bounds on tensor cores (wmma), then
//                                 exact FP32 rescoring
//   BM_topk_baseline_sgemm/B/N/k  cuBLAS SGEMM writing the B x N scores (FP32, no TF32): the floor
//   BM_topk_baseline_cub/B/N/k    SGEMM + bias/exclusion kernels + CUB segmented radix sort of every
//                                 row + gather of the first k (the composed baseline)
//   BM_topk_baseline_thrust/B/N/k SGEMM + the same kernels + Thrust's segmented-sort idiom (stable
//                                 sort of all scores, then a stable sort by row) + gather
//   BM_topk_bounds_only/B/N/k     the first of BM_topk's two kernels alone (scores -> group bounds)
//   BM_topk_fp32_bounds/B/N/k     BM_topk without tensor cores (FP32 bounds; identical lists)
// (The rows below run fixed launches: autotuning off, the switches they do not set at their rules.)
//   BM_topk_tc_shared/B/N/k       BM_topk with the tensor-core kernel's products over its item tile
//   BM_topk_tc_mma/B/N/k          BM_topk with the mma.sync tensor-core kernel (products in registers)
//                                 (these two, and the other *_tc_mma rows, force tensor cores on: the
//                                 12k-item case then uses them too)
//   BM_topk_bounds_only_tc_mma/B/N/k  the mma.sync bounds kernel alone
//   BM_topk_select_threads/B/N/k/T    BM_topk with T threads per select block (default 256 at B = 1024)
//   BM_topk_tc_mma_select_threads/B/N/k/T  both: mma.sync bounds, T select threads
//   BM_topk_select_phases/B/N/k/T/M  BM_topk (T select threads, 0: default; M = 1: mma.sync bounds)
//                                 with the select kernel's phase clock: per-query cycles of its phases
//   BM_topk_unstaged/B/N/k        BM_topk for small batches with the warp kernel that reads each
//                                 table row from global memory, not the staged one (identical lists)
// (scripts/gpu-check prints BM_topk's speed-up over each BM_topk_baseline_* with the same arguments.)
// The acceptance cases (B, N, k) = (1024, 1M, 100), (1024, 12101, 100), (1, 1M, 100) run first.
//
// D = 64 (BM_topk_d also runs D = 32 and 128). Every row excludes 50 random items (a
// history). Times are CUDA-event times of the GPU work only (queries and tables stay on the
// device); counters: queries/s (items_per_second), table bytes/s (bytes_per_second) and TFLOP/s of
// the scoring. Baselines whose B x N buffers would not fit in 80% of the free device memory are
// skipped (SkipWithError, listed as such by scripts/gpu-check).
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <thrust/device_ptr.h>
#include <thrust/execution_policy.h>
#include <thrust/functional.h>
#include <thrust/iterator/zip_iterator.h>
#include <thrust/sort.h>

#include <cub/device/device_segmented_radix_sort.cuh>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ada/topk.hpp"
#include "kernels/topk.cuh"
#include "bench/cuda_bench_util.cuh"

namespace {

using ada_bench::Timer;
using ada_bench::with_phase_clock;

constexpr int kExcludedPerRow = 50;

// Whether `bytes` of scratch fit in 80% of the device memory free now.
bool fits(size_t bytes) {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return false;
  return double(bytes) < 0.8 * double(free_b);
}

__global__ void fill_random(float* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    h *= 3266489917u;
    h ^= h >> 16;
    x[i] = scale * (float(h) * (1.0f / 4294967296.0f) - 0.5f);
  }
}

// scores[b, j] += bias[j], item 0 gets -inf, ids[b, j] = j.
__global__ void add_bias(float* scores, int32_t* ids, const float* bias, int64_t N) {
  const int64_t b = blockIdx.y;
  float* row = scores + b * N;
  int32_t* id = ids + b * N;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < N; j += int64_t(gridDim.x) * blockDim.x) {
    row[j] = j == 0 ? -INFINITY : row[j] + bias[j];
    id[j] = int32_t(j);
  }
}

// The row's excluded ids get -inf (after add_bias: a separate launch orders the writes).
__global__ void mask_excluded(float* scores, int64_t N, const int64_t* ex_off, const int32_t* ex_ids) {
  const int64_t b = blockIdx.x;
  for (int64_t e = ex_off[b] + threadIdx.x; e < ex_off[b + 1]; e += blockDim.x) scores[b * N + ex_ids[e]] = -INFINITY;
}

__global__ void gather_topk(float* out_s, int32_t* out_i, const float* sorted_s, const int32_t* sorted_i, int64_t N,
                            int k) {
  const int64_t b = blockIdx.x;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    out_s[b * k + i] = sorted_s[b * N + i];
    out_i[b * k + i] = sorted_i[b * N + i];
  }
}

__global__ void row_of_cell(int32_t* rows, int64_t cells, int64_t N) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cells; c += int64_t(gridDim.x) * blockDim.x)
    rows[c] = int32_t(c / N);
}

__global__ void segment_offsets(int64_t* off, int64_t B, int64_t N) {
  for (int64_t i = threadIdx.x; i <= B; i += blockDim.x) off[i] = i * N;
}

// Device data shared by all benchmarks (the largest table is made once).
struct Data {
  int64_t maxN = 0;
  int D = 0;
  float* E = nullptr;
  float* bias = nullptr;
  float* U = nullptr;
  int64_t* ex_off = nullptr;
  int32_t* ex_ids = nullptr;
  int64_t ex_for_N = -1;
  float* out_s = nullptr;
  int32_t* out_i = nullptr;
  int32_t* out_c = nullptr;
  ada::cuda::TopkWorkspace ws;
  cublasHandle_t blas = nullptr;
};

constexpr int64_t kMaxB = 1024;

Data& data(int64_t N, int D) {
  static Data d;
  if (d.blas == nullptr) {
    if (cublasCreate(&d.blas) != CUBLAS_STATUS_SUCCESS) std::abort();
    cublasSetMathMode(d.blas, CUBLAS_PEDANTIC_MATH);  // exact FP32: no TF32
    CK(cudaMalloc(&d.out_s, kMaxB * 1024 * sizeof(float)));
    CK(cudaMalloc(&d.out_i, kMaxB * 1024 * sizeof(int32_t)));
    CK(cudaMalloc(&d.out_c, kMaxB * sizeof(int32_t)));
    CK(cudaMalloc(&d.ex_off, (kMaxB + 1) * sizeof(int64_t)));
    CK(cudaMalloc(&d.ex_ids, kMaxB * kExcludedPerRow * sizeof(int32_t)));
  }
  if (N > d.maxN || D != d.D) {
    if (d.E) CK(cudaFree(d.E));
    if (d.bias) CK(cudaFree(d.bias));
    if (d.U) CK(cudaFree(d.U));
    CK(cudaMalloc(&d.E, size_t(N) * D * sizeof(float)));
    CK(cudaMalloc(&d.bias, size_t(N) * sizeof(float)));
    CK(cudaMalloc(&d.U, size_t(kMaxB) * D * sizeof(float)));
    fill_random<<<1024, 256>>>(d.E, N * D, 1u, 1.0f);
    fill_random<<<1024, 256>>>(d.bias, N, 2u, 0.2f);
    fill_random<<<64, 256>>>(d.U, kMaxB * D, 3u, 2.0f);
    CK(cudaGetLastError());
    d.maxN = N;
    d.D = D;
    d.ex_for_N = -1;
  }
  if (d.ex_for_N != N) {  // sorted random exclusions inside [1, N)
    std::vector<int64_t> off(kMaxB + 1);
    std::vector<int32_t> ids;
    uint64_t x = 88172645463325252ull;
    for (int64_t b = 0; b < kMaxB; ++b) {
      off[size_t(b)] = int64_t(ids.size());
      std::vector<int32_t> row;
      for (int e = 0; e < kExcludedPerRow && N > 1; ++e) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        row.push_back(int32_t(1 + x % uint64_t(N - 1)));
      }
      std::sort(row.begin(), row.end());
      row.erase(std::unique(row.begin(), row.end()), row.end());
      ids.insert(ids.end(), row.begin(), row.end());
    }
    off[kMaxB] = int64_t(ids.size());
    CK(cudaMemcpy(d.ex_off, off.data(), off.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.ex_ids, ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    d.ex_for_N = N;
  }
  CK(cudaDeviceSynchronize());
  return d;
}

void counters(benchmark::State& st, int64_t B, int64_t N, int D) {
  st.SetItemsProcessed(int64_t(st.iterations()) * B);
  st.SetBytesProcessed(int64_t(st.iterations()) * N * (D + 1) * int64_t(sizeof(float)));
  st.counters["TFLOP/s"] = benchmark::Counter(2.0 * double(B) * double(N) * D * 1e-12,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

bool gpu_present(benchmark::State& st) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    st.SkipWithError("no CUDA device");
    return false;
  }
  return true;
}

void run_fused(benchmark::State& st, int D) {
  if (!gpu_present(st)) return;
  const int64_t B = st.range(0), N = st.range(1);
  const int k = int(st.range(2));
  Data& d = data(N, D);
  Timer t;
  for (auto _ : st) {
    t.start();
    ada::cuda::topk_device(d.U, B, D, d.E, d.bias, 0, N, k, d.ex_off, d.ex_ids, d.out_s, d.out_i, d.out_c, d.ws,
                           nullptr);
    st.SetIterationTime(t.stop());
  }
  counters(st, B, N, D);
}

// The kernels' process-wide settings for the scope of a benchmark, back to the defaults at its
// end: the tensor-core mode (0 auto, 1 always, 2 never), the tensor-core bounds kernel (0 wmma,
// 1 wmma with its products over the item tile, 2 mma.sync, 3 auto) and the select threads (0: auto),
// with autotuning off: a row of fixed settings times those launches, the rest by the fixed rules.
struct Settings {
  Settings(int tensor_cores, int tc_kernel, int select_threads) : tuning(ada::gpu_topk_autotune()) {
    ada::set_gpu_topk_autotune(ada::TopkAutotune::kOff);
    set(tensor_cores, tc_kernel, select_threads);
  }
  ~Settings() {
    set(0, ada::cuda::kTcAuto, 0);
    ada::set_gpu_topk_autotune(tuning);
  }
  const ada::TopkAutotune tuning;
  Settings(const Settings&) = delete;
  Settings& operator=(const Settings&) = delete;
  static void set(int tensor_cores, int tc_kernel, int select_threads) {
    ada::cuda::topk_tensor_cores(tensor_cores);
    ada::cuda::topk_tc_kernel(tc_kernel);
    ada::cuda::topk_select_threads(select_threads);
  }
};

void BM_topk(benchmark::State& st) { run_fused(st, 64); }

// BM_topk with the fixed launch rules (autotuning off).
void BM_topk_untuned(benchmark::State& st) {
  const Settings s(0, ada::cuda::kTcAuto, 0);
  run_fused(st, 64);
}

// BM_topk with the tensor cores switched off (FP32 bounds kernel; the same lists).
void BM_topk_fp32_bounds(benchmark::State& st) {
  const Settings s(2, 0, 0);
  run_fused(st, 64);
}

// BM_topk for small batches with the warp kernel that reads each row straight from global memory
// (not the default staged one; the same lists).
void BM_topk_unstaged(benchmark::State& st) {
  ada::cuda::topk_staged(false);
  run_fused(st, 64);
  ada::cuda::topk_staged(true);
}

// BM_topk with the tensor-core bounds kernel's products stored over its item tile (less shared
// memory per block, more blocks per multiprocessor, two more barriers per tile), and with the
// mma.sync bounds kernel (products folded in registers, item tiles by cp.async); the same lists.
// Tensor cores forced on, so that the 12k-item case uses them too.
void BM_topk_tc_shared(benchmark::State& st) {
  const Settings s(1, 1, 0);
  run_fused(st, 64);
}
void BM_topk_tc_mma(benchmark::State& st) {
  const Settings s(1, 2, 0);
  run_fused(st, 64);
}

// BM_topk with range(3) threads per select block (the default: 256 at these batches), and the
// same after the mma.sync bounds kernel (tensor cores forced on).
void BM_topk_select_threads(benchmark::State& st) {
  const Settings s(0, 0, int(st.range(3)));
  run_fused(st, 64);
}
void BM_topk_tc_mma_select_threads(benchmark::State& st) {
  const Settings s(1, 2, int(st.range(3)));
  run_fused(st, 64);
}

// BM_topk (range(3) threads per select block, 0: the default; range(4) 1: mma.sync bounds) with the
// select kernel's phase clock on (ada::set_cuda_phase_clock): its counters (phase_clock_counters)
// say where the select kernel's time goes, without a profiler; scripts/gpu-check prints them.
void BM_topk_select_phases(benchmark::State& st) {
  const Settings s(st.range(4) ? 1 : 0, st.range(4) ? 2 : 0, int(st.range(3)));
  with_phase_clock(st, "topk_select", [&] { run_fused(st, 64); });
}

// Kernel 1 of BM_topk alone (the per-group bounds): the rest of BM_topk's time is the select kernel.
void BM_topk_bounds_only(benchmark::State& st) {
  if (!gpu_present(st)) return;
  const int64_t B = st.range(0), N = st.range(1);
  const int k = int(st.range(2));
  Data& d = data(N, 64);
  Timer t;
  for (auto _ : st) {
    t.start();
    ada::cuda::topk_device_bounds_only(d.U, B, 64, d.E, d.bias, 0, N, k, d.ws, nullptr);
    st.SetIterationTime(t.stop());
  }
  counters(st, B, N, 64);
}
// The mma.sync bounds kernel alone (tensor cores forced on).
void BM_topk_bounds_only_tc_mma(benchmark::State& st) {
  const Settings s(1, 2, 0);
  BM_topk_bounds_only(st);
}
void BM_topk_d(benchmark::State& st) { run_fused(st, int(st.range(3))); }
// BM_topk_d with the mma.sync bounds kernel.
void BM_topk_d_tc_mma(benchmark::State& st) {
  const Settings s(1, 2, 0);
  run_fused(st, int(st.range(3)));
}

// C[B, N] (row-major) = U [B, D] E[N, D]^T: column-major C^T = E U^T.
void sgemm_scores(Data& d, float* C, int64_t B, int64_t N, int D) {
  const float one = 1.0f, zero = 0.0f;
  if (cublasSgemm(d.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(B), D, &one, d.E, D, d.U, D, &zero, C, int(N)) !=
      CUBLAS_STATUS_SUCCESS)
    std::abort();
}

void BM_topk_baseline_sgemm(benchmark::State& st) {
  if (!gpu_present(st)) return;
  const int64_t B = st.range(0), N = st.range(1);
  const int D = 64;
  if (!fits(size_t(B) * N * sizeof(float))) {
    st.SkipWithError("the B x N score matrix does not fit in device memory");
    return;
  }
  Data& d = data(N, D);
  float* C = nullptr;
  CK(cudaMalloc(&C, size_t(B) * N * sizeof(float)));
  Timer t;
  for (auto _ : st) {
    t.start();
    sgemm_scores(d, C, B, N, D);
    st.SetIterationTime(t.stop());
  }
  CK(cudaFree(C));
  counters(st, B, N, D);
}

void BM_topk_baseline_cub(benchmark::State& st) {
  if (!gpu_present(st)) return;
  const int64_t B = st.range(0), N = st.range(1);
  const int k = int(st.range(2));
  const int D = 64;
  const size_t cells = size_t(B) * N;
  if (!fits(cells * 20) || cells > size_t(INT32_MAX)) {
    st.SkipWithError("B x N sort buffers do not fit in device memory (or more than 2^31 keys)");
    return;
  }
  Data& d = data(N, D);
  float *s_in = nullptr, *s_out = nullptr;
  int32_t *i_in = nullptr, *i_out = nullptr;
  int64_t* seg = nullptr;
  CK(cudaMalloc(&s_in, cells * sizeof(float)));
  CK(cudaMalloc(&s_out, cells * sizeof(float)));
  CK(cudaMalloc(&i_in, cells * sizeof(int32_t)));
  CK(cudaMalloc(&i_out, cells * sizeof(int32_t)));
  CK(cudaMalloc(&seg, size_t(B + 1) * sizeof(int64_t)));
  segment_offsets<<<1, 1024>>>(seg, B, N);
  size_t temp_bytes = 0;
  CK(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, temp_bytes, s_in, s_out, i_in, i_out, int(cells),
                                                        int(B), seg, seg + 1));
  void* temp = nullptr;
  CK(cudaMalloc(&temp, temp_bytes));
  const dim3 mask_grid(unsigned(std::min<int64_t>((N + 255) / 256, 1024)), unsigned(B));
  Timer t;
  for (auto _ : st) {
    t.start();
    sgemm_scores(d, s_in, B, N, D);
    add_bias<<<mask_grid, 256>>>(s_in, i_in, d.bias, N);
    mask_excluded<<<unsigned(B), 64>>>(s_in, N, d.ex_off, d.ex_ids);
    CK(cub::DeviceSegmentedRadixSort::SortPairsDescending(temp, temp_bytes, s_in, s_out, i_in, i_out, int(cells),
                                                          int(B), seg, seg + 1));
    gather_topk<<<unsigned(B), 128>>>(d.out_s, d.out_i, s_out, i_out, N, k);
    st.SetIterationTime(t.stop());
  }
  CK(cudaGetLastError());
  for (void* p : {static_cast<void*>(s_in), static_cast<void*>(s_out), static_cast<void*>(i_in),
                  static_cast<void*>(i_out), static_cast<void*>(seg), temp})
    CK(cudaFree(p));
  counters(st, B, N, D);
}

void BM_topk_baseline_thrust(benchmark::State& st) {
  if (!gpu_present(st)) return;
  const int64_t B = st.range(0), N = st.range(1);
  const int k = int(st.range(2));
  const int D = 64;
  const size_t cells = size_t(B) * N;
  if (!fits(cells * 28)) {  // scores, ids, rows, and Thrust's own double buffers
    st.SkipWithError("B x N sort buffers do not fit in device memory");
    return;
  }
  Data& d = data(N, D);
  float* s = nullptr;
  int32_t *ids = nullptr, *rows = nullptr;
  CK(cudaMalloc(&s, cells * sizeof(float)));
  CK(cudaMalloc(&ids, cells * sizeof(int32_t)));
  CK(cudaMalloc(&rows, cells * sizeof(int32_t)));
  const dim3 mask_grid(unsigned(std::min<int64_t>((N + 255) / 256, 1024)), unsigned(B));
  thrust::device_ptr<float> ps(s);
  thrust::device_ptr<int32_t> pi(ids), pr(rows);
  Timer t;
  for (auto _ : st) {
    t.start();
    sgemm_scores(d, s, B, N, D);
    add_bias<<<mask_grid, 256>>>(s, ids, d.bias, N);
    mask_excluded<<<unsigned(B), 64>>>(s, N, d.ex_off, d.ex_ids);
    row_of_cell<<<1024, 256>>>(rows, int64_t(cells), N);
    // all cells by descending score, then (stably) by row: each row's cells end up best first
    thrust::stable_sort_by_key(thrust::device, ps, ps + cells, thrust::make_zip_iterator(thrust::make_tuple(pi, pr)),
                               thrust::greater<float>());
    thrust::stable_sort_by_key(thrust::device, pr, pr + cells, thrust::make_zip_iterator(thrust::make_tuple(ps, pi)));
    gather_topk<<<unsigned(B), 128>>>(d.out_s, d.out_i, s, ids, N, k);
    st.SetIterationTime(t.stop());
  }
  CK(cudaGetLastError());
  for (void* p : {static_cast<void*>(s), static_cast<void*>(ids), static_cast<void*>(rows)}) CK(cudaFree(p));
  counters(st, B, N, D);
}

bool is_acceptance_case(int64_t B, int64_t N, int64_t k) {
  return k == 100 && ((B == 1024 && (N == 1000000 || N == 12101)) || (B == 1 && N == 1000000));
}

void acceptance_cases(benchmark::internal::Benchmark* b) {
  b->Args({1024, 1000000, 100})->Args({1024, 12101, 100})->Args({1, 1000000, 100});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)->MinWarmUpTime(0.01);
}

void other_cases(benchmark::internal::Benchmark* b) {
  for (int64_t B : {1, 64, 1024})
    for (int64_t N : {12101, 1000000, 10000000})
      for (int64_t k : {20, 100, 1000})
        if (!is_acceptance_case(B, N, k)) b->Args({B, N, k});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)->MinWarmUpTime(0.01);
}

BENCHMARK(BM_topk)->Apply(acceptance_cases);
BENCHMARK(BM_topk_untuned)->Apply(acceptance_cases);
BENCHMARK(BM_topk_baseline_sgemm)->Apply(acceptance_cases);
BENCHMARK(BM_topk_baseline_cub)->Apply(acceptance_cases);
BENCHMARK(BM_topk_baseline_thrust)->Apply(acceptance_cases);
BENCHMARK(BM_topk_bounds_only)->Apply(acceptance_cases);
BENCHMARK(BM_topk_fp32_bounds)->Apply(acceptance_cases);
BENCHMARK(BM_topk_tc_shared)->Apply(acceptance_cases);
BENCHMARK(BM_topk_tc_mma)->Apply(acceptance_cases);
BENCHMARK(BM_topk_bounds_only_tc_mma)->Apply(acceptance_cases);
void select_cases(benchmark::internal::Benchmark* b) {
  for (int64_t N : {1000000, 12101})
    for (int64_t threads : {32, 64, 128}) b->Args({1024, N, 100, threads});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)->MinWarmUpTime(0.01);
}
BENCHMARK(BM_topk_select_threads)->Apply(select_cases);
BENCHMARK(BM_topk_tc_mma_select_threads)->Apply(select_cases);
void phase_cases(benchmark::internal::Benchmark* b) {  // B, N, k, select threads, mma.sync bounds
  for (int64_t N : {1000000, 12101})
    for (int64_t threads : {0, 32}) b->Args({1024, N, 100, threads, 0})->Args({1024, N, 100, threads, 1});
  b->Args({1, 1000000, 100, 0, 0});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)->MinWarmUpTime(0.01);
}
BENCHMARK(BM_topk_select_phases)->Apply(phase_cases);
BENCHMARK(BM_topk)->Apply(other_cases);
BENCHMARK(BM_topk_baseline_sgemm)->Apply(other_cases);
BENCHMARK(BM_topk_baseline_cub)->Apply(other_cases);
BENCHMARK(BM_topk_baseline_thrust)->Apply(other_cases);
BENCHMARK(BM_topk_unstaged)
    ->Args({1, 1000000, 100})
    ->Args({1, 12101, 100})
    ->Args({8, 1000000, 100})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05)->MinWarmUpTime(0.01);
BENCHMARK(BM_topk)->Args({8, 1000000, 100})->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)->MinWarmUpTime(0.01);
void d_cases(benchmark::internal::Benchmark* b) {  // D = 32 and 128 at the large acceptance case
  b->Args({1024, 1000000, 100, 32})->Args({1024, 1000000, 100, 128});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05)->MinWarmUpTime(0.01);
}
BENCHMARK(BM_topk_d)->Apply(d_cases);
BENCHMARK(BM_topk_d_tc_mma)->Apply(d_cases);

}  // namespace

BENCHMARK_MAIN();
