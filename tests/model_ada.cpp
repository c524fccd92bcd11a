// Ada-Retrieval on SASRec: a whole multi-round training step checked by finite differences in
// double, round 0 equal to the base model, and the golden fixture (every round's user vector, the
// context ids, the evaluator's lists, the training step's loss and gradients:
// tests/fixture_util.hpp).
#include <catch2/catch.hpp>
#include <cmath>

#include "ada/ada_model.hpp"
#include "ada/eval.hpp"
#include "tests/fixture_util.hpp"
#include "tests/grad_check.hpp"
#include "tests/test_util.hpp"
#include "tests/tiny_model.hpp"

using namespace ada;

namespace {

// Loss of a T-round step: sum_t lambda^t BCE(users[t], items) and its gradients.
template <class T>
double ada_loss(AdaSasRec<T>& m, const Ragged& hist, const std::vector<int32_t>& items, int64_t C, bool grad,
                uint64_t step = 3) {
  const int R = m.ada_config().rounds;
  const int64_t B = int64_t(hist.rows()), D = m.base().config().hidden;
  std::vector<T> U(size_t(R * B * D)), dU(size_t(R * B * D)), logits(size_t(B * C));
  m.forward(hist, true, 99, step, U.data());
  double loss = 0;
  for (int t = 0; t < R; ++t) {
    const double w = std::pow(m.ada_config().lambda, t);
    loss += m.backend().sampled_bce(logits.data(), grad ? dU.data() + t * B * D : nullptr,
                                    grad ? m.base().item_table_grad() : nullptr, grad ? m.base().item_bias_grad() : nullptr,
                                    U.data() + t * B * D, m.base().item_table(), m.base().item_bias(), items.data(),
                                    B, C, D, w);
  }
  if (grad) m.backward(dU.data());
  return loss;
}

}  // namespace

TEST_CASE("a 3-round Ada-SASRec training step (dropout on) matches finite differences", "[model]") {
  auto be = make_cpu_backend<double>();
  AdaConfig ac;
  ac.rounds = 3;
  ac.total_k = 9;  // 3 context items per round
  AdaSasRec<double> m(ada_test::tiny_sasrec_config(40), ac, *be);
  m.init(5);
  // larger adapter weights than the defaults so the adapters matter in the check
  auto& P = m.params();
  for (const char* n : {"low_filter.complex_weight", "low_filter.dense.weight", "ffn_dense_1.weight", "ffn_dense_2.weight"}) {
    auto* v = P.value(P.find(n));
    for (int64_t i = 0; i < P.entry(P.find(n)).numel; ++i) v[i] *= 10;
  }
  const Ragged hist = ada_test::tiny_histories();
  const int64_t C = 3;
  const std::vector<int32_t> items = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2, 4, 6};
  P.zero_grad();
  ada_loss(m, hist, items, C, true);
  const std::vector<double> analytic = P.grads();
  std::vector<size_t> coords;
  for (const auto& e : P.entries()) {
    const int64_t step = std::max<int64_t>(1, e.numel / 5);
    for (int64_t i = (e.name == "item_embedding.weight" ? 8 : 0); i < e.numel; i += step) coords.push_back(size_t(e.offset + i));
  }
  // the context top-k is piecewise constant: h small enough not to reorder it
  ada_test::check_gradient("ada params", P.values(), analytic, [&] { return ada_loss(m, hist, items, C, false); },
                           coords, 1e-6, 5e-6);
}

