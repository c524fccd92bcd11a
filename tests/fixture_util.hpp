// The golden fixture's checks (../shared/fixtures, see its README: the reference PyTorch
// implementation's outputs for a tiny Ada-SASRec), written once for any backend: the CPU tests
// (model_fixture.cpp, model_ada.cpp) and the CUDA ones (cuda_fixture.cpp) call them with their
// backend. Inputs go to the backend's memory and results come back to the host here, so the
// comparisons are the same code on both. Without ../shared/fixtures the calling test case ends as
// skipped (ada_test::skip).
#pragma once
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ada/ada_model.hpp"
#include "ada/backend.hpp"
#include "ada/checkpoint.hpp"
#include "ada/eval.hpp"
#include "ada/fileio.hpp"
#include "ada/sasrec.hpp"
#include "ada/tensor.hpp"
#include "ada/train.hpp"
#include "tests/test_util.hpp"

namespace ada_test {

struct Fixture {
  std::string weights_path;
  nlohmann::json json;
  ada::SafeTensors weights;
  ada::Ragged histories;  // the 8 sequences
};

inline Fixture load_fixture() {
  Fixture f;
  f.weights_path = shared_file_or_skip("fixtures/ada_sasrec_tiny.safetensors");
  f.json =
      nlohmann::json::parse(ada::read_file(shared_file_or_skip("fixtures/ada_sasrec_tiny.json")));
  f.weights = ada::read_safetensors(f.weights_path);
  for (const auto& s : f.json["sequences"]) {
    const auto v = s.get<std::vector<ada::ItemId>>();
    f.histories.push_row(v.data(), v.data() + v.size());
  }
  return f;
}

// users [B, D] (rounds x B x D for several rounds) from the backend's memory to the host.
inline std::vector<float> to_host(ada::DeviceMemory* mem, const ada::Buffer<float>& dev) {
  std::vector<float> h(dev.size());
  ada::mem_download(mem, h.data(), dev.data(), int64_t(h.size()));
  return h;
}

// Our list [B, k] (B rows of k) against the reference's first k items and scores per row: scores
// within 1e-4; an id may differ from the reference's only where two reference scores lie within
// 1e-4 (the lists are in descending order within each block of `block` items, across blocks in
// round order).
inline void check_lists(const Fixture& f, const std::vector<ada::ItemId>& ids,
                        const std::vector<float>& scores, int64_t B, int k, int block) {
  for (int64_t b = 0; b < B; ++b) {
    const auto ref_ids = f.json["eval"]["retrieved"][size_t(b)].get<std::vector<int>>();
    const auto ref_sc = f.json["eval"]["retrieved_scores"][size_t(b)].get<std::vector<double>>();
    for (int j = 0; j < k; ++j) {
      const size_t at = size_t(b * k + j);
      INFO("sequence " << b << " position " << j << ": ours " << ids[at] << " (" << scores[at]
                       << "), reference " << ref_ids[size_t(j)] << " (" << ref_sc[size_t(j)]
                       << ")");
      REQUIRE(std::abs(scores[at] - ref_sc[size_t(j)]) < 1e-4);
      if (ids[at] != ref_ids[size_t(j)]) {
        const bool near_tie =
            (j % block > 0 && std::abs(ref_sc[size_t(j)] - ref_sc[size_t(j - 1)]) < 1e-4) ||
            (j % block < block - 1 && std::abs(ref_sc[size_t(j)] - ref_sc[size_t(j + 1)]) < 1e-4);
        REQUIRE(near_tie);
      }
    }
  }
}

// Round `t`'s user vectors of all sequences (users [rounds, B, D]) within 1e-4 of the reference's.
inline void check_user_vectors(const Fixture& f, const std::vector<float>& users, int64_t B,
                               int64_t D, int t) {
  for (int64_t b = 0; b < B; ++b) {
    const auto ref =
        f.json["eval"]["user_vectors"][size_t(b)][size_t(t)].get<std::vector<double>>();
    REQUIRE(ref.size() == size_t(D));
    double err = 0;
    for (int64_t d = 0; d < D; ++d)
      err = std::max(err, std::abs(users[size_t((t * B + b) * D + d)] - ref[size_t(d)]));
    INFO("sequence " << b << " (length " << f.histories.row_size(size_t(b)) << ") round " << t);
    REQUIRE(err < 1e-4);
  }
}

// The base model is the fixture's round 0: its user vectors and the first 20 retrieved items
// (history and padding excluded). The file has no ada_config metadata (PyTorch wrote it): the
// configuration comes from the shapes, and the adapters' tensors are left out of a base model.
inline void check_base_fixture(ada::Backend<float>& be) {
  using namespace ada;
  const Fixture f = load_fixture();
  const ModelInfo info = checkpoint_info(f.weights, f.weights_path);
  REQUIRE(info.sasrec.n_items == f.json["config"]["n_items_with_padding"].get<int>());
  REQUIRE(info.sasrec.layers == 2);
  REQUIRE(info.sasrec.inner == 512);
  REQUIRE(info.sasrec.max_len == 50);
  SasRec<float> model(info.sasrec, be);
  std::vector<std::string> ignored;
  load_params(model.params(), f.weights, f.weights_path, false, &ignored);
  REQUIRE(!ignored.empty());
  for (const auto& n : ignored)
    REQUIRE((n.rfind("low_filter", 0) == 0 || n.rfind("att_", 0) == 0 ||
             n.rfind("post_trans_gru", 0) == 0 || n.rfind("ffn_", 0) == 0));

  const int64_t B = int64_t(f.histories.rows()), D = 64;
  REQUIRE(B == 8);
  DeviceMemory* mem = be.device_memory();
  Buffer<float> users(size_t(B * D), mem);
  model.forward(f.histories, false, 0, 0, users.data());
  check_user_vectors(f, to_host(mem, users), B, D, 0);

  const int k = 20;  // round 0 of the evaluator's list: top 20 minus padding and the history
  std::vector<ItemId> ids(size_t(B * k));
  std::vector<float> scores(ids.size());
  multi_round_topk(be, users.data(), B, model.item_table(), model.item_bias(), info.sasrec.n_items,
                   D, {k}, f.histories, ids.data(), scores.data());
  check_lists(f, ids, scores, B, k, k);
}

// The Ada model: every round's user vector, the model's own context ids (the same sets; orders may
// differ only within near-ties), the evaluator's 100-item lists and scores, and one training step
// with dropout 0 (the trainer's step: forward, the lambda-weighted loss, backward): its loss and
// the stored gradients.
inline void check_ada_fixture(ada::Backend<float>& be) {
  using namespace ada;
  const Fixture f = load_fixture();
  const std::string gpath = shared_file_or_skip("fixtures/ada_sasrec_tiny_grads.safetensors");
  SasRecConfig bc = checkpoint_info(f.weights, f.weights_path).sasrec;
  bc.dropout = 0.0f;  // the fixture ran with dropout 0
  AdaConfig ac;
  ac.rounds = f.json["config"]["rounds"];
  ac.total_k = f.json["config"]["total_k"];
  ac.lambda = f.json["config"]["lambda"];
  REQUIRE(ac.k_per_round() == 20);
  AdaSasRec<float> m(bc, ac, be);
  load_params(m.params(), f.weights, f.weights_path);  // every tensor, adapters included

  const int64_t B = 8, D = 64, R = 5, K = 20;
  DeviceMemory* mem = be.device_memory();
  Buffer<float> users(size_t(R * B * D), mem);
  std::vector<ItemId> ctx(size_t((R - 1) * B * K));
  m.forward(f.histories, false, 0, 0, users.data(), ctx.data());
  const std::vector<float> U = to_host(mem, users);
  for (int t = 0; t < R; ++t) check_user_vectors(f, U, B, D, t);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < R; ++t) {
      auto ref = f.json["eval"]["context_ids"][size_t(b)][size_t(t)].get<std::vector<ItemId>>();
      std::vector<ItemId> ours(ctx.begin() + (t * B + b) * K, ctx.begin() + (t * B + b + 1) * K);
      std::sort(ref.begin(), ref.end());
      std::sort(ours.begin(), ours.end());
      INFO("sequence " << b << " round " << t);
      REQUIRE(ours == ref);
    }

