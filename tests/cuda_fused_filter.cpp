// The fused filter block of the CUDA backend (Backend::filter_block_forward / _backward,
// kernels/fused_filter.cu) against the CPU backend's op (the composition of the primitive ops,
// src/core/fused_filter.cpp), on seeded random inputs: every forward output and saved tensor, every
// gradient, for shapes with K = 1, odd K and D, the Beauty shape (K = 20, D = 64), the fused
// kernels' maxima (K = 64, D = 128), shapes just beyond them (the CUDA backend's composed fallback),
// R larger than the persistent grid (CTAs that take several blocks), dropout p = 0 and p > 0 (the
// backward leaves out D <= 2, whose LayerNorm gradient is pure rounding noise, see there).
// Every case first checks for a device and otherwise ends as skipped (exit 77), never as passed.
//
// Tolerance: an element passes when |gpu - cpu| <= tol * (|cpu| + mean|cpu|) (as
// tests/cuda_backend_ops.cpp). Per quantity:
//   exact (0)   which elements the dropout zeroes: for p > 0 a position dropped on one side and kept
//               on the other would show as an error of the size of the value, far above 1e-4; the
//               keep bits are also checked exactly through G = 0 positions of Rr - E (see below)
//   1e-4        F (the filter's sums), Rr, Et, mean, rstd (Linear and LayerNorm sums in another order than
//               OpenBLAS / the CPU loops), and the gradients dE, d complex weight, d dense weight,
//               d dense bias, d LayerNorm weight and bias (sums over all n rows in another order)
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

using ada_test::dev;
using ada_test::expect_close;
using ada_test::require_gpu;
using ada_test::rnd;
using ada_test::sz;

constexpr double kReduce = 1e-4;

struct Shape {
  int64_t R, K, D;
};

// The inputs of one case (host), the parameters at realistic scales: the dense weight ~ N(0, 0.02)
// like the model's init would make the branch negligible, so it is larger here (the branch matters).
struct Case {
  Shape s;
  float p;
  uint64_t seed, stream;
  std::vector<float> E, cw, Wd, bd, lw, lb;
  Case(Shape sh, float p_, uint64_t base) : s(sh), p(p_), seed(77 + base), stream(rng_stream(RngPurpose::kDropout, 3, uint32_t(base))) {
    const int64_t n = s.R * s.K, Kf = s.K / 2 + 1;
    E = rnd(sz(n * s.D), base * 16 + 1);
    cw = rnd(sz(Kf * s.D * 2), base * 16 + 2);
    Wd = rnd(sz(s.D * s.D), base * 16 + 3, 1.0f / std::sqrt(float(s.D)));
    bd = rnd(sz(s.D), base * 16 + 4, 0.1f);
    lw = rnd(sz(s.D), base * 16 + 5, 0.3f, 1.0f);
    lb = rnd(sz(s.D), base * 16 + 6, 0.1f);
  }
  std::string tag() const {
    return " R=" + std::to_string(s.R) + " K=" + std::to_string(s.K) + " D=" + std::to_string(s.D) +
           " p=" + std::to_string(p);
  }
};

constexpr float kEps = 1e-12f;  // the model's LayerNorm eps

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> v = {
      {1, 1, 1},    {3, 1, 5},    {2, 2, 3},     {3, 5, 7},    {2, 20, 64},  {3, 20, 33},
      {2, 7, 100},  {1, 64, 128}, {2, 33, 96},   {1, 64, 31},  {2200, 1, 3},  // > the grid
      {1000, 20, 64}, {1300, 6, 40},  // > the grid: the forward's prefetch of the next E tile
      {1, 65, 8},   {1, 3, 129},  // beyond the fused limits: the composed fallback
  };
  return v;
}

