// Shared by the CUDA tests (tests/cuda_*.cpp): the GPU check, random inputs from the counter RNG, and
// the element-wise comparison of a CUDA result with the CPU backend's.
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ada/backend.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"
#include "ada/rng.hpp"
#include "tests/test_util.hpp"

namespace ada_test {

// Ends the test as skipped (exit 77) without a CUDA build or device: never reported as passed.
inline void require_gpu() {
  if (!ada::built_with_cuda()) skip("built without CUDA");
  if (ada::cuda_device_count() == 0) skip("no CUDA device visible");
}

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

// The CUDA kernels' phase clocks on for a scope (ada::set_cuda_phase_clock), off at its end.
struct PhaseClockOn {
  PhaseClockOn() { ada::set_cuda_phase_clock(true); }
  ~PhaseClockOn() { ada::set_cuda_phase_clock(false); }
  PhaseClockOn(const PhaseClockOn&) = delete;
  PhaseClockOn& operator=(const PhaseClockOn&) = delete;
};

// The mean of slot `name` in a phase-clock reading (a test failure when there is no such slot).
inline double reading_of(const ada::PhaseClockReading& r, const std::string& name) {
  for (size_t i = 0; i < r.names.size(); ++i)
    if (r.names[i] == name) return r.means[i];
  FAIL("no slot " << name << " in the phase clock of " << r.unit << "s");
  return 0;
}

// offset + uniform in [-scale, scale) from the counter RNG (key, stream = seed).
inline std::vector<float> rnd(size_t n, uint64_t seed, float scale = 1.0f, float offset = 0.0f,
                              uint64_t key = 4321) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = offset + (2.0f * ada::u32_to_unit_float(ada::random_u32(key, seed, i)) - 1.0f) * scale;
  return v;
}

template <class T>
ada::DeviceArray<T> dev(const std::vector<T>& v) {
  return ada::DeviceArray<T>::from(v);
}

// What a non-finite element must be to pass: kFail = never (the inputs are finite, so must be the
// outputs); kMatch = the CPU's value (the same infinity, or NaN on both sides).
enum class NonFinite { kFail, kMatch };

// Element i passes when |gpu - cpu| <= tol_i (|cpu| + mean |cpu|) + abs_tol (tol_i = tol, or
// (*tol_each)[i]); the mean term keeps values that cancel to near 0 from demanding impossible
// relative accuracy. Reports the worst element.
inline void expect_close(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu,
                         double tol, double abs_tol = 0, const std::vector<double>* tol_each = nullptr,
                         NonFinite non_finite = NonFinite::kFail) {
  REQUIRE(gpu.size() == cpu.size());
  if (tol_each) REQUIRE(tol_each->size() == cpu.size());
  double mean_abs = 0;
  for (float c : cpu)
    if (std::isfinite(c)) mean_abs += std::fabs(double(c));
  mean_abs /= double(std::max<size_t>(cpu.size(), 1));
  double worst = 0;
  size_t wi = 0;
  bool finite_ok = true;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double g = gpu[i], c = cpu[i];
    if (!std::isfinite(g) || !std::isfinite(c)) {
      const bool same = (std::isnan(g) && std::isnan(c)) || g == c;
      if (non_finite == NonFinite::kFail || !same) {
        finite_ok = false;
        wi = i;
        worst = INFINITY;
      }
      continue;
    }
    const double err = std::fabs(g - c);
    const double lim = (tol_each ? (*tol_each)[i] : tol) * (std::fabs(c) + mean_abs) + abs_tol;
    const double ratio = err == 0 ? 0 : (lim > 0 ? err / lim : INFINITY);
    if (ratio > worst) {
      worst = ratio;
      wi = i;
    }
  }
  INFO(what << ": worst error/limit " << worst << " at " << wi << " of " << cpu.size() << " (gpu "
            << (cpu.empty() ? 0.f : gpu[wi]) << ", cpu " << (cpu.empty() ? 0.f : cpu[wi]) << ", tol "
            << (tol_each && !cpu.empty() ? (*tol_each)[wi] : tol) << ")");
  CHECK(finite_ok);
  CHECK(worst <= 1.0);
}

// The two backends a comparison runs on.
struct BackendPair {
  std::unique_ptr<ada::Backend<float>> cpu = ada::make_cpu_backend<float>();
  std::unique_ptr<ada::Backend<float>> gpu = ada::make_cuda_backend(0);
};

}  // namespace ada_test
