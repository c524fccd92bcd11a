// The CUDA Backend<float> against the CPU backend (the specification), op by op, forward and
// backward, on seeded random inputs. Every case first checks for a device and otherwise ends as
// skipped (exit 77), never as passed.
//
// Tolerance: an element passes when |gpu - cpu| <= tol * (|cpu| + mean|cpu|) (the mean term keeps
// values that cancel to near 0 from demanding impossible relative accuracy). Stated per op below:
//   exact (0)      dropout masks and values, add, scale, gather/scatter, concat/split, embedding
//   forward 1e-5           elementwise math with expf/erff/tanhf (activations, GRU, Adam),
//   embedding backward
//                  (atomicAdd order), sampled-BCE loss
//   1e-4           reductions and products: gemm/linear (cuBLAS vs OpenBLAS), LayerNorm, attention,
//                  context attention, filter (DFT sums), sampled-BCE gradients
//   1e-2           forward attention outputs/probabilities of all_masked sequences only (their
//   scores
//                  sit on float32's grid around -10000; see check_attention)
//   1e-10          sum_squares (double accumulation)
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"
#include "ada/rng.hpp"
#include "ada/tensor.hpp"
#include "ada/topk.hpp"
#include "tests/cuda_test_util.hpp"

using namespace ada;

namespace {

using ada_test::dev;
using ada_test::require_gpu;
using ada_test::sz;
using Pair = ada_test::BackendPair;

constexpr double kExact = 0.0, kElem = 1e-5, kReduce = 1e-4;

// Uniform in [-scale, scale) from the counter RNG (key 1234, stream = seed).
std::vector<float> rnd(size_t n, uint64_t seed, float scale = 1.0f) { return ada_test::rnd(n, seed, scale, 0.0f, 1234); }
std::vector<int32_t> rnd_ids(size_t n, uint64_t seed, int32_t hi) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = int32_t(u32_to_range(random_u32(99, seed, i), uint32_t(hi)));
  return v;
}

// tol_each (optional): a tolerance per element instead of tol. A non-finite CPU value must be matched.
void expect_close(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu, double tol,
                  const std::vector<double>* tol_each = nullptr) {
  ada_test::expect_close(what, gpu, cpu, tol, 0.0, tol_each, ada_test::NonFinite::kMatch);
}

// Jagged layout with its storage.
struct Layout {
  std::vector<int64_t> off;
  std::vector<uint8_t> masked;
  JaggedLayout lay() const {
    JaggedLayout L;
    L.num_seqs = int64_t(masked.size());
    L.num_tokens = off.back();
    L.tok_offsets = off.data();
    L.all_masked = masked.data();
    return L;
  }
};
Layout make_layout(const std::vector<int64_t>& lens, const std::vector<uint8_t>& masked) {
  Layout l;
  l.off.push_back(0);
  for (int64_t n : lens) l.off.push_back(l.off.back() + n);
  l.masked = masked;
  return l;
}
// S sequences with lengths 1..maxlen (always including 1 and maxlen), every 5th all masked.
Layout random_layout(int64_t S, int64_t maxlen, uint64_t seed) {
  std::vector<int64_t> lens;
  std::vector<uint8_t> masked;
  for (int64_t s = 0; s < S; ++s) {
    int64_t n = 1 + int64_t(u32_to_range(random_u32(7, seed, uint64_t(s)), uint32_t(maxlen)));
    if (s == 0) n = 1;
    if (s == 1) n = maxlen;
    lens.push_back(n);
    masked.push_back(uint8_t(s % 5 == 3 || (s == 2 && S > 2)));
  }
  return make_layout(lens, masked);
}

}  // namespace

TEST_CASE("CUDA make_cuda_backend and DeviceArray round trips", "[cuda]") {
  require_gpu();
  auto be = make_cuda_backend(0);
  REQUIRE(std::string(be->name()) == "cuda");
  REQUIRE_THROWS_AS(make_cuda_backend(cuda_device_count() + 3), ada::Error);
  const std::vector<int32_t> a = {1, -2, 3, 2147483647};
  const std::vector<int64_t> b = {int64_t(1) << 40, -5};
  const std::vector<uint8_t> c = {0, 1, 255};
  const std::vector<float> d = rnd(1001, 1);
  REQUIRE(dev(a).to_vector() == a);
  REQUIRE(dev(b).to_vector() == b);
  REQUIRE(dev(c).to_vector() == c);
  REQUIRE(dev(d).to_vector() == d);
  DeviceArray<float> z(17);
  z.fill_zero();
  REQUIRE(z.to_vector() == std::vector<float>(17, 0.0f));
  DeviceArray<float> moved = std::move(z);
  REQUIRE(moved.size() == 17);
  REQUIRE(z.size() == 0);
  DeviceArray<float> empty(0);
  REQUIRE(empty.data() == nullptr);
}

TEST_CASE("CUDA gemm matches the CPU in every transpose combination", "[cuda]") {
  require_gpu();
  Pair P;
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 65, 129}, {64, 1, 200}, {1, 300, 64}};
  uint64_t seed = 10;
  for (const auto& sh : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const int64_t M = sh[0], N = sh[1], K = sh[2];
        auto A = rnd(sz(M * K), ++seed), B = rnd(sz(K * N), ++seed), C = rnd(sz(M * N), ++seed);
        auto dA = dev(A), dB = dev(B), dC = dev(C);
        P.cpu->gemm(ta, tb, M, N, K, 0.7f, A.data(), B.data(), 0.3f, C.data());
        P.gpu->gemm(ta, tb, M, N, K, 0.7f, dA.data(), dB.data(), 0.3f, dC.data());
        expect_close("gemm " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                         std::to_string(K) + " ta=" + std::to_string(ta) +
                         " tb=" + std::to_string(tb),
                     dC.to_vector(), C, kReduce);
      }
}