  // The evaluator's 100-item lists: 20 per round, history and earlier rounds excluded, round order.
  std::vector<ItemId> ids(size_t(B * R * K));
  std::vector<float> scores(ids.size());
  multi_round_topk(be, users.data(), B, m.base().item_table(), m.base().item_bias(), bc.n_items, D,
                   std::vector<int>(size_t(R), int(K)), f.histories, ids.data(), scores.data());
  check_lists(f, ids, scores, B, int(R * K), int(K));

  Batch batch;
  batch.histories = f.histories;
  for (int64_t b = 0; b < B; ++b) batch.users.push_back(int32_t(b));
  for (const auto& row : f.json["train_step"]["items"]) {
    const auto v = row.get<std::vector<ItemId>>();
    batch.items.insert(batch.items.end(), v.begin(), v.end());
    batch.n_neg = int(v.size()) - 1;
  }
  AdaTrainable trainable(m, "fixture");
  m.params().zero_grad();
  const double loss = trainable.train_step(batch, 99, 3);
  REQUIRE(loss == Approx(f.json["train_step"]["loss"].get<double>()).epsilon(1e-5));
  m.params().pull_grads();
  const SafeTensors grads = read_safetensors(gpath);
  for (const auto& name : f.json["train_step"]["grads"]) {
    const std::string n = name.get<std::string>();
    const std::vector<float> ref = grads.at(n).to_f32();
    const int idx = m.params().find(n);
    REQUIRE(idx >= 0);
    REQUIRE(m.params().entry(idx).numel == int64_t(ref.size()));
    const float* g = m.params().grad(idx);
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += (double(g[i]) - ref[i]) * (double(g[i]) - ref[i]);
      den += double(ref[i]) * ref[i];
    }
    INFO(n << ": relative error " << std::sqrt(num / std::max(den, 1e-30)));
    REQUIRE(std::sqrt(num) <= 1e-3 * std::sqrt(den) + 1e-9);
  }
}

}  // namespace ada_test