// The forward of one shape and dropout rate on both backends: every output and the mask.
void check_forward(Backend<float>& cpu, Backend<float>& gpu, const Shape& s, float p, uint64_t base) {
  const Case c(s, p, base);
  const int64_t n = s.R * s.K, nD = n * s.D;
  std::vector<float> Et(sz(nD)), F(sz(nD)), Rr(sz(nD)), mean(sz(n)), rstd(sz(n));
  cpu.filter_block_forward(Et.data(), F.data(), Rr.data(), mean.data(), rstd.data(), c.E.data(), c.cw.data(),
                           c.Wd.data(), c.bd.data(), c.lw.data(), c.lb.data(), s.R, s.K, s.D, kEps, p, c.seed,
                           c.stream);
  auto dE = dev(c.E), dcw = dev(c.cw), dWd = dev(c.Wd), dbd = dev(c.bd), dlw = dev(c.lw), dlb = dev(c.lb);
  DeviceArray<float> gEt(sz(nD)), gF(sz(nD)), gRr(sz(nD)), gmean(sz(n)), grstd(sz(n));
  gpu.filter_block_forward(gEt.data(), gF.data(), gRr.data(), gmean.data(), grstd.data(), dE.data(), dcw.data(),
                           dWd.data(), dbd.data(), dlw.data(), dlb.data(), s.R, s.K, s.D, kEps, p, c.seed,
                           c.stream);
  const std::string tag = c.tag();
  expect_close("F" + tag, gF.to_vector(), F, kReduce);
  const auto gR = gRr.to_vector();
  expect_close("Rr" + tag, gR, Rr, kReduce);
  expect_close("Et" + tag, gEt.to_vector(), Et, kReduce);
  expect_close("mean" + tag, gmean.to_vector(), mean, kReduce);
  expect_close("rstd" + tag, grstd.to_vector(), rstd, kReduce);
  // the dropout mask exactly: Rr - E is 0 where the element was dropped (both sides)
  size_t mismatched = 0, dropped = 0;
  for (size_t i = 0; i < Rr.size(); ++i) {
    const bool cpu_drop = Rr[i] - c.E[i] == 0.f, gpu_drop = gR[i] - c.E[i] == 0.f;
    dropped += cpu_drop;
    mismatched += cpu_drop != gpu_drop;
  }
  INFO("dropout mask" << tag << ": " << mismatched << " positions differ, " << dropped << " dropped");
  CHECK(mismatched == 0);
  if (p > 0 && nD >= 200) CHECK(dropped > 0);
}

}  // namespace

TEST_CASE("CUDA fused filter block forward matches the CPU op (outputs and saved tensors)",
          "[cuda][fused_filter]") {
  require_gpu();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  uint64_t base = 0;
  for (const Shape& s : shapes())
    for (float p : {0.0f, 0.3f}) check_forward(*cpu, *gpu, s, p, ++base);
}

// The forward's phase clock (ada::set_cuda_phase_clock, for benchmarks): every filter block of
// every call counted, each phase a sane non-negative number of cycles, the outputs still the CPU's.
TEST_CASE("CUDA fused filter block forward: its phase clock counts every filter block and changes no output",
          "[cuda][fused_filter]") {
  require_gpu();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  {
    const ada_test::PhaseClockOn on;
    check_forward(*cpu, *gpu, {3, 5, 7}, 0.3f, 400);
    check_forward(*cpu, *gpu, {40, 20, 64}, 0.0f, 401);
    const PhaseClockReading r = cuda_phase_clock("filter_block_forward");
    CHECK(r.units == 43);
    CHECK(r.unit == "filter block");
    double total = 0;
    for (const char* ph : {"cta_setup", "stage", "filter", "linear", "norm", "wait"}) {
      const double c = ada_test::reading_of(r, ph);
      CHECK(c >= 0);
      CHECK(c < 1e12);
      total += c;
    }
    CHECK(total > 0);
    CHECK(ada_test::reading_of(r, "max_cta") >= total);  // the slowest CTA: at least a mean block's time
  }
  CHECK(cuda_phase_clock("filter_block_forward").units == 0);
}