TEST_CASE("CUDA linear forward and backward", "[cuda]") {
  require_gpu();
  Pair P;
  const int64_t shapes[][3] = {{1, 64, 64}, {37, 3, 5}, {1000, 64, 64}, {5, 1, 1}};
  uint64_t seed = 100;
  for (const auto& sh : shapes)
    for (int with_bias = 0; with_bias < 2; ++with_bias) {
      const int64_t M = sh[0], I = sh[1], O = sh[2];
      const std::string tag = " M=" + std::to_string(M) + " I=" + std::to_string(I) +
                              " O=" + std::to_string(O) + " bias=" + std::to_string(with_bias);
      auto in = rnd(sz(M * I), ++seed), W = rnd(sz(O * I), ++seed), b = rnd(sz(O), ++seed);
      std::vector<float> out(sz(M * O), 5.f);
      auto dIn = dev(in), dW = dev(W), db = dev(b), dOut = dev(out);
      P.cpu->linear_forward(out.data(), in.data(), W.data(), with_bias ? b.data() : nullptr, M, I,
                            O);
      P.gpu->linear_forward(dOut.data(), dIn.data(), dW.data(), with_bias ? db.data() : nullptr, M,
                            I, O);
      expect_close("linear_forward" + tag, dOut.to_vector(), out, kReduce);

      auto g = rnd(sz(M * O), ++seed);
      auto din = rnd(sz(M * I), ++seed), gW = rnd(sz(O * I), ++seed), gb = rnd(sz(O), ++seed);
      auto dg = dev(g), ddin = dev(din), dgW = dev(gW), dgb = dev(gb);
      for (int acc = 0; acc < 2; ++acc) {
        P.cpu->linear_backward(din.data(), gW.data(), with_bias ? gb.data() : nullptr, g.data(),
                               in.data(), W.data(), M, I, O, acc);
        P.gpu->linear_backward(ddin.data(), dgW.data(), with_bias ? dgb.data() : nullptr, dg.data(),
                               dIn.data(), dW.data(), M, I, O, acc);
        expect_close("linear_backward din acc=" + std::to_string(acc) + tag, ddin.to_vector(), din,
                     kReduce);
        expect_close("linear_backward dW" + tag, dgW.to_vector(), gW, kReduce);
        expect_close("linear_backward db" + tag, dgb.to_vector(), gb, kReduce);
      }
      // din null: only the parameter gradients
      P.cpu->linear_backward(nullptr, gW.data(), gb.data(), g.data(), in.data(), W.data(), M, I, O,
                             false);
      P.gpu->linear_backward(nullptr, dgW.data(), dgb.data(), dg.data(), dIn.data(), dW.data(), M,
                             I, O, false);
      expect_close("linear_backward dW (din null)" + tag, dgW.to_vector(), gW, kReduce);
      expect_close("linear_backward db (din null)" + tag, dgb.to_vector(), gb, kReduce);
    }
}

TEST_CASE("CUDA layernorm forward and backward", "[cuda]") {
  require_gpu();
  Pair P;
  const int64_t shapes[][2] = {{1, 64}, {13, 5}, {300, 64}, {7, 100}, {3, 1}};
  uint64_t seed = 200;
  for (const auto& sh : shapes) {
    const int64_t M = sh[0], C = sh[1];
    const std::string tag = " M=" + std::to_string(M) + " C=" + std::to_string(C);
    auto in = rnd(sz(M * C), ++seed, 3.f), w = rnd(sz(C), ++seed), b = rnd(sz(C), ++seed);
    for (auto& x : in) x += 1.5f;  // a mean away from 0
    std::vector<float> out(sz(M * C)), mean(sz(M)), rstd(sz(M));
    auto dIn = dev(in), dw = dev(w), db = dev(b), dOut = dev(out), dMean = dev(mean),
         dRstd = dev(rstd);
    const float eps = 1e-12f;
    P.cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), in.data(), w.data(), b.data(), M,
                             C, eps);
    P.gpu->layernorm_forward(dOut.data(), dMean.data(), dRstd.data(), dIn.data(), dw.data(),
                             db.data(), M, C, eps);
    expect_close("layernorm out" + tag, dOut.to_vector(), out, kReduce);
    expect_close("layernorm mean" + tag, dMean.to_vector(), mean, kReduce);
    if (C > 1) expect_close("layernorm rstd" + tag, dRstd.to_vector(), rstd, kReduce);
    if (C == 1)
      continue;  // variance 0: rstd = 1/sqrt(eps) amplifies rounding noise, nothing to compare
    // backward from the CPU's saved statistics on both sides
    auto g = rnd(sz(M * C), ++seed), gw = rnd(sz(C), ++seed), gb = rnd(sz(C), ++seed);
    std::vector<float> din(sz(M * C));
    auto dg = dev(g), dgw = dev(gw), dgb = dev(gb), ddin = dev(din);
    dMean.upload(mean.data(), mean.size());
    dRstd.upload(rstd.data(), rstd.size());
    P.cpu->layernorm_backward(din.data(), gw.data(), gb.data(), g.data(), in.data(), w.data(),
                              mean.data(), rstd.data(), M, C);
    P.gpu->layernorm_backward(ddin.data(), dgw.data(), dgb.data(), dg.data(), dIn.data(), dw.data(),
                              dMean.data(), dRstd.data(), M, C);
    expect_close("layernorm din" + tag, ddin.to_vector(), din, kReduce);
    expect_close("layernorm dw" + tag, dgw.to_vector(), gw, kReduce);
    expect_close("layernorm db" + tag, dgb.to_vector(), gb, kReduce);
  }
}

TEST_CASE("CUDA embedding forward and backward (padding row, positions)", "[cuda]") {
  require_gpu();
  Pair P;
  const int64_t N = 50, Pn = 51;
  uint64_t seed = 300;
  for (int64_t M : {1, 7, 2000})
    for (int64_t D : {1, 3, 64}) {
      const std::string tag = " M=" + std::to_string(M) + " D=" + std::to_string(D);
      auto table = rnd(sz(N * D), ++seed), pt = rnd(sz(Pn * D), ++seed);
      auto ids = rnd_ids(sz(M), ++seed, int32_t(N)), pos = rnd_ids(sz(M), ++seed, int32_t(Pn));
      ids[0] = 0;  // padding
      auto dT = dev(table), dP = dev(pt);
      auto dIds = dev(ids), dPos = dev(pos);
      for (int with_pos = 0; with_pos < 2; ++with_pos) {
        std::vector<float> out(sz(M * D));
        DeviceArray<float> dOut(out.size());
        P.cpu->embedding_forward(out.data(), ids.data(), table.data(), pos.data(),
                                 with_pos ? pt.data() : nullptr, M, D);
        P.gpu->embedding_forward(dOut.data(), dIds.data(), dT.data(), dPos.data(),
                                 with_pos ? dP.data() : nullptr, M, D);
        expect_close("embedding_forward pos=" + std::to_string(with_pos) + tag, dOut.to_vector(),
                     out, kExact);
      }
      auto g = rnd(sz(M * D), ++seed);
      auto gt = rnd(sz(N * D), ++seed), gp = rnd(sz(Pn * D), ++seed);
      auto dg = dev(g), dgt = dev(gt), dgp = dev(gp);
      P.cpu->embedding_backward(gt.data(), gp.data(), g.data(), ids.data(), pos.data(), M, D);
      P.gpu->embedding_backward(dgt.data(), dgp.data(), dg.data(), dIds.data(), dPos.data(), M, D);
      expect_close("embedding_backward dtable" + tag, dgt.to_vector(), gt, kElem);
      expect_close("embedding_backward dpos" + tag, dgp.to_vector(), gp, kElem);
      // null table gradient: only positions
      P.cpu->embedding_backward(nullptr, gp.data(), g.data(), ids.data(), pos.data(), M, D);
      P.gpu->embedding_backward(nullptr, dgp.data(), dg.data(), dIds.data(), dPos.data(), M, D);
      expect_close("embedding_backward dpos only" + tag, dgp.to_vector(), gp, kElem);
    }
}

