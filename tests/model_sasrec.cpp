// SASRec: whole-step gradient check in double, and the jagged ("padding is not work") forward equal
// to a padded evaluation of the reference's definition.
#include <catch2/catch.hpp>
#include <cmath>

#include "ada/backend.hpp"
#include "ada/sasrec.hpp"
#include "tests/grad_check.hpp"
#include "tests/tiny_model.hpp"

using namespace ada;

TEST_CASE("a whole SASRec training step (dropout on) matches finite differences", "[model]") {
  auto be = make_cpu_backend<double>();
  SasRec<double> model(ada_test::tiny_sasrec_config(13), *be);
  model.init(7);
  const Ragged hist = ada_test::tiny_histories();
  const int64_t B = 5, C = 3, D = 8;
  const std::vector<int32_t> items = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2, 4, 6};
  std::vector<double> U(B * D), dU(B * D), logits(B * C);
  auto loss_of = [&] {
    model.forward(hist, true, 99, 3, U.data());
    return be->sampled_bce(logits.data(), nullptr, nullptr, nullptr, U.data(), model.item_table(),
                           model.item_bias(), items.data(), B, C, D, 1.0);
  };
  auto& P = model.params();
  P.zero_grad();
  model.forward(hist, true, 99, 3, U.data());
  be->sampled_bce(logits.data(), dU.data(), model.item_table_grad(), model.item_bias_grad(), U.data(),
                  model.item_table(), model.item_bias(), items.data(), B, C, D, 1.0);
  model.backward(dU.data());
  const std::vector<double> analytic = P.grads();
  // padding row of the item table gets no gradient
  for (int64_t d = 0; d < D; ++d) REQUIRE(analytic[size_t(d)] == 0.0);
  // check a spread of coordinates in every tensor
  std::vector<size_t> coords;
  for (const auto& e : P.entries()) {
    const int64_t step = std::max<int64_t>(1, e.numel / 6);
    for (int64_t i = (e.name == "item_embedding.weight" ? D : 0); i < e.numel; i += step)
      coords.push_back(size_t(e.offset + i));
  }
  ada_test::check_gradient("sasrec params", P.values(), analytic, loss_of, coords, 1e-6, 2e-6);
}

