// AdaRetriever: the documented retrieval rules, errors, checkpoints of Ada models, and loading a base
// checkpoint into an Ada model.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "ada/batching.hpp"
#include "ada/checkpoint.hpp"
#include "ada/eval.hpp"
#include "ada/retriever.hpp"

using namespace ada;
namespace fs = std::filesystem;

namespace {

SasRecConfig small_base() {
  SasRecConfig c;
  c.n_items = 61;  // 60 items
  c.hidden = 16;
  c.heads = 2;
  c.inner = 24;
  c.max_len = 10;
  c.dropout = 0.0f;
  return c;
}

AdaConfig small_ada() {
  AdaConfig a;
  a.rounds = 3;
  a.total_k = 12;  // 4 context items per round
  return a;
}

struct Checkpoints {
  std::string dir, base, ada;
  Checkpoints() {
    dir = (fs::temp_directory_path() / ("ada_retr_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir);
    fs::create_directories(dir);
    auto be = make_cpu_backend<float>();
    SasRec<float> b(small_base(), *be);
    b.init(1);
    ModelInfo bi;
    bi.sasrec = small_base();
    base = dir + "/base.safetensors";
    save_checkpoint(base, b.params(), bi);
    AdaSasRec<float> a(small_base(), small_ada(), *be);
    a.init(2);
    ModelInfo ai = bi;
    ai.ada = true;
    ai.ada_cfg = small_ada();
    ada = dir + "/ada.safetensors";
    save_checkpoint(ada, a.params(), ai);
  }
  ~Checkpoints() { fs::remove_all(dir); }
};

void check_rules(const std::vector<Retrieved>& got, const std::vector<ItemId>& hist, int k, int T) {
  REQUIRE(int(got.size()) == k);
  const std::vector<int> sizes = AdaRetriever::round_sizes(k, T);
  std::set<ItemId> seen;
  size_t j = 0;
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < sizes[size_t(t)]; ++i, ++j) {
      const Retrieved& r = got[j];
      REQUIRE(r.round == t);
      REQUIRE(r.item > 0);
      REQUIRE(std::find(hist.begin(), hist.end(), r.item) == hist.end());
      REQUIRE(seen.insert(r.item).second);  // distinct, so rounds are disjoint
      if (i > 0) REQUIRE(got[j - 1].score >= r.score);
    }
}

}  // namespace

TEST_CASE("round sizes split k over T rounds, the first k % T rounds taking one more", "[model]") {
  REQUIRE(AdaRetriever::round_sizes(100, 5) == std::vector<int>{20, 20, 20, 20, 20});
  REQUIRE(AdaRetriever::round_sizes(10, 3) == std::vector<int>{4, 3, 3});
  REQUIRE(AdaRetriever::round_sizes(7, 7) == std::vector<int>(7, 1));
  REQUIRE_THROWS_WITH(AdaRetriever::round_sizes(10, 0), Catch::Contains("T must be >= 1"));
  REQUIRE_THROWS_WITH(AdaRetriever::round_sizes(0, 3), Catch::Contains("k must be >= 1"));
  REQUIRE_THROWS_WITH(AdaRetriever::round_sizes(2, 3), Catch::Contains("T = 3"));
}

TEST_CASE("retrieve follows the documented rules for base and Ada checkpoints", "[model]") {
  Checkpoints ck;
  for (const std::string& path : {ck.base, ck.ada}) {
    AdaRetriever r = AdaRetriever::load(path);
    REQUIRE(r.is_ada() == (path == ck.ada));
    const std::vector<ItemId> hist = {5, 9, 9, 60, 1};
    for (auto [k, T] : {std::pair{10, 3}, std::pair{12, 3}, std::pair{7, 1}, std::pair{5, 5}}) {
      INFO(path << " k " << k << " T " << T);
      check_rules(r.retrieve_scored(hist, k, T), hist, k, T);
      const auto ids = r.retrieve(hist, k, T);
      REQUIRE(ids.size() == size_t(k));
    }
    // an empty history (a new user) works
    check_rules(r.retrieve_scored({}, 8, 2), {}, 8, 2);
    // k equal to the candidates left: all of them
    const auto all = r.retrieve(hist, 60 - 4, 1);
    REQUIRE(std::set<ItemId>(all.begin(), all.end()).size() == 56);
    REQUIRE_THROWS_WITH(r.retrieve(hist, 57, 1), Catch::Contains("57") && Catch::Contains("56 candidate"));
    REQUIRE_THROWS_WITH(r.retrieve(hist, 10, 0), Catch::Contains("T must be >= 1"));
    REQUIRE_THROWS_WITH(r.retrieve({3, 61}, 10, 2), Catch::Contains("item id 61"));
    REQUIRE_THROWS_WITH(r.retrieve({0, 3}, 10, 2), Catch::Contains("item id 0"));
    // a batch gives what single calls give
    const std::vector<std::vector<ItemId>> seqs = {{1, 2, 3}, {}, {40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51}};
    const auto batch = r.retrieve_batch(seqs, 9, 3);
    for (size_t i = 0; i < seqs.size(); ++i) {
      const auto one = r.retrieve_scored(seqs[i], 9, 3);
      for (size_t j = 0; j < one.size(); ++j) {
        REQUIRE(batch[i][j].item == one[j].item);
        REQUIRE(batch[i][j].score == Approx(one[j].score).margin(1e-5));
      }
    }
  }
}

TEST_CASE("an Ada checkpoint round trip serves what the in-memory model computes", "[model]") {
  Checkpoints ck;
  auto be = make_cpu_backend<float>();
  AdaSasRec<float> a(small_base(), small_ada(), *be);
  a.init(2);  // same seed as the saved one
  const SafeTensors st = read_safetensors(ck.ada);
  const ModelInfo info = checkpoint_info(st, ck.ada);
  REQUIRE(info.ada);
  REQUIRE(info.ada_cfg.rounds == 3);
  REQUIRE(info.ada_cfg.total_k == 12);
  AdaSasRec<float> loaded(info.sasrec, info.ada_cfg, *be);
  load_params(loaded.params(), st, ck.ada);
  REQUIRE(loaded.params().values() == a.params().values());
  Ragged h;
  const std::vector<ItemId> seq = {7, 8, 9};
  h.push_row(seq.data(), seq.data() + 3);
  std::vector<float> U(3 * 16);
  a.forward(h, false, 0, 0, U.data());
  std::vector<ItemId> ids(12);
  std::vector<float> sc(12);
  multi_round_topk(U.data(), 1, a.base().item_table(), a.base().item_bias(), 61, 16, {4, 4, 4}, h, ids.data(), sc.data());
  AdaRetriever r = AdaRetriever::load(ck.ada);
  REQUIRE(r.retrieve(seq, 12, 3) == ids);
}

TEST_CASE("a base checkpoint loads into an Ada model: base tensors filled, adapters reported missing", "[model]") {
  Checkpoints ck;
  auto be = make_cpu_backend<float>();
  AdaSasRec<float> a(small_base(), small_ada(), *be);
  a.init(9);
  const SafeTensors st = read_safetensors(ck.base);
  std::vector<std::string> ignored, missing;
  load_params(a.params(), st, ck.base, true, &ignored, &missing);
  REQUIRE(ignored.empty());
  REQUIRE(missing.size() == 17);  // the 17 adapter tensors keep their fresh initialisation
  REQUIRE_THROWS_WITH(load_params(a.params(), st, ck.base, false), Catch::Contains("low_filter"));
  const std::vector<float> base_emb = st.at("item_embedding.weight").to_f32();
  const float* emb = a.base().item_table();
  REQUIRE(std::equal(base_emb.begin(), base_emb.end(), emb));
  // round 0 of the Ada model is the base model
  SasRec<float> b(small_base(), *be);
  load_params(b.params(), st, ck.base);
  Ragged h;
  const std::vector<ItemId> seq = {3, 4};
  h.push_row(seq.data(), seq.data() + 2);
  std::vector<float> ua(3 * 16), ub(16);
  a.forward(h, false, 0, 0, ua.data());
  b.forward(h, false, 0, 0, ub.data());
  for (int d = 0; d < 16; ++d) REQUIRE(ua[size_t(d)] == ub[size_t(d)]);
}

TEST_CASE("sharded retrieval returns the one-shard lists bit for bit, Ada context included", "[model][topk]") {
  Checkpoints ck;
  const std::vector<std::vector<ItemId>> seqs = {{3, 17, 42}, {}, {5}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  for (const std::string& path : {ck.base, ck.ada}) {
    RetrieverOptions one;
    one.shards = 1;
    AdaRetriever r1 = AdaRetriever::load(path, one);
    const auto want = r1.retrieve_batch(seqs, 25, 3);
    for (int shards : {2, 7, 60}) {
      RetrieverOptions o;
      o.shards = shards;
      AdaRetriever r = AdaRetriever::load(path, o);
      const auto got = r.retrieve_batch(seqs, 25, 3);
      INFO(path << " shards " << shards);
      for (size_t b = 0; b < seqs.size(); ++b) {
        check_rules(got[b], seqs[b], 25, 3);
        REQUIRE(got[b].size() == want[b].size());
        for (size_t i = 0; i < got[b].size(); ++i) {
          REQUIRE(got[b][i].item == want[b][i].item);
          REQUIRE(got[b][i].score == want[b][i].score);
          REQUIRE(got[b][i].round == want[b][i].round);
        }
      }
    }
    RetrieverOptions too_many;
    too_many.shards = 61;  // 60 items
    REQUIRE_THROWS_WITH(AdaRetriever::load(path, too_many), Catch::Contains("61 shards for 60 items"));
  }
}

TEST_CASE("the shard searchers agree with the evaluation's sgemm search up to rounding", "[model][topk]") {
  Checkpoints ck;
  const std::vector<std::vector<ItemId>> seqs = {{3, 17, 42}, {}, {9, 8, 7, 6}};
  RetrieverOptions sharded;
  sharded.shards = 3;
  AdaRetriever a = AdaRetriever::load(ck.base, sharded), b = AdaRetriever::load(ck.base);
  const auto ga = a.retrieve_batch(seqs, 30, 2), gb = b.retrieve_batch(seqs, 30, 2);
  for (size_t u = 0; u < seqs.size(); ++u) {
    // Same ids in the same order, except that items whose scores differ by rounding may swap.
    REQUIRE(ga[u].size() == gb[u].size());
    for (size_t i = 0; i < ga[u].size(); ++i) {
      REQUIRE(ga[u][i].score == Approx(gb[u][i].score).margin(1e-5));
      if (ga[u][i].item != gb[u][i].item) REQUIRE(std::abs(ga[u][i].score - gb[u][i].score) < 1e-5f);
    }
  }
}

TEST_CASE("retriever options are checked: unknown device, negative shards, CUDA without a device", "[model]") {
  Checkpoints ck;
  RetrieverOptions o;
  o.device = "tpu";
  REQUIRE_THROWS_WITH(AdaRetriever::load(ck.ada, o), Catch::Contains("\"tpu\""));
  o.device = "cpu";
  o.shards = -1;
  REQUIRE_THROWS_WITH(AdaRetriever::load(ck.ada, o), Catch::Contains("shards must be >= 0"));
  o.shards = 0;
  o.device = "cuda";
  o.gpu = 99;  // no machine has it: the error must name CUDA and the device
  REQUIRE_THROWS_WITH(AdaRetriever::load(ck.ada, o), Catch::Contains("CUDA") && Catch::Contains("99"));
}

TEST_CASE("retrieve_batch and user_vectors in passes of RetrieverOptions::batch users equal one pass", "[model]") {
  Checkpoints ck;
  std::vector<std::vector<ItemId>> seqs = {{3, 17, 42}, {}, {5}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  for (ItemId i = 1; i <= 7; ++i) seqs.push_back({i, ItemId(60 - i), ItemId(20 + 2 * i)});
  for (const std::string& path : {ck.base, ck.ada}) {
    AdaRetriever whole = AdaRetriever::load(path);  // batch 1024: one pass
    const auto want = whole.retrieve_batch(seqs, 13, 3);
    const std::vector<float> want_u = whole.user_vectors(seqs, 3);
    for (int batch : {1, 3, 4, 11}) {
      RetrieverOptions o;
      o.batch = batch;
      AdaRetriever r = AdaRetriever::load(path, o);
      const auto got = r.retrieve_batch(seqs, 13, 3);
      const std::vector<float> got_u = r.user_vectors(seqs, 3);
      INFO(path << " batch " << batch);
      REQUIRE(got.size() == seqs.size());
      for (size_t b = 0; b < seqs.size(); ++b) {
        check_rules(got[b], seqs[b], 13, 3);
        for (size_t i = 0; i < got[b].size(); ++i) {
          REQUIRE(got[b][i].item == want[b][i].item);
          REQUIRE(got[b][i].round == want[b][i].round);
          // products of other shapes may round differently (the documented last-bit difference)
          REQUIRE(got[b][i].score == Approx(want[b][i].score).margin(1e-5));
        }
      }
      REQUIRE(got_u.size() == want_u.size());
      for (size_t i = 0; i < got_u.size(); ++i) REQUIRE(got_u[i] == Approx(want_u[i]).margin(1e-5));
    }
  }
  RetrieverOptions zero;
  zero.batch = 0;
  REQUIRE_THROWS_WITH(AdaRetriever::load(ck.ada, zero), Catch::Contains("batch must be >= 1, got 0"));
}

TEST_CASE("retrieve_batch's timing is off by default, counts calls, users and searches, its parts add up to the "
          "total, and leaves the lists unchanged",
          "[model]") {
  Checkpoints ck;
  std::vector<std::vector<ItemId>> seqs = {{3, 17, 42}, {}, {5}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  for (ItemId i = 1; i <= 7; ++i) seqs.push_back({i, ItemId(60 - i), ItemId(20 + 2 * i)});
  const int64_t passes = 3;  // 11 users in passes of 4
  for (const std::string& path : {ck.base, ck.ada}) {
    const bool ada = path == ck.ada;
    INFO(path);
    RetrieverOptions o;
    o.batch = 4;
    AdaRetriever r = AdaRetriever::load(path, o);
    const auto want = r.retrieve_batch(seqs, 13, 3);
    REQUIRE(r.timing().calls == 0);  // off by default
    REQUIRE(r.timing().total_s == 0.0);
    r.set_timing(true);
    for (int call = 0; call < 2; ++call) {
      const auto got = r.retrieve_batch(seqs, 13, 3);
      for (size_t b = 0; b < seqs.size(); ++b)
        for (size_t i = 0; i < got[b].size(); ++i) {
          REQUIRE(got[b][i].item == want[b][i].item);
          REQUIRE(got[b][i].score == want[b][i].score);
        }
    }
    const RetrieveTiming t = r.timing();
    REQUIRE(t.calls == 2);
    REQUIRE(t.users == 2 * int64_t(seqs.size()));
    // one search per round and pass: an Ada round's list and next context share one search here
    REQUIRE(t.searches == 2 * passes * 3);
    for (double part : {t.forward_s, t.search_s, t.request_s}) REQUIRE(part > 0.0);
    REQUIRE(t.wait_s == 0.0);  // nothing to wait for on the CPU
    if (ada)
      REQUIRE(t.host_s > 0.0);
    else
      REQUIRE(t.host_s == 0.0);  // a base model's bookkeeping is inside its searches
    REQUIRE(t.forward_s + t.wait_s + t.search_s + t.host_s + t.request_s == Approx(t.total_s).epsilon(1e-9));
    // a call that throws adds nothing
    REQUIRE_THROWS(r.retrieve_batch({{3, 99}}, 13, 3));
    REQUIRE(r.timing().calls == 2);
    REQUIRE(r.timing().total_s == t.total_s);
    r.reset_timing();
    REQUIRE(r.timing().calls == 0);
    REQUIRE(r.timing().searches == 0);
    REQUIRE(r.timing().search_s == 0.0);
    r.set_timing(false);
    r.retrieve_batch(seqs, 13, 3);
    REQUIRE(r.timing().calls == 0);
  }
}

namespace {

// got equals want but for near ties: the same rounds, scores within tol, and an item in another
// place only where want has it in the same round with a score within tol of got's.
void check_up_to_ties(const std::vector<Retrieved>& got, const std::vector<Retrieved>& want, float tol) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("position " << i << ": item " << got[i].item << " score " << got[i].score << ", want item "
                     << want[i].item << " score " << want[i].score);
    REQUIRE(got[i].round == want[i].round);
    REQUIRE(std::abs(got[i].score - want[i].score) <= tol * (1.0f + std::abs(want[i].score)));
    if (got[i].item == want[i].item) continue;
    const auto same = std::find_if(want.begin(), want.end(), [&](const Retrieved& w) {
      return w.item == got[i].item && w.round == got[i].round &&
             std::abs(w.score - got[i].score) <= tol * (1.0f + std::abs(got[i].score));
    });
    REQUIRE(same != want.end());
  }
}

}  // namespace

// BatchingRetriever: eight threads' requests through one model, served by one worker in batches of
// at most max_batch; every answer is its own request's (what a lone retrieve() gives, up to the
// rounding of another batch shape), a bad request throws in its own thread only, and the counts add
// up. (That batches form under load is a matter of timing, measured by bench_serving's
// BM_batching rows, not asserted here.)
TEST_CASE("BatchingRetriever: many threads through one model, each answer the request's own", "[model]") {
  const Checkpoints ck;
  AdaRetriever r = AdaRetriever::load(ck.ada);
  const int k = 12, T = 3;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> len(0, 9), item(1, 60);
  std::vector<std::vector<ItemId>> seqs(64);
  for (auto& s : seqs) {
    s.resize(size_t(len(rng)));
    for (ItemId& x : s) x = ItemId(item(rng));
  }
  std::vector<std::vector<Retrieved>> want;
  for (const auto& s : seqs) want.push_back(r.retrieve_scored(s, k, T));

  std::vector<std::vector<Retrieved>> got(seqs.size());
  std::vector<std::string> refused(8);
  BatchingRetriever::Stats st;
  {
    BatchingRetriever server(r, k, T, 8);
    std::vector<std::thread> threads;
    for (size_t w = 0; w < 8; ++w)
      threads.emplace_back([&, w] {  // (no Catch assertions off the main thread)
        for (size_t i = w; i < seqs.size(); i += 8) {
          got[i] = server.retrieve(seqs[i]);
          if (i == w) try {
              server.retrieve({3, 61});  // item 61 is beyond the catalog
            } catch (const Error& e) {
              refused[w] = e.what();
            }
        }
      });
    for (auto& t : threads) t.join();
    st = server.stats();
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    INFO("request " << i);
    check_rules(got[i], seqs[i], k, T);
    check_up_to_ties(got[i], want[i], 1e-4f);
  }
  for (const std::string& e : refused) CHECK(e.find("item id 61 is not in the catalog 1..60") != std::string::npos);
  CHECK(st.requests == 64);
  CHECK(st.batches >= 8);  // at most 8 requests a batch
  CHECK(st.batches <= 64);
  CHECK(st.largest >= 1);
  CHECK(st.largest <= 8);

  // k above a history's candidates fails that request alone; bad settings are refused
  BatchingRetriever wide(r, 58, 2);
  CHECK_THROWS_WITH(wide.retrieve({1, 2, 3}), Catch::Contains("k = 58 but the history leaves only 57"));
  CHECK(wide.retrieve({1, 2}).size() == 58);
  CHECK_THROWS_WITH(BatchingRetriever(r, 3, 0), Catch::Contains("T must be >= 1"));
  CHECK_THROWS_WITH(BatchingRetriever(r, 3, 4), Catch::Contains("T = 4 rounds"));
  CHECK_THROWS_WITH(BatchingRetriever(r, 3, 1, 0), Catch::Contains("max_batch must be >= 1"));
}