TEST_CASE("CUDA activations forward and backward", "[cuda]") {
  require_gpu();
  Pair P;
  uint64_t seed = 400;
  for (Activation a : {Activation::kSilu, Activation::kGelu, Activation::kRelu})
    for (int64_t n : {1, 1001, 100000}) {
      const std::string tag = " act=" + std::to_string(int(a)) + " n=" + std::to_string(n);
      auto in = rnd(sz(n), ++seed, 6.f), g = rnd(sz(n), ++seed);
      in[0] = 0.f;
      std::vector<float> out(sz(n)), din(sz(n));
      auto dIn = dev(in), dg = dev(g);
      DeviceArray<float> dOut(sz(n)), dDin(sz(n));
      P.cpu->activation_forward(out.data(), in.data(), n, a);
      P.gpu->activation_forward(dOut.data(), dIn.data(), n, a);
      expect_close("activation_forward" + tag, dOut.to_vector(), out, kElem);
      P.cpu->activation_backward(din.data(), g.data(), in.data(), n, a);
      P.gpu->activation_backward(dDin.data(), dg.data(), dIn.data(), n, a);
      expect_close("activation_backward" + tag, dDin.to_vector(), din, kElem);
    }
}

TEST_CASE("CUDA dropout masks are the CPU's bit for bit", "[cuda]") {
  require_gpu();
  Pair P;
  uint64_t seed = 500;
  for (int64_t n : {1, 3, 4, 5, 1023, 100001})
    for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
      const std::string tag = " n=" + std::to_string(n) + " p=" + std::to_string(p);
      const uint64_t rs = 42 + uint64_t(n), st = rng_stream(RngPurpose::kDropout, 3, 7);
      auto in = rnd(sz(n), ++seed);
      std::vector<float> out(sz(n));
      auto dIn = dev(in);
      DeviceArray<float> dOut(sz(n));
      P.cpu->dropout_forward(out.data(), in.data(), n, p, rs, st);
      P.gpu->dropout_forward(dOut.data(), dIn.data(), n, p, rs, st);
      REQUIRE(dOut.to_vector() == out);
      // in place, and backward (the same mask on the gradient)
      P.cpu->dropout_backward(in.data(), in.data(), n, p, rs, st);
      P.gpu->dropout_backward(dIn.data(), dIn.data(), n, p, rs, st);
      INFO(tag);
      REQUIRE(dIn.to_vector() == in);
    }
}

TEST_CASE("CUDA add, scale, gather_last and scatter_last_add", "[cuda]") {
  require_gpu();
  Pair P;
  for (int64_t n : {1, 777, 65537}) {
    auto y = rnd(sz(n), 600 + uint64_t(n)), x = rnd(sz(n), 601 + uint64_t(n));
    auto dy = dev(y), dx = dev(x);
    P.cpu->add_inplace(y.data(), x.data(), n);
    P.gpu->add_inplace(dy.data(), dx.data(), n);
    REQUIRE(dy.to_vector() == y);
    P.cpu->scale(y.data(), n, 0.37f);
    P.gpu->scale(dy.data(), n, 0.37f);
    REQUIRE(dy.to_vector() == y);
  }
  const Layout l = random_layout(37, 50, 610);
  const JaggedLayout L = l.lay();
  for (int64_t D : {1, 64}) {
    auto in = rnd(sz(L.num_tokens * D), 620 + uint64_t(D));
    std::vector<float> out(sz(L.num_seqs * D));
    auto dIn = dev(in);
    DeviceArray<float> dOut(out.size());
    P.cpu->gather_last(out.data(), in.data(), L, D);
    P.gpu->gather_last(dOut.data(), dIn.data(), L, D);
    REQUIRE(dOut.to_vector() == out);
    auto g = rnd(out.size(), 630 + uint64_t(D));
    auto dg = dev(g);
    P.cpu->scatter_last_add(in.data(), g.data(), L, D);
    P.gpu->scatter_last_add(dIn.data(), dg.data(), L, D);
    REQUIRE(dIn.to_vector() == in);
  }
}

namespace {
// Scores of an all_masked sequence carry the -10000 of the reference's mask, so float32 rounds them
// to a grid 2^-10 apart: a last-bit difference in a dot product (FMA contraction differs between
// nvcc and gcc) can move a score by one grid step, which changes that sequence's probabilities by
// about 1e-3 relative. Elements of all_masked sequences are therefore held to this looser
// tolerance; every other element to kReduce.
constexpr double kMaskedGrid = 1e-2;

void check_attention(Pair& P, const Layout& l, int H, int hd, bool last_only, float dropout,
                     uint64_t seed) {
  AttentionShape sh;
  sh.layout = l.lay();
  sh.heads = H;
  sh.head_dim = hd;
  sh.last_only = last_only;
  sh.dropout = dropout;
  sh.seed = 77;
  sh.stream = rng_stream(RngPurpose::kDropout, 5, 2);
  const JaggedLayout& L = sh.layout;
  const int64_t S = L.num_seqs, T = L.num_tokens, Q = sh.num_queries(), W = int64_t(H) * hd;
  const std::string tag = " S=" + std::to_string(S) + " H=" + std::to_string(H) +
                          " hd=" + std::to_string(hd) + " last_only=" + std::to_string(last_only) +
                          " dropout=" + std::to_string(dropout);
  // per-element tolerances: query rows, token rows and probabilities of each sequence
  std::vector<double> tol_q, tol_t, tol_p;
  for (int64_t s = 0; s < S; ++s) {
    const double t = L.all_masked[s] ? kMaskedGrid : kReduce;
    const int64_t n = L.tok_offsets[s + 1] - L.tok_offsets[s];
    tol_q.insert(tol_q.end(), sz((last_only ? 1 : n) * W), t);
    tol_t.insert(tol_t.end(), sz(n * W), t);
    tol_p.insert(tol_p.end(), sz(int64_t(H) * sh.seq_prob_count(s)), t);
  }
  auto q = rnd(sz(Q * W), seed + 1, 2.f), k = rnd(sz(T * W), seed + 2, 2.f),
       v = rnd(sz(T * W), seed + 3);
  std::vector<float> out(sz(Q * W)), probs(sz(sh.prob_size()));
  auto dq_ = dev(q), dk_ = dev(k), dv_ = dev(v);
  DeviceArray<float> dOut(out.size()), dProbs(probs.size());
  P.cpu->attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), sh);
  P.gpu->attention_forward(dOut.data(), dProbs.data(), dq_.data(), dk_.data(), dv_.data(), sh);
  expect_close("attention out" + tag, dOut.to_vector(), out, kReduce, &tol_q);
  expect_close("attention probs" + tag, dProbs.to_vector(), probs, kReduce, &tol_p);
  // backward from the CPU's probabilities on both sides; dk, dv accumulate onto random values
  dProbs.upload(probs.data(), probs.size());
  auto g = rnd(sz(Q * W), seed + 4);
  std::vector<float> dq(sz(Q * W), 9.f);
  auto dk = rnd(sz(T * W), seed + 5), dv = rnd(sz(T * W), seed + 6);
  auto dg = dev(g), ddq = dev(dq), ddk = dev(dk), ddv = dev(dv);
  P.cpu->attention_backward(dq.data(), dk.data(), dv.data(), g.data(), probs.data(), q.data(),
                            k.data(), v.data(), sh);
  P.gpu->attention_backward(ddq.data(), ddk.data(), ddv.data(), dg.data(), dProbs.data(),
                            dq_.data(), dk_.data(), dv_.data(), sh);
  // the backward reads the same probabilities on both sides: no grid effect, kReduce everywhere
  expect_close("attention dq" + tag, ddq.to_vector(), dq, kReduce);
  expect_close("attention dk" + tag, ddk.to_vector(), dk, kReduce);
  expect_close("attention dv" + tag, ddv.to_vector(), dv, kReduce);
}
}  // namespace

