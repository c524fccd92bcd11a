// Finite-difference gradient checks (double) of every CPU op, and the properties each op promises.
#include <catch2/catch.hpp>
#include <cmath>

#include "ada/backend.hpp"
#include "ada/rng.hpp"
#include "tests/grad_check.hpp"

using namespace ada;
using ada_test::check_gradient;
using ada_test::dot;
using ada_test::random_vec;

TEST_CASE("linear forward is in W^T + b and backward matches finite differences", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t M = 5, I = 7, O = 3;
  auto in = random_vec(M * I, 1), W = random_vec(O * I, 2), b = random_vec(O, 3), R = random_vec(M * O, 4);
  std::vector<double> out(M * O);
  be->linear_forward(out.data(), in.data(), W.data(), b.data(), M, I, O);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < O; ++o) {
      double s = b[o];
      for (int64_t i = 0; i < I; ++i) s += in[m * I + i] * W[o * I + i];
      REQUIRE(out[m * O + o] == Approx(s).epsilon(1e-12));
    }
  auto f = [&] {
    be->linear_forward(out.data(), in.data(), W.data(), b.data(), M, I, O);
    return dot(out, R);
  };
  std::vector<double> din(M * I), dW(O * I, 0.0), db(O, 0.0);
  be->linear_backward(din.data(), dW.data(), db.data(), R.data(), in.data(), W.data(), M, I, O, false);
  check_gradient("d in", in, din, f);
  check_gradient("d W", W, dW, f);
  check_gradient("d b", b, db, f);
  // accumulate=true adds to din
  std::vector<double> din2(M * I, 1.0);
  be->linear_backward(din2.data(), nullptr, nullptr, R.data(), in.data(), W.data(), M, I, O, true);
  for (size_t i = 0; i < din.size(); ++i) REQUIRE(din2[i] == Approx(din[i] + 1.0));
}

TEST_CASE("layernorm normalises rows and its backward matches finite differences", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t M = 4, C = 9;
  auto in = random_vec(M * C, 5, 2.0), w = random_vec(C, 6), b = random_vec(C, 7), R = random_vec(M * C, 8);
  std::vector<double> out(M * C), mean(M), rstd(M);
  const double eps = 1e-10;
  // weight 1, bias 0: every row has mean 0 and variance 1
  std::vector<double> ones(C, 1.0), zeros(C, 0.0);
  be->layernorm_forward(out.data(), mean.data(), rstd.data(), in.data(), ones.data(), zeros.data(), M, C, eps);
  for (int64_t m = 0; m < M; ++m) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mu += out[m * C + c] / C;
    for (int64_t c = 0; c < C; ++c) var += (out[m * C + c] - mu) * (out[m * C + c] - mu) / C;
    REQUIRE(std::abs(mu) < 1e-12);
    REQUIRE(var == Approx(1.0).epsilon(1e-9));
  }
  auto f = [&] {
    be->layernorm_forward(out.data(), mean.data(), rstd.data(), in.data(), w.data(), b.data(), M, C, eps);
    return dot(out, R);
  };
  f();
  std::vector<double> din(M * C), dw(C, 0.0), db(C, 0.0);
  be->layernorm_backward(din.data(), dw.data(), db.data(), R.data(), in.data(), w.data(), mean.data(),
                         rstd.data(), M, C);
  check_gradient("d in", in, din, f);
  check_gradient("d w", w, dw, f);
  check_gradient("d b", b, db, f);
}

TEST_CASE("embedding gathers rows, padding row gets no gradient", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t N = 6, D = 3, P = 5, M = 7;
  auto table = random_vec(N * D, 9), pos_t = random_vec(P * D, 10), R = random_vec(M * D, 11);
  const std::vector<int32_t> ids = {0, 3, 3, 5, 1, 0, 2}, pos = {0, 1, 2, 3, 4, 4, 1};
  std::vector<double> out(M * D);
  auto f = [&] {
    be->embedding_forward(out.data(), ids.data(), table.data(), pos.data(), pos_t.data(), M, D);
    return dot(out, R);
  };
  f();
  REQUIRE(out[1 * D + 2] == Approx(table[3 * D + 2] + pos_t[1 * D + 2]));
  std::vector<double> dt(N * D, 0.0), dp(P * D, 0.0);
  be->embedding_backward(dt.data(), dp.data(), R.data(), ids.data(), pos.data(), M, D);
  for (int64_t d = 0; d < D; ++d) REQUIRE(dt[d] == 0.0);  // id 0: padding, no gradient
  std::vector<size_t> non_pad;
  for (size_t i = D; i < dt.size(); ++i) non_pad.push_back(i);
  check_gradient("d table", table, dt, f, non_pad);
  check_gradient("d pos", pos_t, dp, f);
}

