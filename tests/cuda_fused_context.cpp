// The fused context-aware attention block (Backend::context_block_forward / _backward; CUDA:
// kernels/fused_context.cu) against the CPU backend, whose definition is the composition of the
// primitive ops (src/core/fused_context.cpp). Seeded random inputs; jagged batches with empty
// rows, 1 and 50 queries per row, Nc = 1 .. 80 context rows, D = 1, odd, 64, 100, 128, 256, shapes
// that take the composition fallback (Nc or D too large for shared memory); attention on and off
// (zero queries: uniform softmax), dropout p = 0 and p > 0. Every case first checks for a device
// and otherwise ends as skipped (exit 77).
//
// Tolerance: an element passes when |gpu - cpu| <= tol * (|cpu| + mean|cpu|) (as in
// tests/cuda_backend_ops.cpp), per quantity:
//   1e-4  forward: out, probs, r (dropout mask exact: a wrong mask is off by O(1)), mean, rstd;
//         backward: dX, dC, d ln_w, d ln_b (sums in another order than the CPU's)
//   exact the GPU backward run twice gives the same bits (no atomics: deterministic)
// D = 1: with one channel r - mean is 0, so LayerNorm's input gradient, and with it dX and the
// attention's part of dC, is exactly 0 in real arithmetic; each backend returns its own rounding
// (the CPU's contracted FMAs) times 1/sqrt(eps). Those cases use eps = 1 and an absolute tolerance
// of 1e-6 on dX and dC besides the relative one. (D = 2 is degenerate as well: the normalised pair
// is always (-1, 1); no D = 2 case.)
// The backward of both backends gets the CPU forward's saved probs, r, mean and rstd, so it is
// checked on its own.
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
using Pair = ada_test::BackendPair;

constexpr double kReduce = 1e-4;

struct Case {
  std::vector<int64_t> lens;  // queries per row
  int64_t Nc, D;
  float eps = 1e-12f;  // the model's; D = 1 needs a large one (see the header)
};

void check_case(Pair& P, const Case& cs, bool attention, float p, uint64_t& seed) {
  std::vector<int64_t> qo{0};
  for (int64_t n : cs.lens) qo.push_back(qo.back() + n);
  const int64_t B = int64_t(cs.lens.size()), Nc = cs.Nc, D = cs.D, T = qo.back();
  const float eps = cs.eps;
  const uint64_t rs = rng_stream(RngPurpose::kDropout, 7, uint32_t(seed));
  const uint64_t dseed = 1000 + seed;
  std::string tag = " B=" + std::to_string(B) + " Ntok=" + std::to_string(T) +
                    " Nc=" + std::to_string(Nc) + " D=" + std::to_string(D) +
                    (attention ? " attention" : " no-attention") + " p=" + std::to_string(p);
  INFO(tag);
  const auto X = rnd(size_t(T * D), ++seed), C = rnd(size_t(B * Nc * D), ++seed);
  auto w = rnd(size_t(D), ++seed, 0.5f), b = rnd(size_t(D), ++seed, 0.5f);
  for (auto& v : w) v += 1.0f;
  // forward
  std::vector<float> out(size_t(T * D)), probs(size_t(T * Nc)), r(size_t(T * D)), mean(static_cast<size_t>(T)),
      rstd(static_cast<size_t>(T));
  P.cpu->context_block_forward(out.data(), probs.data(), r.data(), mean.data(), rstd.data(),
                               X.data(), C.data(), w.data(), b.data(), qo.data(), B, Nc, D,
                               attention, p, dseed, rs, eps);
  auto dX = dev(X), dC = dev(C), dw = dev(w), db = dev(b);
  DeviceArray<float> gOut(out.size()), gProbs(probs.size()), gR(r.size()), gMean(mean.size()),
      gRstd(rstd.size());
  P.gpu->context_block_forward(gOut.data(), gProbs.data(), gR.data(), gMean.data(), gRstd.data(),
                               dX.data(), dC.data(), dw.data(), db.data(), qo.data(), B, Nc, D,
                               attention, p, dseed, rs, eps);
  expect_close("out" + tag, gOut.to_vector(), out, kReduce);
  expect_close("probs" + tag, gProbs.to_vector(), probs, kReduce);
  expect_close("r" + tag, gR.to_vector(), r, kReduce);
  expect_close("mean" + tag, gMean.to_vector(), mean, kReduce);
  expect_close("rstd" + tag, gRstd.to_vector(), rstd, kReduce);
  // backward from the CPU's saved intermediates; dX garbage (overwritten), dC / dw / db random (+=)
  const auto g = rnd(out.size(), ++seed);
  std::vector<float> cX(X.size(), 2.f), cC = rnd(C.size(), ++seed), cw = rnd(size_t(D), ++seed),
                                        cb = rnd(size_t(D), ++seed);
  const std::vector<float> dC0 = cC, dw0 = cw, db0 = cb;
  const double abs_tol = D == 1 ? 1e-6 : 0.0;  // see the header
  P.cpu->context_block_backward(cX.data(), cC.data(), cw.data(), cb.data(), g.data(),
                                probs.data(), r.data(), mean.data(), rstd.data(), X.data(),
                                C.data(), w.data(), qo.data(), B, Nc, D, attention, p, dseed, rs);
  auto dg = dev(g), sProbs = dev(probs), sR = dev(r), sMean = dev(mean), sRstd = dev(rstd);
  std::vector<std::vector<float>> runs;
  for (int rep = 0; rep < 2; ++rep) {
    auto gX = dev(std::vector<float>(X.size(), 2.f)), gC = dev(dC0), gw = dev(dw0), gb = dev(db0);
    P.gpu->context_block_backward(gX.data(), gC.data(), gw.data(), gb.data(), dg.data(),
                                  sProbs.data(), sR.data(), sMean.data(), sRstd.data(), dX.data(),
                                  dC.data(), dw.data(), qo.data(), B, Nc, D, attention, p, dseed,
                                  rs);
    std::vector<float> all = gX.to_vector(), vc = gC.to_vector(), vw = gw.to_vector(),
                       vb = gb.to_vector();
    if (rep == 0) {
      expect_close("dX" + tag, all, cX, kReduce, abs_tol);
      expect_close("dC" + tag, vc, cC, kReduce, abs_tol);
      expect_close("d ln_w" + tag, vw, cw, kReduce);
      expect_close("d ln_b" + tag, vb, cb, kReduce);
    }
    all.insert(all.end(), vc.begin(), vc.end());
    all.insert(all.end(), vw.begin(), vw.end());
    all.insert(all.end(), vb.begin(), vb.end());
    runs.push_back(std::move(all));
  }
  CHECK(runs[0] == runs[1]);  // deterministic
}