TEST_CASE("CUDA jagged causal attention, all_masked sequences, last_only, dropout", "[cuda]") {
  require_gpu();
  Pair P;
  const Layout big = random_layout(64, 50, 700);
  const Layout one = make_layout({1}, {0});
  const Layout one_masked = make_layout({1, 3}, {1, 1});
  const Layout long_seq = make_layout({50, 49, 33, 2}, {0, 1, 0, 0});
  uint64_t seed = 710;
  for (bool last_only : {false, true})
    for (float p : {0.0f, 0.2f}) {
      check_attention(P, big, 16, 4, last_only, p, seed += 10);
      check_attention(P, one, 16, 4, last_only, p, seed += 10);
      check_attention(P, one_masked, 2, 3, last_only, p, seed += 10);
      check_attention(P, long_seq, 1, 37, last_only, p,
                      seed += 10);  // head_dim > 32, not a multiple of 8
      check_attention(P, long_seq, 3, 1, last_only, p, seed += 10);
    }
}

// The thread-per-pair attention kernels' phase clocks (ada::set_cuda_phase_clock, for benchmarks):
// every sequence of every call counted (4 + 2 sequences through check_attention's forward and
// backward), the phases sane non-negative cycle counts, the slowest block at least the mean one, the
// results still the CPU's. (head_dim 37 takes the warp kernels, which have no clock: not counted.)
TEST_CASE("CUDA attention: the pair kernels' phase clocks count every sequence and change no result", "[cuda]") {
  require_gpu();
  Pair P;
  {
    const ada_test::PhaseClockOn on;
    check_attention(P, make_layout({50, 49, 33, 2}, {0, 1, 0, 0}), 16, 4, false, 0.2f, 950);
    check_attention(P, make_layout({1, 3}, {1, 1}), 2, 3, true, 0.0f, 960);
    check_attention(P, make_layout({50, 49, 33, 2}, {0, 1, 0, 0}), 1, 37, false, 0.0f, 970);
    for (const char* kernel : {"attention_forward", "attention_backward"}) {
      INFO(kernel);
      const PhaseClockReading r = cuda_phase_clock(kernel);
      CHECK(r.units == 6);
      CHECK(r.unit == "sequence");
      double total = 0;
      for (size_t i = 0; i + 1 < r.names.size(); ++i) {  // the phases; the last slot is max_block
        CHECK(r.means[i] >= 0);
        CHECK(r.means[i] < 1e12);
        total += r.means[i];
      }
      CHECK(total > 0);
      CHECK(ada_test::reading_of(r, "max_block") >= total);
    }
  }
  CHECK(cuda_phase_clock("attention_forward").units == 0);
}

TEST_CASE("CUDA sampled BCE loss and gradients (clamped logs, padding row)", "[cuda]") {
  require_gpu();
  Pair P;
  const int64_t N = 500;
  uint64_t seed = 800;
  const int64_t shapes[][3] = {{1, 1, 1}, {37, 101, 64}, {256, 101, 64}, {5, 3, 7}};
  for (const auto& s3 : shapes)
    for (int with_bias = 0; with_bias < 2; ++with_bias) {
      const int64_t B = s3[0], C = s3[1], D = s3[2];
      const std::string tag = " B=" + std::to_string(B) + " C=" + std::to_string(C) +
                              " D=" + std::to_string(D) + " bias=" + std::to_string(with_bias);
      auto u = rnd(sz(B * D), ++seed, 0.5f), table = rnd(sz(N * D), ++seed, 0.5f);
      auto bias = rnd(sz(N), ++seed);
      // saturated sigmoids both ways (the clamp at -100 and the 1e-12 gradient floor)
      for (int64_t j = 1; j < N; j += 7) bias[sz(j)] = (j % 2) ? 60.f : -60.f;
      auto items = rnd_ids(sz(B * C), ++seed, int32_t(N));
      items[0] = 0;
      if (B * C > 2) items[2] = items[1];  // a duplicate
      auto du_ = dev(u), dT = dev(table), dBias = dev(bias);
      auto dItems = dev(items);
      const double weight = 0.3;
      const float* cb = with_bias ? bias.data() : nullptr;
      const float* gb = with_bias ? dBias.data() : nullptr;
      // loss only
      std::vector<float> logits(sz(B * C));
      DeviceArray<float> dLogits(logits.size());
      const double l_cpu = P.cpu->sampled_bce(logits.data(), nullptr, nullptr, nullptr, u.data(),
                                              table.data(), cb, items.data(), B, C, D, weight);
      const double l_gpu = P.gpu->sampled_bce(dLogits.data(), nullptr, nullptr, nullptr, du_.data(),
                                              dT.data(), gb, dItems.data(), B, C, D, weight);
      INFO("loss" << tag << ": gpu " << l_gpu << " cpu " << l_cpu);
      CHECK(std::fabs(l_gpu - l_cpu) <= kElem * std::fabs(l_cpu));
      expect_close("sampled_bce logits" + tag, dLogits.to_vector(), logits, kReduce);
      // with gradients
      std::vector<float> du(sz(B * D), 3.f);
      auto dtable = rnd(sz(N * D), ++seed), dbias = rnd(sz(N), ++seed);
      auto ddu = dev(du), ddtable = dev(dtable), ddbias = dev(dbias);
      const double l2_cpu = P.cpu->sampled_bce(logits.data(), du.data(), dtable.data(),
                                               with_bias ? dbias.data() : nullptr, u.data(),
                                               table.data(), cb, items.data(), B, C, D, weight);
      const double l2_gpu = P.gpu->sampled_bce(dLogits.data(), ddu.data(), ddtable.data(),
                                               with_bias ? ddbias.data() : nullptr, du_.data(),
                                               dT.data(), gb, dItems.data(), B, C, D, weight);
      CHECK(std::fabs(l2_gpu - l2_cpu) <= kElem * std::fabs(l2_cpu));
      expect_close("sampled_bce dlogits" + tag, dLogits.to_vector(), logits, kReduce);
      expect_close("sampled_bce du" + tag, ddu.to_vector(), du, kReduce);
      expect_close("sampled_bce dtable" + tag, ddtable.to_vector(), dtable, kReduce);
      expect_close("sampled_bce dbias" + tag, ddbias.to_vector(), dbias, kReduce);
    }
}

