// The CUDA backend's fused user representation adapter (Backend::user_adapter_forward/backward,
// kernels/fused_user.cu) against the CPU backend's, which is the composition of the primitive ops
// (src/core/fused_user.cpp), on seeded random inputs: B in {1, 2, 3, 5, 8, 9, 13, 33, 300} (a
// partial tile of 8 rows, several tiles, several 256-row chunks of the column sums), D in {3, 7,
// 16, 33, 64, 65, 128} (128: the kernels' maximum) and 130 (beyond it: the CUDA backend falls back
// to the composition), t in 1..4, dropout p = 0 and p = 0.3. Every case first checks for a device
// and otherwise ends as skipped (exit 77), never as passed. (D = 1 and 2 are left out: LayerNorm
// over 1 or 2 features outputs constants (b, or b +- w), so its exact input gradient is 0 and both
// backends return rounding noise.)
//
// Tolerance: an element passes when |gpu - cpu| <= tol * (|cpu| + mean|cpu|) (as in
// tests/cuda_backend_ops.cpp):
//   1e-4  forward: out and every saved tensor (hs, gates, gh, a1r, r2, mean, rstd): FP32 products
//         summed in another order than the CPU's BLAS, expf/tanhf, LayerNorm warp sums
//   3e-4  backward, run on the CPU's saved tensors (uploaded, so it is compared on identical
//         inputs): d v, d users (accumulated onto random values) and the ten parameter gradients
//         (accumulated onto random values; sums over B and t B rows by cuBLAS / the column sums)
//   exact the dropout mask: wherever the CPU's r2 - v is exactly 0 with p > 0 (a dropped element)
//         the GPU's must be too (checked through r2 = v there)
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ada/backend.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"
#include "ada/rng.hpp"
#include "tests/cuda_test_util.hpp"

using namespace ada;

namespace {

using ada_test::expect_close;
using ada_test::require_gpu;
using ada_test::rnd;
using ada_test::sz;

constexpr double kFwd = 1e-4, kBwd = 3e-4;

// The ten parameter tensors in UserAdapterTensors order, with their sizes.
std::vector<int64_t> param_sizes(int64_t D) {
  return {3 * D * D, 3 * D, 3 * D * D, 3 * D, 4 * D * D, 2 * D, 2 * D * D, D, D, D};
}
template <class P, class V>
UserAdapterTensors<P> tensors(std::vector<V>& a) {
  UserAdapterTensors<P> t;
  P* f[] = {&t.w_ih, &t.b_ih, &t.w_hh, &t.b_hh, &t.w1, &t.b1, &t.w2, &t.b2, &t.ln_w, &t.ln_b};
  for (size_t i = 0; i < 10; ++i) *f[i] = a[i].data();
  return t;
}
const char* const kParamNames[] = {"w_ih", "b_ih", "w_hh", "b_hh", "w1", "b1", "w2", "b2", "ln_w", "ln_b"};

// The saved tensors in UserAdapterSaved order (hs, gates, gh, a1r, r2, mean, rstd).
std::vector<int64_t> saved_sizes(int64_t B, int64_t D, int t) {
  return {(t + 1) * B * D, t * B * 3 * D, t * B * 3 * D, B * 2 * D, B * D, B, B};
}
template <class V>
UserAdapterSaved<float> saved(std::vector<V>& a) {
  UserAdapterSaved<float> s;
  float** f[] = {&s.hs, &s.gates, &s.gh, &s.a1r, &s.r2, &s.mean, &s.rstd};
  for (size_t i = 0; i < 7; ++i) *f[i] = a[i].data();
  return s;
}
const char* const kSavedNames[] = {"hs", "gates", "gh", "a1r", "r2", "mean", "rstd"};

void check_case(Backend<float>& cpu, Backend<float>& gpu, int64_t B, int64_t D, int t, float p,
                uint64_t seed) {
  const std::string tag = " B=" + std::to_string(B) + " D=" + std::to_string(D) +
                          " t=" + std::to_string(t) + " p=" + std::to_string(p);
  INFO(tag);
  UserAdapterShape sh;
  sh.B = B;
  sh.D = D;
  sh.t = t;
  sh.p = p;
  sh.seed = 77;
  sh.stream = rng_stream(RngPurpose::kDropout, 5, uint32_t(seed));
  sh.eps = 1e-12;
  const float wscale = 1.0f / std::sqrt(float(D));  // keeps the gates and the MLP out of saturation
  std::vector<std::vector<float>> w, g0;
  const auto ps = param_sizes(D);
  for (size_t i = 0; i < ps.size(); ++i) {
    const bool ln = i >= 8;
    w.push_back(rnd(sz(ps[i]), seed * 100 + i, ln ? 0.5f : wscale));
    if (i == 8)
      for (float& x : w.back()) x += 1.0f;  // LayerNorm weight around 1
    g0.push_back(rnd(sz(ps[i]), seed * 100 + 50 + i, 0.1f));
  }
  const auto users = rnd(sz(t * B * D), seed * 100 + 20), v = rnd(sz(B * D), seed * 100 + 21);
  const auto d_out = rnd(sz(B * D), seed * 100 + 22), du0 = rnd(sz(t * B * D), seed * 100 + 23, 0.1f);
  const int64_t wn = user_adapter_work_size(sh);

  // CPU
  std::vector<std::vector<float>> csv;
  for (int64_t n : saved_sizes(B, D, t)) csv.emplace_back(sz(n), -7.f);
  std::vector<float> cout(sz(B * D)), cwork(sz(wn));
  cpu.user_adapter_forward(cout.data(), saved(csv), cwork.data(), users.data(), v.data(),
                           tensors<const float*>(w), sh);
  std::vector<float> cdv(sz(B * D)), cdu = du0;
  auto cg = g0;
  cpu.user_adapter_backward(cdv.data(), cdu.data(), tensors<float*>(cg), cwork.data(), d_out.data(),
                            saved(csv), users.data(), v.data(), tensors<const float*>(w), sh);

  // GPU forward
  std::vector<DeviceArray<float>> dw, dg, dsv;
  for (auto& x : w) dw.push_back(DeviceArray<float>::from(x));
  for (auto& x : g0) dg.push_back(DeviceArray<float>::from(x));
  for (int64_t n : saved_sizes(B, D, t)) {
    dsv.emplace_back(sz(n));
    std::vector<float> junk(sz(n), -7.f);
    dsv.back().upload(junk.data(), junk.size());
  }
  auto dusers = DeviceArray<float>::from(users), dv = DeviceArray<float>::from(v);
  auto ddout = DeviceArray<float>::from(d_out), ddu = DeviceArray<float>::from(du0);
  DeviceArray<float> dout_(sz(B * D)), dwork(sz(wn)), ddv(sz(B * D));
  gpu.user_adapter_forward(dout_.data(), saved(dsv), dwork.data(), dusers.data(), dv.data(),
                           tensors<const float*>(dw), sh);
  expect_close("out" + tag, dout_.to_vector(), cout, kFwd);
  for (size_t i = 0; i < dsv.size(); ++i)
    expect_close(std::string(kSavedNames[i]) + tag, dsv[i].to_vector(), csv[i], kFwd);
  if (p > 0) {  // dropped elements: r2 == v exactly on both
    const auto gr2 = dsv[4].to_vector();
    for (size_t i = 0; i < gr2.size(); ++i)
      if (csv[4][i] == v[i]) CHECK(gr2[i] == v[i]);
  }

  // GPU backward on the CPU's saved tensors
  for (size_t i = 0; i < dsv.size(); ++i) dsv[i].upload(csv[i].data(), csv[i].size());
  gpu.user_adapter_backward(ddv.data(), ddu.data(), tensors<float*>(dg), dwork.data(), ddout.data(),
                            saved(dsv), dusers.data(), dv.data(), tensors<const float*>(dw), sh);
  expect_close("d_v" + tag, ddv.to_vector(), cdv, kBwd);
  expect_close("d_users" + tag, ddu.to_vector(), cdu, kBwd);
  for (size_t i = 0; i < dg.size(); ++i)
    expect_close(std::string("d ") + kParamNames[i] + tag, dg[i].to_vector(), cg[i], kBwd);
}

}  // namespace