void run_cases(const std::vector<Case>& cases) {
  require_gpu();
  Pair P;
  uint64_t seed = 50;
  for (const Case& cs : cases)
    for (bool attention : {true, false})
      for (float p : {0.0f, 0.3f}) check_case(P, cs, attention, p, seed);
}

}  // namespace

TEST_CASE("CUDA fused context block: small and odd shapes", "[cuda][fused_context]") {
  run_cases({
      {{1}, 1, 1, 1.0f},          // everything 1
      {{1, 2}, 3, 1, 1.0f},       // D = 1 with several context rows
      {{1}, 1, 3},                // one query and one context row, the model's eps
      {{0, 3, 1, 0, 5}, 7, 33},   // empty rows, odd D (per-element dropout draws), KD = 2
      {{2, 1, 3}, 5, 100},        // D % 4 == 0 but not a multiple of 32, KD = 4
      {{0}, 3, 8},                // no token at all
      {{33, 9}, 3, 32},           // more queries than warps (several groups)
  });
}

// The two kernels' phase clocks (ada::set_cuda_phase_clock, for benchmarks): the forward counts a
// block per sample and group of 16 of its queries (3 + 1 + 5 + 33 queries: 1 + 1 + 1 + 3 blocks)
// and their queries, the backward (run twice by check_case) each sample with queries and its
// groups; the phases are sane non-negative cycle counts and the results still the CPU's.
TEST_CASE("CUDA fused context block: the phase clocks count blocks, samples and queries, and change no result",
          "[cuda][fused_context]") {
  require_gpu();
  Pair P;
  uint64_t seed = 900;
  {
    const ada_test::PhaseClockOn on;
    check_case(P, {{0, 3, 1, 0, 5, 33}, 7, 33}, true, 0.3f, seed);
    const PhaseClockReading f = cuda_phase_clock("context_block_forward");
    CHECK(f.units == 6);
    CHECK(ada_test::reading_of(f, "queries") == Approx(42.0 / 6));
    const PhaseClockReading b = cuda_phase_clock("context_block_backward");
    CHECK(b.units == 2 * 4);
    CHECK(ada_test::reading_of(b, "rounds") == Approx(2.0 * (1 + 1 + 1 + 3) / 8));
    for (const PhaseClockReading* r : {&f, &b}) {
      double total = 0;
      for (size_t i = 0; i < r->names.size(); ++i) {
        const std::string& nm = r->names[i];
        if (nm == "queries" || nm == "rounds" || nm == "max_block") continue;  // counts, the maximum
        CHECK(r->means[i] >= 0);
        CHECK(r->means[i] < 1e12);
        total += r->means[i];
      }
      CHECK(total > 0);
      CHECK(ada_test::reading_of(*r, "max_block") >= total);  // the slowest block: at least the mean
    }
  }
  CHECK(cuda_phase_clock("context_block_backward").units == 0);
}

TEST_CASE("CUDA fused context block: Beauty maxima", "[cuda][fused_context]") {
  run_cases({
      {{50, 1, 0, 17}, 80, 64},  // 50 queries (an empty history's padding), Nc = 80 (round 4)
      {{4, 50}, 20, 64},         // round 1
      {{3, 2}, 13, 128},         // D = 128
      {{2}, 3, 256},             // D = 256 (KD = 8)
      {{5, 9}, 1500, 8},         // a large context: fewer warps per block (2) fit shared memory
  });
}

TEST_CASE("CUDA fused context block: composition fallback", "[cuda][fused_context]") {
  run_cases({
      {{2, 0, 1}, 3, 300},  // D above the fused kernel's maximum
      {{1, 2}, 4000, 8},    // a context too large for shared memory (> 227 KiB)
  });
}