TEST_CASE("CUDA learnable filter forward and backward for K in {1, 2, 5, 20, 32}", "[cuda]") {
  require_gpu();
  Pair P;
  uint64_t seed = 900;
  for (int64_t K : {1, 2, 5, 20, 32})
    for (int64_t D : {1, 3, 64})
      for (int64_t R : {1, 33, 70}) {
        const std::string tag =
            " K=" + std::to_string(K) + " D=" + std::to_string(D) + " R=" + std::to_string(R);
        const int64_t Kf = K / 2 + 1;
        auto in = rnd(sz(R * K * D), ++seed), W = rnd(sz(Kf * D * 2), ++seed);
        std::vector<float> out(in.size());
        auto dIn = dev(in), dW = dev(W);
        DeviceArray<float> dOut(out.size());
        P.cpu->filter_forward(out.data(), in.data(), W.data(), R, K, D);
        P.gpu->filter_forward(dOut.data(), dIn.data(), dW.data(), R, K, D);
        expect_close("filter_forward" + tag, dOut.to_vector(), out, kReduce);
        // in place
        auto dInPlace = dev(in);
        P.gpu->filter_forward(dInPlace.data(), dInPlace.data(), dW.data(), R, K, D);
        expect_close("filter_forward in place" + tag, dInPlace.to_vector(), out, kReduce);
        // backward: dW accumulates onto random values; din overwrites (also in place over dout)
        auto g = rnd(in.size(), ++seed), gW = rnd(W.size(), ++seed);
        std::vector<float> din(in.size(), 4.f);
        auto dg = dev(g), dgW = dev(gW), ddin = dev(din);
        P.cpu->filter_backward(din.data(), gW.data(), g.data(), in.data(), W.data(), R, K, D);
        P.gpu->filter_backward(ddin.data(), dgW.data(), dg.data(), dIn.data(), dW.data(), R, K, D);
        expect_close("filter_backward din" + tag, ddin.to_vector(), din, kReduce);
        expect_close("filter_backward dW" + tag, dgW.to_vector(), gW, kReduce);
        auto dgW2 = dev(gW);
        P.gpu->filter_backward(dg.data(), dgW2.data(), dg.data(), dIn.data(), dW.data(), R, K, D);
        expect_close("filter_backward din in place" + tag, dg.to_vector(), din, kReduce);
      }
}

TEST_CASE("CUDA context attention forward and backward, rows without queries", "[cuda]") {
  require_gpu();
  Pair P;
  uint64_t seed = 1000;
  for (int64_t Nc : {1, 7, 80})
    for (int64_t D : {1, 64, 65}) {
      const std::vector<int64_t> counts = {3, 0, 1, 50, 0, 17, 2};
      std::vector<int64_t> qo = {0};
      for (int64_t c : counts) qo.push_back(qo.back() + c);
      const int64_t B = int64_t(counts.size()), TQ = qo.back();
      const std::string tag = " Nc=" + std::to_string(Nc) + " D=" + std::to_string(D);
      auto X = rnd(sz(TQ * D), ++seed, 2.f), Cx = rnd(sz(B * Nc * D), ++seed, 2.f);
      std::vector<float> out(sz(TQ * D)), probs(sz(TQ * Nc));
      auto dX = dev(X), dC = dev(Cx);
      DeviceArray<float> dOut(out.size()), dProbs(probs.size());
      P.cpu->context_attention_forward(out.data(), probs.data(), X.data(), Cx.data(), qo.data(), B,
                                       Nc, D);
      P.gpu->context_attention_forward(dOut.data(), dProbs.data(), dX.data(), dC.data(), qo.data(),
                                       B, Nc, D);
      expect_close("context_attention out" + tag, dOut.to_vector(), out, kReduce);
      expect_close("context_attention probs" + tag, dProbs.to_vector(), probs, kReduce);
      dProbs.upload(probs.data(), probs.size());
      auto g = rnd(out.size(), ++seed), gC = rnd(Cx.size(), ++seed);
      std::vector<float> gX(X.size(), 2.f);
      auto dg = dev(g), dgC = dev(gC), dgX = dev(gX);
      P.cpu->context_attention_backward(gX.data(), gC.data(), g.data(), probs.data(), X.data(),
                                        Cx.data(), qo.data(), B, Nc, D);
      P.gpu->context_attention_backward(dgX.data(), dgC.data(), dg.data(), dProbs.data(), dX.data(),
                                        dC.data(), qo.data(), B, Nc, D);
      expect_close("context_attention dX" + tag, dgX.to_vector(), gX, kReduce);
      expect_close("context_attention dC" + tag, dgC.to_vector(), gC, kReduce);
    }
}

TEST_CASE("CUDA GRU cell forward and backward", "[cuda]") {
  require_gpu();
  Pair P;
  uint64_t seed = 1100;
  for (int64_t B : {1, 37})
    for (int64_t D : {1, 64}) {
      const std::string tag = " B=" + std::to_string(B) + " D=" + std::to_string(D);
      auto gi = rnd(sz(B * 3 * D), ++seed, 2.f), gh = rnd(sz(B * 3 * D), ++seed, 2.f),
           hp = rnd(sz(B * D), ++seed);
      std::vector<float> hn(sz(B * D)), gates(sz(B * 3 * D));
      auto dgi = dev(gi), dgh = dev(gh), dhp = dev(hp);
      DeviceArray<float> dhn(hn.size()), dgates(gates.size());
      P.cpu->gru_cell_forward(hn.data(), gates.data(), gi.data(), gh.data(), hp.data(), B, D);
      P.gpu->gru_cell_forward(dhn.data(), dgates.data(), dgi.data(), dgh.data(), dhp.data(), B, D);
      expect_close("gru h_new" + tag, dhn.to_vector(), hn, kElem);
      expect_close("gru gates" + tag, dgates.to_vector(), gates, kElem);
      dgates.upload(gates.data(), gates.size());
      auto dh = rnd(hn.size(), ++seed);
      std::vector<float> d_gi(gi.size()), d_gh(gh.size()), d_hp(hp.size());
      auto ddh = dev(dh);
      DeviceArray<float> dd_gi(d_gi.size()), dd_gh(d_gh.size()), dd_hp(d_hp.size());
      P.cpu->gru_cell_backward(d_gi.data(), d_gh.data(), d_hp.data(), dh.data(), gates.data(),
                               gh.data(), hp.data(), B, D);
      P.gpu->gru_cell_backward(dd_gi.data(), dd_gh.data(), dd_hp.data(), ddh.data(), dgates.data(),
                               dgh.data(), dhp.data(), B, D);
      expect_close("gru d_gi" + tag, dd_gi.to_vector(), d_gi, kElem);
      expect_close("gru d_gh" + tag, dd_gh.to_vector(), d_gh, kElem);
      expect_close("gru d_hprev" + tag, dd_hp.to_vector(), d_hp, kElem);
    }
}