TEST_CASE("CUDA fused filter block backward matches the CPU op (every gradient, += onto values)",
          "[cuda][fused_filter]") {
  require_gpu();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  uint64_t base = 100;
  for (const Shape& s : shapes())
    for (float p : {0.0f, 0.3f}) {
      // D <= 2: the LayerNorm's input gradient is 0 in exact arithmetic (one channel: variance 0;
      // two: the outputs are +-1 whatever the input), so both sides return rounding noise (times
      // rstd, up to 1/sqrt(eps) = 1e6): not comparable
      if (s.D <= 2) continue;
      const Case c(s, p, ++base);
      const int64_t n = s.R * s.K, nD = n * s.D, Kf = s.K / 2 + 1;
      // the forward's saved tensors from the CPU: both backwards read the same inputs
      std::vector<float> Et(sz(nD)), F(sz(nD)), Rr(sz(nD)), mean(sz(n)), rstd(sz(n));
      cpu->filter_block_forward(Et.data(), F.data(), Rr.data(), mean.data(), rstd.data(), c.E.data(),
                                c.cw.data(), c.Wd.data(), c.bd.data(), c.lw.data(), c.lb.data(), s.R,
                                s.K, s.D, kEps, p, c.seed, c.stream);
      const auto dEt = rnd(sz(nD), base * 16 + 7);
      // parameter gradients accumulate onto random values; dE is overwritten (starts as garbage)
      auto g_cw = rnd(sz(Kf * s.D * 2), base * 16 + 8), g_wd = rnd(sz(s.D * s.D), base * 16 + 9),
           g_bd = rnd(sz(s.D), base * 16 + 10), g_lw = rnd(sz(s.D), base * 16 + 11),
           g_lb = rnd(sz(s.D), base * 16 + 12);
      std::vector<float> dE(sz(nD), 7.f);
      auto G_cw = dev(g_cw), G_wd = dev(g_wd), G_bd = dev(g_bd), G_lw = dev(g_lw), G_lb = dev(g_lb),
           G_E = dev(dE);
      cpu->filter_block_backward(dE.data(), g_cw.data(), g_wd.data(), g_bd.data(), g_lw.data(),
                                 g_lb.data(), dEt.data(), c.E.data(), F.data(), Rr.data(), mean.data(),
                                 rstd.data(), c.cw.data(), c.Wd.data(), c.lw.data(), s.R, s.K, s.D, p,
                                 c.seed, c.stream);
      auto d_dEt = dev(dEt), d_E = dev(c.E), d_F = dev(F), d_Rr = dev(Rr), d_mean = dev(mean),
           d_rstd = dev(rstd), d_cw = dev(c.cw), d_Wd = dev(c.Wd), d_lw = dev(c.lw);
      gpu->filter_block_backward(G_E.data(), G_cw.data(), G_wd.data(), G_bd.data(), G_lw.data(),
                                 G_lb.data(), d_dEt.data(), d_E.data(), d_F.data(), d_Rr.data(),
                                 d_mean.data(), d_rstd.data(), d_cw.data(), d_Wd.data(), d_lw.data(),
                                 s.R, s.K, s.D, p, c.seed, c.stream);
      const std::string tag = c.tag();
      expect_close("dE" + tag, G_E.to_vector(), dE, kReduce);
      expect_close("d complex weight" + tag, G_cw.to_vector(), g_cw, kReduce);
      expect_close("d dense weight" + tag, G_wd.to_vector(), g_wd, kReduce);
      expect_close("d dense bias" + tag, G_bd.to_vector(), g_bd, kReduce);
      expect_close("d LayerNorm weight" + tag, G_lw.to_vector(), g_lw, kReduce);
      expect_close("d LayerNorm bias" + tag, G_lb.to_vector(), g_lb, kReduce);
    }
}