TEST_CASE("Ada round 0 is exactly the base model and every ablation still runs", "[model]") {
  auto be = make_cpu_backend<float>();
  SasRecConfig bc = ada_test::tiny_sasrec_config(40);
  bc.dropout = 0.0f;
  SasRec<float> base(bc, *be);
  base.init(8);
  const Ragged hist = ada_test::tiny_histories();
  const int64_t B = 5, D = 8;
  std::vector<float> ub(size_t(B * D));
  base.forward(hist, false, 0, 0, ub.data());
  for (int variant = 0; variant < 7; ++variant) {
    AdaConfig ac;
    ac.rounds = 4;
    ac.total_k = 10;  // ceil(10/4) = 3 context items per round
    if (variant == 1) ac.filter = false;
    if (variant == 2) ac.attention = false;
    if (variant == 3) ac.ira = false;
    if (variant == 4) ac.gru = false;
    if (variant == 5) ac.mlp = false;
    if (variant == 6) ac.ura = false;
    AdaSasRec<float> m(bc, ac, *be);
    m.init(3);
    std::copy(base.params().values().begin(), base.params().values().end(), m.params().values().begin());
    std::vector<float> U(size_t(4 * B * D));
    std::vector<ItemId> ctx(size_t(3 * B * 3));
    m.forward(hist, false, 0, 0, U.data(), ctx.data());
    for (int64_t i = 0; i < B * D; ++i) REQUIRE(U[size_t(i)] == ub[size_t(i)]);
    // context rounds are disjoint and never padding
    for (int64_t b = 0; b < B; ++b) {
      std::vector<ItemId> seen;
      for (int r = 0; r < 3; ++r)
        for (int j = 0; j < 3; ++j) seen.push_back(ctx[size_t((r * B + b) * 3 + j)]);
      std::sort(seen.begin(), seen.end());
      REQUIRE(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
      REQUIRE(seen.front() > 0);
    }
    // later rounds differ from round 0 unless both adapters are off
    double diff = 0;
    for (int64_t i = 0; i < B * D; ++i) diff += std::abs(U[size_t(B * D + i)] - U[size_t(i)]);
    INFO("variant " << variant);
    REQUIRE(diff > 1e-3);
  }
}

// An inference forward computes each earlier round's context block once (in the round after it)
// and copies it into later rounds; a training forward computes every round's own blocks (it keeps
// them for the backward and draws other dropout masks each round). Without dropout the two are the
// same function: user vectors to rounding, contexts equal, with and without the filter.
TEST_CASE("an inference forward reuses the context blocks and runs every round in one backbone context: a training forward without dropout agrees", "[model]") {
  auto be = make_cpu_backend<double>();
  SasRecConfig bc = ada_test::tiny_sasrec_config(40);
  bc.dropout = 0.0f;
  const Ragged hist = ada_test::tiny_histories();
  const int64_t B = 5, D = 8, R = 5;
  for (bool filter : {true, false}) {
    AdaConfig ac;
    ac.rounds = int(R);
    ac.total_k = 15;  // 3 context items per round
    ac.filter = filter;
    AdaSasRec<double> m(bc, ac, *be);
    m.init(4);
    // larger filter weights than the defaults, so that a wrong block would show
    auto& P = m.params();
    for (const char* n : {"low_filter.complex_weight", "low_filter.dense.weight"}) {
      auto* v = P.value(P.find(n));
      for (int64_t i = 0; i < P.entry(P.find(n)).numel; ++i) v[i] *= 10;
    }
    std::vector<double> Ui(size_t(R * B * D)), Ut(Ui.size());
    std::vector<ItemId> ci(size_t((R - 1) * B * 3)), ct(ci.size());
    m.forward(hist, false, 0, 0, Ui.data(), ci.data());
    m.forward(hist, true, 7, 1, Ut.data(), ct.data());
    INFO("filter " << filter);
    REQUIRE(ci == ct);
    double diff = 0, later = 0;
    for (size_t i = 0; i < Ui.size(); ++i) diff = std::max(diff, std::abs(Ui[i] - Ut[i]));
    for (size_t i = size_t(B * D); i < Ui.size(); ++i) later += std::abs(Ui[i] - Ui[i % size_t(B * D)]);
    REQUIRE(diff <= 1e-12);
    REQUIRE(later > 1e-3);  // the adapted rounds do differ from round 0
  }
}

TEST_CASE("fixture: Ada-SASRec user vectors, context ids and the training step match the reference",
          "[model]") {
  auto be = make_cpu_backend<float>();
  ada_test::check_ada_fixture(*be);
}

TEST_CASE("forward_lists gives forward's vectors and multi_round_topk's lists, one search per round where it can",
          "[model]") {
  auto be = make_cpu_backend<float>();
  AdaConfig ac;
  ac.rounds = 3;
  ac.total_k = 12;  // 4 context items per round
  const Ragged hist = ada_test::tiny_histories();
  const int64_t B = 5, D = 8;
  // Exclusions: the histories plus extras that overlap the model's own context, a repeat and item 0.
  std::vector<float> U(size_t(3 * B * D)), U2(U.size());
  std::vector<ItemId> ctx(size_t(2 * B * 4));
  for (int32_t n_items : {200, 1500}) {  // 1500: a row excludes 1100 items, beyond one search's limit
    AdaSasRec<float> m(ada_test::tiny_sasrec_config(n_items), ac, *be);
    m.init(5);
    m.forward(hist, false, 0, 0, U.data(), ctx.data());
    REQUIRE(m.last_searches() == 2);
    Ragged ex;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<ItemId> row(hist.row_begin(size_t(b)), hist.row_end(size_t(b)));
      row.push_back(ctx[size_t(b * 4)]);          // round 0's best context item
      row.push_back(ctx[size_t((B + b) * 4 + 1)]);  // one of round 1's
      row.push_back(0);
      if (b % 2) row.push_back(row.front());
      if (n_items == 1500 && b == 2)
        for (ItemId j = 300; j < 1400; ++j) row.push_back(j);
      ex.push_row(row.data(), row.data() + row.size());
    }
    for (const std::vector<int>& ks : {std::vector<int>{4, 4, 4}, std::vector<int>{5, 3, 2}, std::vector<int>{1, 1, 1}}) {
      INFO("catalog " << n_items << " rounds " << ks[0] << " " << ks[1] << " " << ks[2]);
      const int total = ks[0] + ks[1] + ks[2];
      std::vector<ItemId> want(size_t(B * total)), got(want.size());
      std::vector<float> want_s(want.size()), got_s(want.size());
      multi_round_topk(*be, U.data(), B, m.base().item_table(), m.base().item_bias(), n_items, D, ks, ex, want.data(),
                       want_s.data());
      m.forward_lists(hist, ex, ks, U2.data(), got.data(), got_s.data());
      REQUIRE(U2 == U);
      REQUIRE(got == want);
      REQUIRE(got_s == want_s);
      // 200: rounds 0 and 1 search once for their list and the next context, round 2 for its list;
      // 1500: the long row needs over 1024 items from one search, so two searches a round
      REQUIRE(m.last_searches() == (n_items == 200 ? 3 : 5));
      // forward_lists leaves no state behind: a forward() after it finds the same context (its own
      // contexts are checked through U2 == U: later rounds' vectors depend on them)
      std::vector<ItemId> ctx2(ctx.size());
      m.forward(hist, false, 0, 0, U2.data(), ctx2.data());
      REQUIRE(ctx2 == ctx);
    }
  }
  REQUIRE_THROWS_WITH(
      [&] {
        AdaSasRec<float> m(ada_test::tiny_sasrec_config(200), ac, *be);
        m.init(5);
        std::vector<ItemId> ids(size_t(B * 12));
        std::vector<float> sc(ids.size());
        Ragged short_ex;
        short_ex.push_row(ctx.data(), ctx.data() + 1);
        m.forward_lists(hist, short_ex, {4, 4, 4}, U2.data(), ids.data(), sc.data());
      }(),
      Catch::Contains("1 exclusion rows for 5 histories"));
}

