// CPU engine benchmarks at the Beauty shapes (B = 1024 samples of 101 items, N = 12,102 items, D = 64):
// one SASRec training step (forward, loss, backward, Adam) and one full-ranking pass over all users.
// The data is the Beauty file when ../shared/data/beauty.txt exists (ADA_SHARED_DIR overrides),
// else synthetic data of the same size. Run: build/bench_cpu --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <cstdlib>
#include <memory>

#include "ada/eval.hpp"
#include "ada/fileio.hpp"
#include "ada/train.hpp"

using namespace ada;

namespace {

const Dataset& bench_data() {
  static const Dataset ds = [] {
    const char* env = std::getenv("ADA_SHARED_DIR");
    const std::string path = std::string(env ? env : "../shared") + "/data/beauty.txt";
    if (file_exists(path)) return load_fmlp(path);
    SyntheticOptions o;  // about Beauty's size
    o.n_users = 22363;
    o.n_items = 12101;
    o.n_clusters = 200;
    o.min_len = 5;
    o.max_len = 15;
    return generate_synthetic(o);
  }();
  return ds;
}

// Untimed steps before a training benchmark's loop. The first steps allocate and first-touch the
// activations (about 1 GB for Ada), and the buffers grow again while batches set new token-count
// maxima; a 151-step epoch pays that once, a 5-iteration benchmark would pay it in every iteration's
// average (it inflated the Ada step by about 20%).
constexpr int kWarmupSteps = 3;

long minor_faults() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

// The timed loop of a training benchmark: kWarmupSteps untimed steps, then step() (returning its
// samples) per iteration. Counters: minor page faults per step, samples/s, and the seconds an epoch
// takes at that rate (elapsed / (samples / samples_per_epoch)).
template <class Step>
void time_training_steps(benchmark::State& state, Step&& step, size_t samples_per_epoch) {
  for (int w = 0; w < kWarmupSteps; ++w) step();
  const long faults0 = minor_faults();
  int64_t samples = 0;
  for (auto _ : state) samples += step();
  state.counters["faults/step"] = double(minor_faults() - faults0) / double(state.iterations());
  state.counters["samples/s"] = benchmark::Counter(double(samples), benchmark::Counter::kIsRate);
  state.counters["epoch_s_est"] = benchmark::Counter(double(samples) / double(samples_per_epoch),
                                                     benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_sasrec_train_step(benchmark::State& state) {
  const Dataset& ds = bench_data();
  auto be = make_cpu_backend<float>();
  SasRecConfig c;
  c.n_items = ds.n_items;
  SasRec<float> model(c, *be);
  model.init(1);
  TrainSampler sampler(ds, 1, 100, c.max_len);
  const size_t bs = 1024, nb = sampler.num_batches(bs);
  Batch batch;
  std::vector<float> U, dU, logits, m(model.params().values().size()), v(m.size());
  uint64_t step = 0;
  auto train_step = [&] {
    sampler.fill_batch(step % nb, bs, batch);
    const int64_t B = int64_t(batch.size()), C = 1 + batch.n_neg;
    U.resize(size_t(B * 64));
    dU.resize(size_t(B * 64));
    logits.resize(size_t(B * C));
    model.params().zero_grad();
    model.forward(batch.histories, true, 1, step, U.data());
    be->sampled_bce(logits.data(), dU.data(), model.item_table_grad(), model.item_bias_grad(), U.data(),
                    model.item_table(), model.item_bias(), batch.items.data(), B, C, 64, 1.0);
    model.backward(dU.data());
    be->adam_update(model.params().values().data(), m.data(), v.data(), model.params().grads().data(),
                    model.params().flat_size(), 1e-3, 0.9, 0.999, 1e-8, int64_t(step) + 1);
    ++step;
    return B;
  };
  time_training_steps(state, train_step, sampler.num_samples());
}
BENCHMARK(BM_sasrec_train_step)->Unit(benchmark::kMillisecond)->MinTime(5.0)->UseRealTime();

// One Ada-Retrieval step (T = 5 rounds, K = 100): five backbone passes, the adapters, four context
// top-k searches over the catalog, the lambda-weighted loss and the backward through all rounds.
void BM_ada_train_step(benchmark::State& state) {
  const Dataset& ds = bench_data();
  auto be = make_cpu_backend<float>();
  SasRecConfig c;
  c.n_items = ds.n_items;
  AdaSasRec<float> model(c, AdaConfig{}, *be);
  model.init(1);
  AdaTrainable trainable(model, ds.name);
  TrainSampler sampler(ds, 1, 100, c.max_len);
  const size_t bs = 1024, nb = sampler.num_batches(bs);
  Batch batch;
  uint64_t step = 0;
  auto train_step = [&] {
    sampler.fill_batch(step % nb, bs, batch);
    model.params().zero_grad();
    benchmark::DoNotOptimize(trainable.train_step(batch, 1, step));
    ++step;
    return int64_t(batch.size());
  };
  time_training_steps(state, train_step, sampler.num_samples());
}
BENCHMARK(BM_ada_train_step)->Unit(benchmark::kMillisecond)->MinTime(10.0)->UseRealTime();

void BM_full_ranking_validation(benchmark::State& state) {
  const Dataset& ds = bench_data();
  auto be = make_cpu_backend<float>();
  SasRecConfig c;
  c.n_items = ds.n_items;
  SasRec<float> model(c, *be);
  model.init(1);
  const EvalSet valid = make_eval_set(ds, false);
  const Ragged ex = full_histories(ds);
  for (auto _ : state) benchmark::DoNotOptimize(evaluate(model, valid, ex, 1024));
  state.counters["users/s"] = benchmark::Counter(double(valid.users.size()) * double(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_full_ranking_validation)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
