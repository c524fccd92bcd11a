// Shared by the CUDA benchmarks: abort-on-error checks (CUDA, cuBLAS), CUDA-event timing, random device
// arrays, the process's CUDA backend and the baselines' cuBLAS handle.
#pragma once
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ada/backend.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

#define BK(x)                                                            \
  do {                                                                   \
    if ((x) != CUBLAS_STATUS_SUCCESS) {                                  \
      std::fprintf(stderr, "%s:%d %s failed\n", __FILE__, __LINE__, #x); \
      std::abort();                                                      \
    }                                                                    \
  } while (0)

namespace ada_bench {

// The composed baselines' cuBLAS handle: FP32 math, no TF32 (as the backend's GEMMs), on the legacy
// default stream.
inline cublasHandle_t blas() {
  static cublasHandle_t h = [] {
    cublasHandle_t x = nullptr;
    BK(cublasCreate(&x));
    BK(cublasSetMathMode(x, CUBLAS_DEFAULT_MATH));
    return x;
  }();
  return h;
}

// Seconds between start() and stop(), both recorded on the legacy default stream (which orders with
// every blocking stream, the CUDA backend's included).
struct Timer {
  cudaEvent_t a, b;
  Timer() {
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void start() { CK(cudaEventRecord(a)); }
  double stop() {
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    return ms / 1e3;
  }
};

// n values N(offset, scale^2) from a seeded generator, on the device (the benchmarks time, the tests
// check values: only the scale matters here).
inline ada::DeviceArray<float> random_device(size_t n, uint32_t seed, float scale = 1.0f, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = offset + nd(rng);
  return ada::DeviceArray<float>::from(v);
}

// The phase clock of `kernel` since it was switched on (ada::cuda_phase_clock) as counters, one per
// slot: "ph<NN>_<name>", NN its position (Google Benchmark's CSV sorts counters by name, so the
// columns keep the kernel's order), the phases in SM cycles and the counts per unit, which the label
// names. scripts/gpu-check prints them after the row's time.
inline void phase_clock_counters(benchmark::State& st, const char* kernel) {
  const ada::PhaseClockReading r = ada::cuda_phase_clock(kernel);
  for (size_t i = 0; i < r.names.size(); ++i) {
    char key[64];
    std::snprintf(key, sizeof key, "ph%02d_%s", int(i + 1), r.names[i].c_str());
    st.counters[key] = r.means[i];
  }
  st.SetLabel("phase clock per " + r.unit + " (" + std::to_string(r.units) + " counted)");  // no comma: CSV
}

// Runs `body` (a row's whole measurement) with the phase clocks on, then reports `kernel`'s clock as
// counters (phase_clock_counters); without a CUDA device the body alone (which skips the row).
template <class Body>
void with_phase_clock(benchmark::State& st, const char* kernel, Body body) {
  if (ada::cuda_device_count() == 0) {
    body();
    return;
  }
  ada::set_cuda_phase_clock(true);
  body();
  phase_clock_counters(st, kernel);
  ada::set_cuda_phase_clock(false);
}

// The process's CUDA backend (made on first use), or null with the benchmark skipped without a device.
inline ada::Backend<float>* backend(benchmark::State& st) {
  static std::unique_ptr<ada::Backend<float>> be;
  if (!be) {
    if (ada::cuda_device_count() == 0) {
      st.SkipWithError("no CUDA device");
      return nullptr;
    }
    be = ada::make_cuda_backend(0);
  }
  return be.get();
}

}  // namespace ada_bench
