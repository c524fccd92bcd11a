// Golden fixture (../shared/fixtures, see its README): the reference PyTorch implementation's outputs
// for a tiny Ada-SASRec. The base model is round 0: its user vectors and the first 20 retrieved items
// (history and padding excluded) must match.
#include <catch2/catch.hpp>
#include <cmath>
#include <nlohmann/json.hpp>

#include "ada/backend.hpp"
#include "ada/checkpoint.hpp"
#include "ada/eval.hpp"
#include "ada/fileio.hpp"
#include "ada/sasrec.hpp"
#include "tests/test_util.hpp"

using namespace ada;

TEST_CASE("fixture: base SASRec round-0 user vectors and top-20 match the reference", "[model]") {
  const std::string wpath = ada_test::shared_file_or_skip("fixtures/ada_sasrec_tiny.safetensors");
  const std::string jpath = ada_test::shared_file_or_skip("fixtures/ada_sasrec_tiny.json");
  const nlohmann::json fx = nlohmann::json::parse(read_file(jpath));
  const SafeTensors st = read_safetensors(wpath);

  // The file has no ada_config metadata (PyTorch wrote it): the configuration comes from the shapes.
  ModelInfo info = checkpoint_info(st, wpath);
  REQUIRE(info.sasrec.n_items == fx["config"]["n_items_with_padding"].get<int>());
  REQUIRE(info.sasrec.layers == 2);
  REQUIRE(info.sasrec.inner == 512);
  REQUIRE(info.sasrec.max_len == 50);
  auto be = make_cpu_backend<float>();
  SasRec<float> model(info.sasrec, *be);
  std::vector<std::string> ignored;
  load_params(model.params(), st, wpath, false, &ignored);
  REQUIRE(!ignored.empty());  // the Ada adapter tensors are not part of the base model
  for (const auto& n : ignored) REQUIRE((n.rfind("low_filter", 0) == 0 || n.rfind("att_", 0) == 0 ||
                                         n.rfind("post_trans_gru", 0) == 0 || n.rfind("ffn_", 0) == 0));

  Ragged hist;
  for (const auto& s : fx["sequences"]) {
    const std::vector<ItemId> v = s.get<std::vector<ItemId>>();
    hist.push_row(v.data(), v.data() + v.size());
  }
  const int64_t B = int64_t(hist.rows()), D = 64;
  REQUIRE(B == 8);
  std::vector<float> U(size_t(B * D));
  model.forward(hist, false, 0, 0, U.data());
  for (int64_t b = 0; b < B; ++b) {
    const auto ref = fx["eval"]["user_vectors"][size_t(b)][0].get<std::vector<double>>();
    REQUIRE(ref.size() == size_t(D));
    for (int64_t d = 0; d < D; ++d) {
      INFO("sequence " << b << " (length " << hist.row_size(size_t(b)) << ") dim " << d);
      REQUIRE(std::abs(U[size_t(b * D + d)] - ref[size_t(d)]) < 1e-4);
    }
  }
  // Round 0 of the evaluator's list: top-20 over all items minus padding and the history.
  const int k = 20;
  std::vector<ItemId> ids(size_t(B * k));
  std::vector<float> scores(size_t(B * k));
  topk_excluding(U.data(), B, model.item_table(), model.item_bias(), info.sasrec.n_items, D, k, hist,
                 nullptr, ids.data(), scores.data());
  for (int64_t b = 0; b < B; ++b) {
    const auto ref_ids = fx["eval"]["retrieved"][size_t(b)].get<std::vector<int>>();
    const auto ref_sc = fx["eval"]["retrieved_scores"][size_t(b)].get<std::vector<double>>();
    for (int j = 0; j < k; ++j) {
      INFO("sequence " << b << " position " << j << ": ours " << ids[size_t(b * k + j)] << " ("
                       << scores[size_t(b * k + j)] << "), reference " << ref_ids[size_t(j)] << " ("
                       << ref_sc[size_t(j)] << ")");
      REQUIRE(std::abs(scores[size_t(b * k + j)] - ref_sc[size_t(j)]) < 1e-4);
      // ids may swap only where two reference scores lie within 1e-4 of each other
      if (ids[size_t(b * k + j)] != ref_ids[size_t(j)]) {
        const bool near_tie = (j > 0 && std::abs(ref_sc[size_t(j)] - ref_sc[size_t(j - 1)]) < 1e-4) ||
                              (j + 1 < k && std::abs(ref_sc[size_t(j)] - ref_sc[size_t(j + 1)]) < 1e-4);
        REQUIRE(near_tie);
      }
    }
  }
}