TEST_CASE("CUDA concat_cols and split_cols_add", "[cuda]") {
  require_gpu();
  Pair P;
  uint64_t seed = 1200;
  const int64_t shapes[][3] = {{1, 1, 1}, {37, 64, 64}, {5, 3, 0}, {9, 0, 4}};
  for (const auto& s3 : shapes) {
    const int64_t M = s3[0], Da = s3[1], Db = s3[2];
    auto a = rnd(sz(M * Da), ++seed), b = rnd(sz(M * Db), ++seed);
    std::vector<float> out(sz(M * (Da + Db)));
    auto da_ = dev(a), db_ = dev(b);
    DeviceArray<float> dOut(out.size());
    P.cpu->concat_cols(out.data(), a.data(), b.data(), M, Da, Db);
    P.gpu->concat_cols(dOut.data(), da_.data(), db_.data(), M, Da, Db);
    REQUIRE(dOut.to_vector() == out);
    for (int which = 0; which < 3; ++which) {  // both, a only, b only
      auto ga = rnd(a.size(), ++seed), gb = rnd(b.size(), ++seed);
      auto dga = dev(ga), dgb = dev(gb);
      P.cpu->split_cols_add(which != 2 ? ga.data() : nullptr, which != 1 ? gb.data() : nullptr,
                            out.data(), M, Da, Db);
      P.gpu->split_cols_add(which != 2 ? dga.data() : nullptr, which != 1 ? dgb.data() : nullptr,
                            dOut.data(), M, Da, Db);
      REQUIRE(dga.to_vector() == ga);
      REQUIRE(dgb.to_vector() == gb);
    }
  }
}

TEST_CASE("CUDA sum_squares in double", "[cuda]") {
  require_gpu();
  Pair P;
  for (int64_t n : {1, 1000, 3000001}) {
    auto x = rnd(sz(n), 1300 + uint64_t(n), 3.f);
    auto dx = dev(x);
    const double c = P.cpu->sum_squares(x.data(), n), g = P.gpu->sum_squares(dx.data(), n);
    INFO("n=" << n << " gpu " << g << " cpu " << c);
    CHECK(std::fabs(g - c) <= 1e-10 * std::fabs(c));
  }
}

TEST_CASE("CUDA Adam update with bias correction", "[cuda]") {
  require_gpu();
  Pair P;
  for (int64_t n : {1, 1001}) {
    auto param = rnd(sz(n), 1400 + uint64_t(n)), m = rnd(sz(n), 1401, 0.1f),
         v = rnd(sz(n), 1402, 0.1f);
    for (auto& x : v) x = std::fabs(x);
    auto dp = dev(param), dm = dev(m), dv = dev(v);
    for (int64_t step = 1; step <= 3; ++step) {
      auto g = rnd(sz(n), 1410 + uint64_t(step));
      auto dg = dev(g);
      P.cpu->adam_update(param.data(), m.data(), v.data(), g.data(), n, 1e-3, 0.9, 0.999, 1e-8,
                         step);
      P.gpu->adam_update(dp.data(), dm.data(), dv.data(), dg.data(), n, 1e-3, 0.9, 0.999, 1e-8,
                         step);
    }
    expect_close("adam param n=" + std::to_string(n), dp.to_vector(), param, kElem);
    expect_close("adam m n=" + std::to_string(n), dm.to_vector(), m, kElem);
    expect_close("adam v n=" + std::to_string(n), dv.to_vector(), v, kElem);
  }
}

// ---- device memory (Backend::device_memory) and top-k