TEST_CASE("SiLU and erf-GELU derivatives match finite differences", "[cpu]") {
  auto be = make_cpu_backend<double>();
  for (Activation a : {Activation::kSilu, Activation::kGelu}) {
    auto in = random_vec(50, 12, 3.0), R = random_vec(50, 13);
    std::vector<double> out(50), din(50);
    auto f = [&] {
      be->activation_forward(out.data(), in.data(), 50, a);
      return dot(out, R);
    };
    f();
    if (a == Activation::kSilu) REQUIRE(out[0] == Approx(in[0] / (1 + std::exp(-in[0]))));
    else REQUIRE(out[0] == Approx(0.5 * in[0] * (1 + std::erf(in[0] / std::sqrt(2.0)))));
    be->activation_backward(din.data(), R.data(), in.data(), 50, a);
    check_gradient(a == Activation::kSilu ? "silu" : "gelu", in, din, f);
  }
}

TEST_CASE("dropout keeps about 1-p, scales by 1/(1-p), is reproducible and its backward uses the same mask", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t n = 20000;
  std::vector<double> in(n, 1.0), out(n), out2(n);
  be->dropout_forward(out.data(), in.data(), n, 0.25f, 42, 7);
  be->dropout_forward(out2.data(), in.data(), n, 0.25f, 42, 7);
  REQUIRE(out == out2);
  int64_t kept = 0;
  for (double v : out) {
    REQUIRE((v == 0.0 || v == Approx(1.0 / 0.75)));
    kept += v != 0.0;
  }
  REQUIRE(std::abs(double(kept) / n - 0.75) < 0.02);
  be->dropout_forward(out2.data(), in.data(), n, 0.25f, 42, 8);
  REQUIRE(out != out2);  // another stream, another mask
  std::vector<double> din(n);
  be->dropout_backward(din.data(), in.data(), n, 0.25f, 42, 7);
  REQUIRE(din == out);
}

namespace {

// Three sequences: lengths 3 and 1 (valid tokens) and 4 all-padding tokens.
struct AttnCase {
  std::vector<int64_t> offs = {0, 3, 4, 8};
  std::vector<uint8_t> masked = {0, 0, 1};
  AttentionShape shape(bool last_only, float p) const {
    AttentionShape sh;
    sh.layout.num_seqs = 3;
    sh.layout.num_tokens = 8;
    sh.layout.tok_offsets = offs.data();
    sh.layout.all_masked = masked.data();
    sh.heads = 2;
    sh.head_dim = 3;
    sh.last_only = last_only;
    sh.dropout = p;
    sh.seed = 5;
    sh.stream = 119;  // with p = 0.3 it drops probability 10 and keeps 9 and 11 (checked below)
    return sh;
  }
};

}  // namespace

TEST_CASE("causal attention matches a dense reference and its backward matches finite differences", "[cpu]") {
  auto be = make_cpu_backend<double>();
  AttnCase c;
  const int64_t W = 6;
  for (bool last_only : {false, true}) {
    for (float p : {0.0f, 0.3f}) {
      const AttentionShape sh = c.shape(last_only, p);
      const int64_t Q = sh.num_queries();
      auto q = random_vec(Q * W, 20), k = random_vec(8 * W, 21), v = random_vec(8 * W, 22), R = random_vec(Q * W, 23);
      std::vector<double> out(Q * W), probs(sh.prob_size());
      auto f = [&] {
        be->attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), sh);
        return dot(out, R);
      };
      f();
      if (!last_only) {
        // token 2 of sequence 0, head 1: softmax over keys 0..2 of q.k/sqrt(3); with dropout, the
        // probability of key j is kept when the uniform number of its global index is >= p: queries
        // 0 and 1 hold 2 * 1 and 2 * 2 probabilities, so query 2's head 1 starts at 6 + 3.
        double s[3], mx = -1e300, z = 0, o0 = 0;
        for (int j = 0; j < 3; ++j) {
          s[j] = 0;
          for (int d = 0; d < 3; ++d) s[j] += q[2 * W + 3 + d] * k[j * W + 3 + d];
          s[j] /= std::sqrt(3.0);
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j < 3; ++j) z += std::exp(s[j] - mx);
        for (int j = 0; j < 3; ++j) {
          const bool kept = p == 0.0f || u32_to_unit_float(random_u32(5, 119, uint64_t(9 + j))) >= p;
          o0 += kept ? std::exp(s[j] - mx) / z / (1.0 - double(p)) * v[j * W + 3] : 0.0;
        }
        REQUIRE(out[2 * W + 3] == Approx(o0).epsilon(1e-6));
        // the single-token sequence attends only to itself (probability index 2 * (1 + 2 + 3))
        const bool kept = p == 0.0f || u32_to_unit_float(random_u32(5, 119, 12)) >= p;
        REQUIRE(out[3 * W + 1] == Approx(kept ? v[3 * W + 1] / (1.0 - double(p)) : 0.0).epsilon(1e-6));
      }
      std::vector<double> dq(Q * W), dk(8 * W, 0.0), dv(8 * W, 0.0);
      be->attention_backward(dq.data(), dk.data(), dv.data(), R.data(), probs.data(), q.data(), k.data(),
                             v.data(), sh);
      check_gradient("dq", q, dq, f);
      check_gradient("dk", k, dk, f);
      check_gradient("dv", v, dv, f);
    }
  }
}

