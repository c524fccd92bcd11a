// Training end to end on small synthetic data: it learns, it is deterministic, it resumes exactly.
#include <omp.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <sstream>

#include "ada/checkpoint.hpp"
#include "ada/fileio.hpp"
#include "ada/train.hpp"

using namespace ada;
namespace fs = std::filesystem;

namespace {

Dataset small_data() {
  SyntheticOptions o;
  o.n_users = 800;
  o.n_items = 400;
  o.n_clusters = 10;
  o.seed = 5;
  return generate_synthetic(o);
}

SasRecConfig small_config(int32_t n_items) {
  SasRecConfig c;
  c.n_items = n_items;
  c.hidden = 32;
  c.heads = 4;
  c.inner = 64;
  c.max_len = 20;
  return c;
}

// Short epochs keep the determinism and resume tests fast; the learning test runs whole epochs.
TrainOptions small_options(int epochs, int64_t max_batches = 12) {
  TrainOptions t;
  t.max_batches_per_epoch = max_batches;
  t.epochs = epochs;
  t.batch_size = 64;
  t.n_neg = 20;
  t.seed = 3;
  t.progress = false;
  return t;
}

TrainReport run(const Dataset& ds, const TrainOptions& t, std::vector<float>* params = nullptr) {
  auto be = make_cpu_backend<float>();
  SasRec<float> model(small_config(ds.n_items), *be);
  model.init(t.seed);
  std::ostringstream log;
  TrainReport r = train(model, ds, t, log);
  if (params) *params = model.params().values();
  return r;
}

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("ada_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

}  // namespace

TEST_CASE("training on synthetic data lowers the loss and beats the most-popular baseline", "[model]") {
  const Dataset ds = small_data();
  const TrainReport r = run(ds, small_options(6, 0));
  REQUIRE(r.epoch_loss.size() == 6);
  REQUIRE(r.epoch_loss.back() < 0.8 * r.epoch_loss.front());
  const MetricMap pop = evaluate_popularity(ds, make_eval_set(ds, true), full_histories(ds));
  INFO("sasrec test hit@50 " << r.test.at("hit@50") << ", most-popular " << pop.at("hit@50"));
  REQUIRE(r.test.at("hit@50") > pop.at("hit@50") + 0.05);
  REQUIRE(r.test.at("ndcg@50") > pop.at("ndcg@50"));
}

TEST_CASE("the same seed and thread count give bit-identical results, 1 and 2 threads agree closely", "[model]") {
  const Dataset ds = small_data();
  const int threads = omp_get_max_threads();
  std::vector<float> p1, p2, p3;
  const TrainReport a = run(ds, small_options(2), &p1);
  const TrainReport b = run(ds, small_options(2), &p2);
  REQUIRE(a.epoch_loss == b.epoch_loss);
  REQUIRE(a.valid == b.valid);
  REQUIRE(a.test == b.test);
  REQUIRE(p1 == p2);
  omp_set_num_threads(threads == 1 ? 2 : 1);
  const TrainReport c = run(ds, small_options(2), &p3);
  omp_set_num_threads(threads);
  for (size_t i = 0; i < a.epoch_loss.size(); ++i) REQUIRE(c.epoch_loss[i] == Approx(a.epoch_loss[i]).epsilon(1e-4));
  for (const auto& [k, v] : a.test) REQUIRE(c.test.at(k) == Approx(v).margin(0.01));
}

TEST_CASE("resume after an interruption reproduces the uninterrupted run", "[model]") {
  const Dataset ds = small_data();
  const std::string d1 = temp_dir("full"), d2 = temp_dir("resumed");
  TrainOptions full = small_options(3);
  full.out_dir = d1;
  std::vector<float> p_full, p_resumed;
  const TrainReport r1 = run(ds, full, &p_full);
  TrainOptions first = small_options(2);
  first.out_dir = d2;
  run(ds, first);
  TrainOptions rest = small_options(3);
  rest.out_dir = d2;
  rest.resume = true;
  const TrainReport r2 = run(ds, rest, &p_resumed);
  REQUIRE(r2.epoch_loss == r1.epoch_loss);
  REQUIRE(r2.test == r1.test);
  REQUIRE(r2.best_epoch == r1.best_epoch);
  // last_state holds the weights after the last epoch: identical in both runs
  const SafeTensors s1 = read_safetensors(d1 + "/last_state.safetensors");
  const SafeTensors s2 = read_safetensors(d2 + "/last_state.safetensors");
  REQUIRE(s1.at("item_embedding.weight").data == s2.at("item_embedding.weight").data);
  REQUIRE(s1.at("adam.v").data == s2.at("adam.v").data);
  // the resumed run's log continues the first part's: it still has epoch 0
  const std::string log = read_file(d2 + "/train.log");
  REQUIRE(log.find("epoch   0") != std::string::npos);
  REQUIRE(log.find("resuming at epoch 2") != std::string::npos);
  fs::remove_all(d1);
  fs::remove_all(d2);
}

TEST_CASE("checkpoint round trip keeps every weight and the configuration", "[model]") {
  auto be = make_cpu_backend<float>();
  SasRecConfig c = small_config(57);
  c.activation = Activation::kGelu;
  c.ln_eps = 1e-6;
  SasRec<float> m(c, *be);
  m.init(9);
  const std::string dir = temp_dir("ckpt");
  ModelInfo info;
  info.sasrec = c;
  info.dataset = "toy";
  save_checkpoint(dir + "/m.safetensors", m.params(), info);
  const SafeTensors st = read_safetensors(dir + "/m.safetensors");
  const ModelInfo back = checkpoint_info(st, dir + "/m.safetensors");
  REQUIRE(back.dataset == "toy");
  REQUIRE(back.sasrec.n_items == 57);
  REQUIRE(back.sasrec.hidden == 32);
  REQUIRE(back.sasrec.activation == Activation::kGelu);
  REQUIRE(back.sasrec.ln_eps == 1e-6);
  SasRec<float> m2(back.sasrec, *be);
  load_params(m2.params(), st, "m");
  REQUIRE(m2.params().values() == m.params().values());
  REQUIRE_FALSE(m2.params().has_grads());  // a loaded model holds no gradients until it trains
  // a tensor stored in F64 (another writer) loads through the conversion, to the same floats
  SafeTensors st64 = st;
  {
    const std::vector<float> f = st64.at("item_embedding.weight").to_f32();
    const std::vector<double> d(f.begin(), f.end());
    st64.tensors["item_embedding.weight"] = make_blob(st64.at("item_embedding.weight").shape, d.data());
  }
  REQUIRE(st64.at("item_embedding.weight").dtype == DType::kF64);
  SasRec<float> m64(back.sasrec, *be);
  load_params(m64.params(), st64, "m");
  REQUIRE(m64.params().values() == m.params().values());
  // the same through SafeTensorsFile (the header, then each tensor straight into the parameters)
  const SafeTensorsFile file(dir + "/m.safetensors");
  REQUIRE(checkpoint_info(file, "m").sasrec.activation == Activation::kGelu);
  SasRec<float> mf(back.sasrec, *be);
  std::vector<std::string> ignored;
  load_params(mf.params(), file, "m", false, &ignored);
  REQUIRE(mf.params().values() == m.params().values());
  REQUIRE(ignored.empty());
  REQUIRE_FALSE(mf.params().has_grads());
  write_safetensors(dir + "/m64.safetensors", st64);  // and an F64 tensor through the file's conversion
  SasRec<float> mf64(back.sasrec, *be);
  load_params(mf64.params(), SafeTensorsFile(dir + "/m64.safetensors"), "m64");
  REQUIRE(mf64.params().values() == m.params().values());
  // a model of another shape refuses the file, naming the tensor
  SasRecConfig other = c;
  other.hidden = 16;
  other.heads = 2;
  SasRec<float> m3(other, *be);
  REQUIRE_THROWS_WITH(load_params(m3.params(), st, "m.safetensors"), Catch::Contains("item_embedding.weight"));
  // truncated: a clear error naming the file
  const std::string bytes = read_file(dir + "/m.safetensors");
  write_file_atomic(dir + "/cut.safetensors", bytes.substr(0, bytes.size() / 2));
  REQUIRE_THROWS_WITH(read_safetensors(dir + "/cut.safetensors"), Catch::Contains("cut.safetensors"));
  fs::remove_all(dir);
}

TEST_CASE("gradients are allocated, as zeros, by their first use: a model that only runs forward holds none", "[model]") {
  ParamStore<float> ps;
  ps.add("a", {3, 5});
  ps.add("b", {7});
  ps.finalize();
  REQUIRE_FALSE(ps.has_grads());
  ps.values()[0] = 1.0f;
  ParamStore<float> copy(ps);
  REQUIRE_FALSE(copy.has_grads());
  float* g = ps.grad(1);
  REQUIRE(ps.has_grads());
  REQUIRE(ps.grads().size() == size_t(ps.flat_size()));
  for (float x : ps.grads()) REQUIRE(x == 0.0f);
  g[2] = 2.0f;
  REQUIRE(ps.grads()[size_t(ps.entry(1).offset + 2)] == 2.0f);  // the same memory from then on
  ps.zero_grad();
  for (float x : ps.grads()) REQUIRE(x == 0.0f);
  ParamStore<float> fresh;
  fresh.add("c", {4});
  fresh.finalize();
  fresh.zero_grad();  // allocates them, as zeros
  REQUIRE(fresh.has_grads());
  REQUIRE(fresh.flat_grads()[3] == 0.0f);

  // a model: forward passes (evaluation, serving) leave them unallocated; training allocates them
  auto be = make_cpu_backend<float>();
  SasRec<float> model(small_config(50), *be);
  model.init(3);
  Ragged h;
  const std::vector<ItemId> seq = {1, 2, 3};
  h.push_row(seq.data(), seq.data() + seq.size());
  std::vector<float> u(size_t(model.config().hidden));
  model.forward(h, false, 0, 0, u.data());
  REQUIRE_FALSE(model.params().has_grads());
  std::vector<float> du(u.size(), 1.0f);
  model.forward(h, true, 0, 0, u.data());
  model.backward(du.data());
  REQUIRE(model.params().has_grads());
  double nonzero = 0;
  for (float x : model.params().grads()) nonzero += x != 0.0f;
  REQUIRE(nonzero > 0);
}