TEST_CASE("CUDA device_memory: upload, download, copy, zero and copy_rows round trips", "[cuda]") {
  require_gpu();
  Pair P;
  REQUIRE(P.cpu->device_memory() == nullptr);
  DeviceMemory* mem = P.gpu->device_memory();
  REQUIRE(mem != nullptr);
  REQUIRE(P.gpu->device_memory() == mem);

  // Raw bytes of odd sizes, at odd offsets.
  for (size_t n : {size_t(1), size_t(7), size_t(4099)}) {
    std::vector<uint8_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = uint8_t(random_u32(5, n, i));
    void* d = mem->allocate(n + 3);
    REQUIRE(d != nullptr);
    mem->upload(static_cast<uint8_t*>(d) + 3, h.data(), n);
    std::vector<uint8_t> back(n, 0);
    mem->download(back.data(), static_cast<uint8_t*>(d) + 3, n);
    CHECK(back == h);
    mem->upload(d, h.data(), 0);  // zero-size calls: no-ops
    mem->download(back.data(), d, 0);
    mem->copy(d, static_cast<uint8_t*>(d) + 1, 0);
    mem->zero(d, 0);
    mem->copy_rows(d, 4, d, 4, 0, 3);
    mem->copy_rows(d, 4, d, 4, 4, 0);
    mem->release(d);
  }
  mem->release(nullptr);

  // Typed buffers in device memory through the mem_* helpers.
  const int64_t n = 1001;
  const std::vector<float> x = rnd(sz(n), 2001), y = rnd(sz(n), 2002);
  Buffer<float> a(sz(n), mem), b;
  b.ensure(sz(n), mem);
  REQUIRE(a.memory() == mem);
  REQUIRE(b.memory() == mem);
  mem_upload(mem, a.data(), x.data(), n);
  std::vector<float> h(sz(n));
  mem_download(mem, h.data(), a.data(), n);
  CHECK(h == x);

  // copy of a sub-range to another offset
  mem_upload(mem, b.data(), y.data(), n);
  mem_copy(mem, b.data() + 5, a.data() + 3, 501);
  std::vector<float> want = y;
  for (int64_t i = 0; i < 501; ++i) want[sz(5 + i)] = x[sz(3 + i)];
  mem_download(mem, h.data(), b.data(), n);
  CHECK(h == want);

  // zero of a sub-range
  mem_zero(mem, b.data() + 10, 37);
  for (int64_t i = 10; i < 47; ++i) want[sz(i)] = 0.0f;
  mem_download(mem, h.data(), b.data(), n);
  CHECK(h == want);

  // copy_rows with odd strides, and the contiguous case; the gaps between rows stay untouched.
  struct RowCase {
    int64_t rows, cols, src_ld, dst_ld;
  };
  for (const RowCase& c : {RowCase{7, 5, 13, 9}, RowCase{1, 1, 1, 3}, RowCase{33, 3, 3, 3},
                           RowCase{40, 17, 21, 17}, RowCase{3, 24, 25, 31}}) {
    mem_upload(mem, a.data(), x.data(), n);
    mem_upload(mem, b.data(), y.data(), n);
    mem_copy_rows(mem, b.data() + 1, c.dst_ld, a.data() + 2, c.src_ld, c.rows, c.cols);
    want = y;
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t j = 0; j < c.cols; ++j)
        want[sz(1 + r * c.dst_ld + j)] = x[sz(2 + r * c.src_ld + j)];
    mem_download(mem, h.data(), b.data(), n);
    INFO("copy_rows rows=" << c.rows << " cols=" << c.cols << " src_ld=" << c.src_ld
                           << " dst_ld=" << c.dst_ld);
    CHECK(h == want);
  }
  mem_copy_rows(mem, b.data(), 3, a.data(), 3, 0, 2);  // empty: no-ops
  mem_copy_rows(mem, b.data(), 3, a.data(), 3, 2, 0);

  // int32 rows (ids) through the raw interface
  {
    const std::vector<int32_t> ids = rnd_ids(60, 2003, 1 << 30);
    Buffer<int32_t> s(60, mem), d(60, mem);
    mem_upload(mem, s.data(), ids.data(), 60);
    mem_zero(mem, d.data(), 60);
    mem->copy_rows(d.data(), 4 * 6, s.data(), 4 * 5, 4 * 3, 9);  // 9 rows of 3, strides 6 and 5
    std::vector<int32_t> got(60), exp(60, 0);
    for (int r = 0; r < 9; ++r)
      for (int j = 0; j < 3; ++j) exp[sz(r * 6 + j)] = ids[sz(r * 5 + j)];
    mem_download(mem, got.data(), d.data(), 60);
    CHECK(got == exp);
  }

  // Buffers from device_memory() are device memory for the ops (the emulator rejects host
  // pointers), and download waits for the queued ops.
  mem_upload(mem, a.data(), x.data(), n);
  mem_upload(mem, b.data(), y.data(), n);
  P.gpu->add_inplace(a.data(), b.data(), n);
  P.gpu->scale(a.data(), n, 0.5f);
  std::vector<float> cx = x;
  P.cpu->add_inplace(cx.data(), y.data(), n);
  P.cpu->scale(cx.data(), n, 0.5f);
  mem_download(mem, h.data(), a.data(), n);
  CHECK(h == cx);

  // ensure within the capacity keeps the allocation; a move keeps the memory
  float* before = a.data();
  a.ensure(10, mem);
  CHECK(a.data() == before);
  Buffer<float> moved = std::move(a);
  CHECK(moved.memory() == mem);
  CHECK(moved.data() == before);
  P.gpu->scale(moved.data(), 10, 2.0f);
  std::vector<float> h10(10);
  mem_download(mem, h10.data(), moved.data(), 10);
  for (int i = 0; i < 10; ++i) CHECK(h10[sz(i)] == cx[sz(i)] * 2.0f);
}

namespace {

// Row b excludes a few random ids in 0..N-1 (id 0 and duplicates included, unsorted); row 0 also
// excludes about a third of the catalog. out_of_range adds ids outside [0, N) (an error).
Ragged random_exclusions(int64_t B, int64_t N, uint64_t seed, bool out_of_range = false) {
  Ragged r;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<ItemId> row;
    const uint32_t cnt = b == 0 ? uint32_t(N / 3) : u32_to_range(random_u32(31, seed, uint64_t(b)), 9);
    for (uint32_t i = 0; i < cnt; ++i)
      row.push_back(ItemId(u32_to_range(random_u32(32 + uint64_t(b), seed, i), uint32_t(N))));
    if (!row.empty()) row.push_back(row.front());  // a duplicate
    if (b % 2 == 0) row.push_back(0);
    if (out_of_range) {
      row.push_back(-7);
      row.push_back(ItemId(N));
      row.push_back(ItemId(N + 100));
    }
    r.push_row(row.data(), row.data() + row.size());
  }
  return r;
}

// Candidates of row b: items 1..N-1 minus the distinct excluded ids in that range.
int64_t count_candidates(const Ragged& ex, int64_t b, int64_t N) {
  std::vector<ItemId> v;
  for (const ItemId* p = ex.row_begin(sz(b)); p != ex.row_end(sz(b)); ++p)
    if (*p >= 1 && *p < N) v.push_back(*p);
  std::sort(v.begin(), v.end());
  return N - 1 - int64_t(std::unique(v.begin(), v.end()) - v.begin());
}

}  // namespace