TEST_CASE("CUDA fused user adapter forward and backward match the CPU composition", "[cuda]") {
  require_gpu();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  uint64_t seed = 1;
  struct S {
    int64_t B, D;
    int t;
  };
  for (const S s : {S{1, 3, 1}, S{3, 7, 2}, S{13, 33, 3}, S{8, 64, 1}, S{9, 64, 4}, S{5, 65, 2},
                    S{33, 16, 4}, S{3, 128, 1}, S{2, 128, 3},
                    // B t > 256 rows: the column sums span several chunks (their last CTA adds them)
                    S{300, 16, 2}})
    for (float p : {0.0f, 0.3f}) check_case(*cpu, *gpu, s.B, s.D, s.t, p, ++seed);
}

// The backward kernel's phase clock (ada::set_cuda_phase_clock, for benchmarks): every CTA of 8 rows
// of every call counted (check_case runs the backward once: 9 rows and 17 rows make 2 + 3 CTAs), the
// phases sane non-negative cycle counts, the slowest CTA at least the mean one, the results still
// the CPU's, nothing counted once it is off.
TEST_CASE("CUDA fused user adapter backward: its phase clock counts every CTA and changes no result", "[cuda]") {
  require_gpu();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  {
    const ada_test::PhaseClockOn on;
    check_case(*cpu, *gpu, 9, 64, 4, 0.3f, 500);
    check_case(*cpu, *gpu, 17, 33, 1, 0.0f, 501);
    const PhaseClockReading r = cuda_phase_clock("user_adapter_backward");
    CHECK(r.units == 5);
    double total = 0;
    for (const char* ph : {"ln", "w2", "w1", "steps"}) {
      const double c = ada_test::reading_of(r, ph);
      CHECK(c >= 0);
      CHECK(c < 1e12);
      total += c;
    }
    CHECK(total > 0);
    CHECK(ada_test::reading_of(r, "max_cta") >= total);
  }
  CHECK(cuda_phase_clock("user_adapter_backward").units == 0);
}

TEST_CASE("CUDA user adapter beyond the fused kernels' D falls back to the composition", "[cuda]") {
  require_gpu();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  check_case(*cpu, *gpu, 3, 130, 2, 0.3f, 99);
}