TEST_CASE("all-padding sequences get the reference's near-uniform attention", "[cpu]") {
  // With every key masked the reference adds -10000 to all scores; in float32 the q.k differences
  // are mostly lost to rounding at 10000, so the result is close to the mean of the values.
  auto be = make_cpu_backend<float>();
  AttnCase c;
  const AttentionShape sh = c.shape(true, 0.0f);
  std::vector<float> q(3 * 6, 0.01f), k(8 * 6, 0.02f), v(8 * 6), out(3 * 6), probs(sh.prob_size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i % 7);
  be->attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), sh);
  double mean = 0;
  for (int j = 4; j < 8; ++j) mean += v[size_t(j * 6)] / 4.0;
  REQUIRE(out[2 * 6] == Approx(mean).margin(1e-3));
}

TEST_CASE("sampled BCE: value as nn.BCELoss on sigmoid, gradients match finite differences", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t B = 3, C = 4, D = 5, N = 9;
  auto u = random_vec(B * D, 30), table = random_vec(N * D, 31), bias = random_vec(N, 32, 0.1);
  for (int64_t d = 0; d < D; ++d) table[d] = 0;  // padding row
  const std::vector<int32_t> items = {1, 2, 3, 3, 4, 5, 6, 0, 8, 7, 1, 2};
  std::vector<double> logits(B * C);
  // loss by hand
  double ref = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const int32_t j = items[b * C + c];
      double s = bias[j];
      for (int64_t d = 0; d < D; ++d) s += u[b * D + d] * table[j * D + d];
      const double pr = 1 / (1 + std::exp(-s));
      ref -= c == 0 ? std::log(pr) : std::log(1 - pr);
    }
  ref /= double(B * C);
  const double loss = be->sampled_bce(logits.data(), nullptr, nullptr, nullptr, u.data(), table.data(),
                                      bias.data(), items.data(), B, C, D, 0.3);
  REQUIRE(loss == Approx(0.3 * ref).epsilon(1e-12));
  auto f = [&] {
    return be->sampled_bce(logits.data(), nullptr, nullptr, nullptr, u.data(), table.data(), bias.data(),
                           items.data(), B, C, D, 0.3);
  };
  std::vector<double> du(B * D), dt(N * D, 0.0), db(N, 0.0);
  be->sampled_bce(logits.data(), du.data(), dt.data(), db.data(), u.data(), table.data(), bias.data(),
                  items.data(), B, C, D, 0.3);
  for (int64_t d = 0; d < D; ++d) REQUIRE(dt[d] == 0.0);
  std::vector<size_t> non_pad;
  for (size_t i = D; i < dt.size(); ++i) non_pad.push_back(i);
  check_gradient("du", u, du, f);
  check_gradient("dtable", table, dt, f, non_pad);
  check_gradient("dbias", bias, db, f);
}

TEST_CASE("sampled BCE clamps saturated logs at -100 like nn.BCELoss", "[cpu]") {
  auto be = make_cpu_backend<float>();
  std::vector<float> u = {100.0f}, table = {0.0f, -1.0f}, logits(1), du(1);
  const std::vector<int32_t> items = {1};  // positive with logit -100: sigmoid underflows to 0
  const double loss = be->sampled_bce(logits.data(), du.data(), nullptr, nullptr, u.data(), table.data(),
                                      nullptr, items.data(), 1, 1, 1, 1.0);
  REQUIRE(loss == Approx(100.0).epsilon(1e-6));
  REQUIRE(std::isfinite(du[0]));
}

TEST_CASE("Adam follows PyTorch's update with bias correction", "[cpu]") {
  auto be = make_cpu_backend<double>();
  std::vector<double> p = {1.0, -2.0}, m(2, 0.0), v(2, 0.0);
  const std::vector<double> g1 = {0.5, -0.1}, g2 = {0.2, 0.3};
  be->adam_update(p.data(), m.data(), v.data(), g1.data(), 2, 1e-3, 0.9, 0.999, 1e-8, 1);
  // step 1: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps)
  REQUIRE(p[0] == Approx(1.0 - 1e-3 * 0.5 / (0.5 + 1e-8)).epsilon(1e-12));
  be->adam_update(p.data(), m.data(), v.data(), g2.data(), 2, 1e-3, 0.9, 0.999, 1e-8, 2);
  const double mm = 0.9 * (0.1 * -0.1) + 0.1 * 0.3, vv = 0.999 * (0.001 * 0.01) + 0.001 * 0.09;
  const double expect = -2.0 - 1e-3 * (-0.1) / (0.1 + 1e-8) -
                        (1e-3 / (1 - 0.81)) * mm / (std::sqrt(vv) / std::sqrt(1 - 0.998001) + 1e-8);
  REQUIRE(p[1] == Approx(expect).epsilon(1e-10));
}