// The exact reference is the CPU searcher (make_cpu_searcher: the kernel's fmaf arithmetic, so its
// lists equal the GPU's bit for bit). The CPU backend's topk scores with sgemm: its lists may
// differ only where two items' scores lie within float rounding of each other.
TEST_CASE("CUDA topk matches the CPU backend and the CPU searcher", "[cuda]") {
  require_gpu();
  Pair P;
  uint64_t seed = 2100;
  int cases = 0;
  int64_t sgemm_swaps = 0;
  const int64_t Ns[] = {3000, 40, 301};
  const int64_t Bs[] = {1, 7, 70};
  const int64_t Ds[] = {1, 16, 64};
  for (int di = 0; di < 3; ++di)
    for (int bi = 0; bi < 3; ++bi) {
      const int64_t D = Ds[di], B = Bs[bi], N = Ns[(di + bi) % 3];
      const std::vector<float> U = rnd(sz(B * D), ++seed), E = rnd(sz(N * D), ++seed),
                               bias = rnd(sz(N), ++seed, 0.5f);
      const Ragged ex = random_exclusions(B, N, ++seed);
      int64_t min_cand = N;
      for (int64_t b = 0; b < B; ++b) min_cand = std::min(min_cand, count_candidates(ex, b, N));
      auto dU = dev(U), dE = dev(E), dBias = dev(bias);
      auto searcher_bias = make_cpu_searcher(E.data(), bias.data(), 1, N, D);
      auto searcher_nobias = make_cpu_searcher(E.data(), nullptr, 1, N, D);
      const int64_t k_all = std::min<int64_t>(min_cand, kGpuTopkMaxK);
      for (int64_t k64 : {int64_t(1), int64_t(20), k_all}) {
        if (k64 > min_cand) continue;
        const int k = int(k64);
        const bool with_bias = ((di + bi + k) % 2) == 0;
        const float* hb = with_bias ? bias.data() : nullptr;
        const std::string tag = " D=" + std::to_string(D) + " B=" + std::to_string(B) +
                                " N=" + std::to_string(N) + " k=" + std::to_string(k) +
                                (with_bias ? " bias" : " no bias");
        INFO(tag);
        std::vector<ItemId> gpu(sz(B) * sz(k), -5), cpu(sz(B) * sz(k), -5);
        std::vector<float> gpu_scores(gpu.size(), -5.0f);
        // every other case without scores (out_scores is optional)
        P.gpu->topk(gpu.data(), dU.data(), B, dE.data(), with_bias ? dBias.data() : nullptr, N, D, k,
                    ex, bi % 2 == 0 ? gpu_scores.data() : nullptr);
        P.cpu->topk(cpu.data(), U.data(), B, E.data(), hb, N, D, k, ex);
        const TopkLists ref = (with_bias ? searcher_bias : searcher_nobias)->search(U.data(), B, k, ex);
        REQUIRE(ref.ids == gpu);
        if (bi % 2 == 0) REQUIRE(ref.scores == gpu_scores);  // bit for bit
        ++cases;
        // vs the CPU backend: equal lists, but for swaps of near-equal scores
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < k; ++i) {
            const size_t at = sz(b * k + i);
            if (gpu[at] == cpu[at]) continue;
            ++sgemm_swaps;
            REQUIRE(cpu[at] >= 1);
            REQUIRE(cpu[at] < N);
            auto score = [&](ItemId j) {
              double s = hb ? double(hb[j]) : 0.0;
              for (int64_t d = 0; d < D; ++d) s += double(U[sz(b * D + d)]) * double(E[sz(j * D + d)]);
              return s;
            };
            const double sg = score(gpu[at]), sc = score(cpu[at]);
            INFO("row " << b << " position " << i << ": gpu id " << gpu[at] << " (" << sg
                        << "), cpu id " << cpu[at] << " (" << sc << ")");
            CHECK(std::fabs(sg - sc) <= 1e-5 * (std::fabs(sc) + 1.0));
          }
      }
    }
  CHECK(cases >= 20);
  INFO("positions where the CPU backend's sgemm order differed: " << sgemm_swaps);
  CHECK(sgemm_swaps <= 20);

  // Ids outside [0, N) in the exclusions are an error, as on the CPU backend.
  {
    const int64_t B = 5, N = 200, D = 16;
    const int k = 20;
    const std::vector<float> U = rnd(sz(B * D), ++seed), E = rnd(sz(N * D), ++seed);
    auto dU = dev(U), dE = dev(E);
    const Ragged ex_far = random_exclusions(B, N, ++seed, true);
    std::vector<ItemId> a(sz(B * k)), b(sz(B * k));
    REQUIRE_THROWS_WITH(P.gpu->topk(a.data(), dU.data(), B, dE.data(), nullptr, N, D, k, ex_far),
                        Catch::Contains("outside 0..199"));
    REQUIRE_THROWS_AS(P.cpu->topk(b.data(), U.data(), B, E.data(), nullptr, N, D, k, ex_far), ada::Error);
  }
}

TEST_CASE("CUDA topk: too few candidates, bad k and empty batches", "[cuda]") {
  require_gpu();
  Pair P;
  const int64_t B = 3, N = 12, D = 4;
  const std::vector<float> U = rnd(sz(B * D), 2201), E = rnd(sz(N * D), 2202);
  auto dU = dev(U), dE = dev(E);
  Ragged ex;
  const std::vector<ItemId> r0 = {3}, r1 = {1, 2, 3, 4, 5, 6, 7, 7, 0}, r2 = {};  // row 1: 4 left
  ex.push_row(r0.data(), r0.data() + r0.size());
  ex.push_row(r1.data(), r1.data() + r1.size());
  ex.push_row(r2.data(), r2.data() + r2.size());
  std::vector<ItemId> out(sz(B) * 1025);
  // k = 4 fits every row; k = 5 does not fit row 1
  P.gpu->topk(out.data(), dU.data(), B, dE.data(), nullptr, N, D, 4, ex);
  std::vector<ItemId> cpu(sz(B) * 4);
  P.cpu->topk(cpu.data(), U.data(), B, E.data(), nullptr, N, D, 4, ex);
  CHECK(std::vector<ItemId>(out.begin(), out.begin() + 12) == cpu);
  REQUIRE_THROWS_WITH(P.gpu->topk(out.data(), dU.data(), B, dE.data(), nullptr, N, D, 5, ex),
                      Catch::Contains("row 1") && Catch::Contains("4 candidate") &&
                          Catch::Contains("k = 5"));
  REQUIRE_THROWS_AS(P.cpu->topk(cpu.data(), U.data(), B, E.data(), nullptr, N, D, 5, ex), ada::Error);
  // every item excluded, or no items but the padding one
  Ragged all;
  std::vector<ItemId> every;
  for (ItemId j = 0; j < ItemId(N); ++j) every.push_back(j);
  all.push_row(every.data(), every.data() + every.size());
  REQUIRE_THROWS_WITH(P.gpu->topk(out.data(), dU.data(), 1, dE.data(), nullptr, N, D, 1, all),
                      Catch::Contains("row 0") && Catch::Contains("0 candidate"));
  Ragged one_empty;
  one_empty.push_row(nullptr, nullptr);
  REQUIRE_THROWS_WITH(P.gpu->topk(out.data(), dU.data(), 1, dE.data(), nullptr, 1, D, 1, one_empty),
                      Catch::Contains("row 0"));
  // k outside 1..kGpuTopkMaxK, and an exclusion list with the wrong number of rows
  REQUIRE_THROWS_WITH(P.gpu->topk(out.data(), dU.data(), B, dE.data(), nullptr, N, D, 0, ex),
                      Catch::Contains("k = 0"));
  REQUIRE_THROWS_WITH(
      P.gpu->topk(out.data(), dU.data(), B, dE.data(), nullptr, N, D, kGpuTopkMaxK + 1, ex),
      Catch::Contains("1025"));
  REQUIRE_THROWS_AS(P.gpu->topk(out.data(), dU.data(), 2, dE.data(), nullptr, N, D, 1, ex),
                    ada::Error);
  // B = 0: nothing to do, nothing written
  Ragged none;
  out[0] = -9;
  P.gpu->topk(out.data(), dU.data(), 0, dE.data(), nullptr, N, D, 3, none);
  CHECK(out[0] == -9);
  // the backend still works after the errors
  P.gpu->topk(out.data(), dU.data(), B, dE.data(), nullptr, N, D, 4, ex);
  CHECK(std::vector<ItemId>(out.begin(), out.begin() + 12) == cpu);
}