TEST_CASE("CUDA fused filter block: the GPU's own forward feeds its backward; R = 0 is a no-op",
          "[cuda][fused_filter]") {
  require_gpu();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  const Shape s{6, 20, 64};
  const float p = 0.25f;
  const Case c(s, p, 500);
  const int64_t n = s.R * s.K, nD = n * s.D, Kf = s.K / 2 + 1;
  std::vector<float> Et(sz(nD)), F(sz(nD)), Rr(sz(nD)), mean(sz(n)), rstd(sz(n));
  cpu->filter_block_forward(Et.data(), F.data(), Rr.data(), mean.data(), rstd.data(), c.E.data(),
                            c.cw.data(), c.Wd.data(), c.bd.data(), c.lw.data(), c.lb.data(), s.R, s.K,
                            s.D, kEps, p, c.seed, c.stream);
  const auto dEt = rnd(sz(nD), 501);
  std::vector<float> dE(sz(nD)), g_cw(sz(Kf * s.D * 2)), g_wd(sz(s.D * s.D)), g_bd(sz(s.D)),
      g_lw(sz(s.D)), g_lb(sz(s.D));
  cpu->filter_block_backward(dE.data(), g_cw.data(), g_wd.data(), g_bd.data(), g_lw.data(),
                             g_lb.data(), dEt.data(), c.E.data(), F.data(), Rr.data(), mean.data(),
                             rstd.data(), c.cw.data(), c.Wd.data(), c.lw.data(), s.R, s.K, s.D, p,
                             c.seed, c.stream);
  auto d_E = dev(c.E), d_cw = dev(c.cw), d_Wd = dev(c.Wd), d_bd = dev(c.bd), d_lw = dev(c.lw),
       d_lb = dev(c.lb), d_dEt = dev(dEt);
  DeviceArray<float> gEt(sz(nD)), gF(sz(nD)), gRr(sz(nD)), gmean(sz(n)), grstd(sz(n)), gdE(sz(nD)),
      G_cw(g_cw.size()), G_wd(g_wd.size()), G_bd(g_bd.size()), G_lw(g_lw.size()), G_lb(g_lb.size());
  for (auto* a : {&G_cw, &G_wd, &G_bd, &G_lw, &G_lb}) a->fill_zero();
  gpu->filter_block_forward(gEt.data(), gF.data(), gRr.data(), gmean.data(), grstd.data(), d_E.data(),
                            d_cw.data(), d_Wd.data(), d_bd.data(), d_lw.data(), d_lb.data(), s.R, s.K,
                            s.D, kEps, p, c.seed, c.stream);
  gpu->filter_block_backward(gdE.data(), G_cw.data(), G_wd.data(), G_bd.data(), G_lw.data(),
                             G_lb.data(), d_dEt.data(), d_E.data(), gF.data(), gRr.data(),
                             gmean.data(), grstd.data(), d_cw.data(), d_Wd.data(), d_lw.data(), s.R,
                             s.K, s.D, p, c.seed, c.stream);
  expect_close("Et", gEt.to_vector(), Et, kReduce);
  expect_close("dE", gdE.to_vector(), dE, kReduce);
  expect_close("d complex weight", G_cw.to_vector(), g_cw, kReduce);
  expect_close("d dense weight", G_wd.to_vector(), g_wd, kReduce);
  expect_close("d dense bias", G_bd.to_vector(), g_bd, kReduce);
  expect_close("d LayerNorm weight", G_lw.to_vector(), g_lw, kReduce);
  expect_close("d LayerNorm bias", G_lb.to_vector(), g_lb, kReduce);
  // R = 0: nothing is written, the gradients stay
  gpu->filter_block_forward(gEt.data(), gF.data(), gRr.data(), gmean.data(), grstd.data(), d_E.data(),
                            d_cw.data(), d_Wd.data(), d_bd.data(), d_lw.data(), d_lb.data(), 0, s.K,
                            s.D, kEps, p, c.seed, c.stream);
  gpu->filter_block_backward(gdE.data(), G_cw.data(), G_wd.data(), G_bd.data(), G_lw.data(),
                             G_lb.data(), d_dEt.data(), d_E.data(), gF.data(), gRr.data(),
                             gmean.data(), grstd.data(), d_cw.data(), d_Wd.data(), d_lw.data(), 0,
                             s.K, s.D, p, c.seed, c.stream);
  expect_close("d dense weight after R = 0", G_wd.to_vector(), g_wd, kReduce);
  expect_close("Et after R = 0", gEt.to_vector(), Et, kReduce);
}