TEST_CASE("forward_lists over 70 rows (the per-row work in parallel) equals multi_round_topk", "[model]") {
  auto be = make_cpu_backend<float>();
  AdaConfig ac;
  ac.rounds = 4;
  ac.total_k = 10;  // 3 context items per round; lists of 3, 3, 2, 2
  const int32_t n_items = 300;
  AdaSasRec<float> m(ada_test::tiny_sasrec_config(n_items), ac, *be);
  m.init(8);
  Ragged hist;
  for (int b = 0; b < 70; ++b) {
    std::vector<ItemId> row;
    for (int j = 0; j < b % 9; ++j) row.push_back(ItemId(1 + (b * 37 + j * 11) % (n_items - 1)));
    hist.push_row(row.data(), row.data() + row.size());
  }
  const int64_t B = 70, D = 8;
  const std::vector<int> ks = {3, 3, 2, 2};
  std::vector<float> U(size_t(4 * B * D)), U2(U.size());
  m.forward(hist, false, 0, 0, U.data());
  std::vector<ItemId> want(size_t(B * 10)), got(want.size());
  std::vector<float> want_s(want.size()), got_s(want.size());
  multi_round_topk(*be, U.data(), B, m.base().item_table(), m.base().item_bias(), n_items, D, ks, hist, want.data(),
                   want_s.data());
  m.forward_lists(hist, hist, ks, U2.data(), got.data(), got_s.data());
  REQUIRE(m.last_searches() == 4);
  REQUIRE(U2 == U);
  REQUIRE(got == want);
  REQUIRE(got_s == want_s);
}