TEST_CASE("jagged SASRec equals the padded reference computation", "[model]") {
  // A dense re-implementation of reference-spec 2.3 over all max_len positions with the additive
  // -10000 key mask, evaluated in double: the user vectors must agree with the packed forward.
  auto be = make_cpu_backend<double>();
  const SasRecConfig c = ada_test::tiny_sasrec_config(13);
  SasRec<double> model(c, *be);
  model.init(11);
  // Larger weights than the 0.02 default, so that attention is far from uniform and a wrong key
  // set (e.g. causal prefix instead of all keys for an empty history) changes the result.
  for (auto& w : model.params().values()) w *= 20.0;
  const Ragged hist = ada_test::tiny_histories();
  const int64_t B = int64_t(hist.rows()), D = c.hidden, L = c.max_len, H = c.heads, hd = D / H;
  std::vector<double> U(B * D);
  model.forward(hist, false, 0, 0, U.data());
  const auto& P = model.params();
  auto W = [&](const std::string& n) { return P.value(P.find(n)); };
  auto layernorm = [&](std::vector<double>& x, const double* w, const double* b) {
    for (int64_t t = 0; t < L; ++t) {
      double mu = 0, var = 0;
      for (int64_t d = 0; d < D; ++d) mu += x[t * D + d] / D;
      for (int64_t d = 0; d < D; ++d) var += (x[t * D + d] - mu) * (x[t * D + d] - mu) / D;
      for (int64_t d = 0; d < D; ++d) x[t * D + d] = (x[t * D + d] - mu) / std::sqrt(var + c.ln_eps) * w[d] + b[d];
    }
  };
  auto linear = [&](const std::vector<double>& x, const double* w, const double* b, int64_t I, int64_t O) {
    std::vector<double> y(L * O);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t o = 0; o < O; ++o) {
        double s = b[o];
        for (int64_t i = 0; i < I; ++i) s += x[t * I + i] * w[o * I + i];
        y[t * O + o] = s;
      }
    return y;
  };
  for (int64_t r = 0; r < B; ++r) {
    std::vector<ItemId> seq(L, 0);
    const int64_t n = std::min<int64_t>(hist.row_size(r), L);
    for (int64_t i = 0; i < n; ++i) seq[L - n + i] = hist.row_end(r)[i - n];
    std::vector<double> x(L * D);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t d = 0; d < D; ++d)
        x[t * D + d] = W("item_embedding.weight")[seq[t] * D + d] + W("position_embedding.weight")[t * D + d];
    layernorm(x, W("LayerNorm.weight"), W("LayerNorm.bias"));
    for (int l = 0; l < c.layers; ++l) {
      const std::string a = "trm_encoder.layer." + std::to_string(l) + ".multi_head_attention.";
      const std::string f = "trm_encoder.layer." + std::to_string(l) + ".feed_forward.";
      auto q = linear(x, W(a + "query.weight"), W(a + "query.bias"), D, D);
      auto k = linear(x, W(a + "key.weight"), W(a + "key.bias"), D, D);
      auto v = linear(x, W(a + "value.weight"), W(a + "value.bias"), D, D);
      std::vector<double> att(L * D, 0.0);
      for (int64_t i = 0; i < L; ++i)
        for (int64_t h = 0; h < H; ++h) {
          std::vector<double> s(L);
          double mx = -1e300;
          for (int64_t j = 0; j < L; ++j) {
            double dot = 0;
            for (int64_t e = 0; e < hd; ++e) dot += q[i * D + h * hd + e] * k[j * D + h * hd + e];
            const bool keep = j <= i && seq[j] > 0;
            s[j] = dot / std::sqrt(double(hd)) + (keep ? 0.0 : -10000.0);
            mx = std::max(mx, s[j]);
          }
          double z = 0;
          for (int64_t j = 0; j < L; ++j) z += std::exp(s[j] - mx);
          for (int64_t j = 0; j < L; ++j)
            for (int64_t e = 0; e < hd; ++e) att[i * D + h * hd + e] += std::exp(s[j] - mx) / z * v[j * D + h * hd + e];
        }
      auto o = linear(att, W(a + "dense.weight"), W(a + "dense.bias"), D, D);
      for (size_t i = 0; i < o.size(); ++i) o[i] += x[i];
      layernorm(o, W(a + "LayerNorm.weight"), W(a + "LayerNorm.bias"));
      auto f1 = linear(o, W(f + "dense_1.weight"), W(f + "dense_1.bias"), D, c.inner);
      for (auto& z : f1) z = z / (1 + std::exp(-z));
      std::vector<double> f2(L * D);
      for (int64_t t = 0; t < L; ++t)
        for (int64_t dd = 0; dd < D; ++dd) {
          double s = W(f + "dense_2.bias")[dd];
          for (int64_t i = 0; i < c.inner; ++i) s += f1[t * c.inner + i] * W(f + "dense_2.weight")[dd * c.inner + i];
          f2[t * D + dd] = s + o[t * D + dd];
        }
      layernorm(f2, W(f + "LayerNorm.weight"), W(f + "LayerNorm.bias"));
      x = f2;
    }
    for (int64_t d = 0; d < D; ++d) {
      INFO("row " << r << " dim " << d);
      // the empty history attends over padding with -10000 added: exact up to rounding
      REQUIRE(U[r * D + d] == Approx(x[(L - 1) * D + d]).margin(1e-9));
    }
  }
}

TEST_CASE("SASRec init: padding row zero, N(0, 0.02) weights, unit LayerNorm, bias N(0, 0.1)", "[model]") {
  auto be = make_cpu_backend<float>();
  SasRecConfig c;
  c.n_items = 2001;
  SasRec<float> model(c, *be);
  model.init(1);
  REQUIRE(model.params().count() == 2001 * 64 + 2001 + 51 * 64 + 128 + 2 * 83008);
  const float* e = model.item_table();
  for (int d = 0; d < 64; ++d) REQUIRE(e[d] == 0.0f);
  double s = 0, s2 = 0;
  const int64_t n = 2000 * 64;
  for (int64_t i = 64; i < 64 + n; ++i) {
    s += e[i];
    s2 += double(e[i]) * e[i];
  }
  REQUIRE(std::abs(s / n) < 1e-3);
  REQUIRE(std::sqrt(s2 / n) == Approx(0.02).epsilon(0.02));
  double b2 = 0;
  for (int i = 0; i < 2001; ++i) b2 += double(model.item_bias()[i]) * model.item_bias()[i];
  REQUIRE(std::sqrt(b2 / 2001) == Approx(0.1).epsilon(0.06));
  const auto& P = model.params();
  REQUIRE(P.value(P.find("LayerNorm.weight"))[5] == 1.0f);
  REQUIRE(P.value(P.find("trm_encoder.layer.1.feed_forward.dense_1.bias"))[3] == 0.0f);
}

TEST_CASE("SASRec rejects item ids outside the catalog", "[model]") {
  auto be = make_cpu_backend<float>();
  SasRec<float> model(ada_test::tiny_sasrec_config(13), *be);
  model.init(1);
  Ragged h;
  const std::vector<ItemId> bad = {1, 13};
  h.push_row(bad.data(), bad.data() + 2);
  std::vector<float> U(8);
  REQUIRE_THROWS_WITH(model.forward(h, false, 0, 0, U.data()), Catch::Contains("13"));
}
