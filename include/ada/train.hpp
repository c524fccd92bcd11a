// Training and evaluation of a model on a Dataset, following the reference trainer
// (reference-spec.md section 5): validate before each epoch's training, save the best model on a
// strict improvement of valid hit@50, stop after the metric failed to improve more than `patience`
// consecutive times, then test the best checkpoint.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "ada/ada_model.hpp"
#include "ada/checkpoint.hpp"
#include "ada/data.hpp"
#include "ada/sasrec.hpp"

namespace ada {

struct TrainOptions {
  int epochs = 200;
  int batch_size = 1024;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
  double clip_norm = 10.0;  // global gradient norm; <= 0 disables
  int patience = 10;
  int n_neg = 100;
  uint64_t seed = 366849;   // the reference run's seed
  int eval_batch = 1024;
  std::string key_metric = "hit@50";
  std::string out_dir;      // empty: write nothing
  bool resume = false;      // continue from out_dir/last_state.safetensors
  bool progress = true;     // progress bar on stderr when it is a terminal
  int64_t max_batches_per_epoch = 0;  // 0 = all (tests use fewer)
};

using MetricMap = std::map<std::string, double>;

// What the trainer needs of a model: its parameters, one training step, and evaluation ranks.
class TrainableModel {
 public:
  virtual ~TrainableModel() = default;
  virtual ParamStore<float>& params() = 0;
  virtual Backend<float>& backend() = 0;
  virtual ModelInfo info() const = 0;
  // Forward, loss and (when the loss is finite) backward into params().grads(), which the caller
  // has zeroed. Returns the loss.
  virtual double train_step(const Batch& batch, uint64_t seed, uint64_t step) = 0;
  // 0-based ranks of each row's target (reference-spec 4.1 for a base model; 4.2 for Ada: the
  // position in the concatenated round lists, or total_k when absent). exclude: full sequences.
  virtual std::vector<int32_t> ranks(const EvalSet& set, const Ragged& exclude, int batch) = 0;
  // Rounds and items per round of the per-round analysis (the base model's are slices of its ranking).
  virtual int analysis_rounds() const = 0;
  virtual int analysis_k() const = 0;
};

// The base SASRec as a TrainableModel (does not own the model).
class SasRecTrainable final : public TrainableModel {
 public:
  SasRecTrainable(SasRec<float>& m, std::string dataset, const AdaConfig& slices = {})
      : m_(m), dataset_(std::move(dataset)), slices_(slices) {}
  ParamStore<float>& params() override { return m_.params(); }
  Backend<float>& backend() override { return m_.backend(); }
  ModelInfo info() const override;
  double train_step(const Batch& batch, uint64_t seed, uint64_t step) override;
  std::vector<int32_t> ranks(const EvalSet& set, const Ragged& exclude, int batch) override;
  int analysis_rounds() const override { return slices_.rounds; }
  int analysis_k() const override { return slices_.k_per_round(); }

 private:
  SasRec<float>& m_;
  std::string dataset_;
  AdaConfig slices_;
  Buffer<float> u_, du_, logits_;  // in the backend's memory
  Buffer<int32_t> items_;
};

// Ada-Retrieval on SASRec as a TrainableModel: lambda-weighted per-round BCE (reference-spec 3.4).
class AdaTrainable final : public TrainableModel {
 public:
  AdaTrainable(AdaSasRec<float>& m, std::string dataset) : m_(m), dataset_(std::move(dataset)) {}
  ParamStore<float>& params() override { return m_.params(); }
  Backend<float>& backend() override { return m_.backend(); }
  ModelInfo info() const override;
  double train_step(const Batch& batch, uint64_t seed, uint64_t step) override;
  std::vector<int32_t> ranks(const EvalSet& set, const Ragged& exclude, int batch) override;
  int analysis_rounds() const override { return m_.ada_config().rounds; }
  int analysis_k() const override { return m_.k_ctx(); }

 private:
  AdaSasRec<float>& m_;
  std::string dataset_;
  Buffer<float> u_, du_, logits_;  // in the backend's memory
  Buffer<int32_t> items_;
};

struct TrainReport {
  std::string dataset;
  uint64_t seed = 0;
  int epochs_trained = 0;
  int best_epoch = -1;  // number of training epochs behind the best checkpoint
  MetricMap valid, test;
  std::vector<double> epoch_seconds, eval_seconds, epoch_loss;  // loss = sum of batch mean losses
  std::vector<MetricMap> valid_history;
  double train_seconds = 0;
  int64_t parameters = 0;
  bool ada = false;
  std::vector<double> test_round_hits;  // fraction of test users hit in each round's slice
};

// User vectors for every row of `histories` in batches (no dropout), on the host.
std::vector<float> user_vectors(SasRec<float>& model, const Ragged& histories, int batch);

// Metrics (reference-spec 4.3) of a model's ranks on an evaluation set; Ada models report @k only
// for k <= total_k, as the reference does.
MetricMap evaluate(TrainableModel& model, const EvalSet& set, const Ragged& exclude, int batch,
                   std::vector<int32_t>* ranks = nullptr);
MetricMap evaluate(SasRec<float>& model, const EvalSet& set, const Ragged& exclude, int batch,
                   std::vector<int32_t>* ranks = nullptr);

// Most-popular baseline on the same protocol: items scored by their training-interaction count.
MetricMap evaluate_popularity(const Dataset& ds, const EvalSet& set, const Ragged& exclude);

// Trains `model` (already initialised or loaded) on `ds`. Log lines go to `log` (and to
// out_dir/train.log); outputs (model.safetensors, last_state.safetensors, result.json, metrics.tsv)
// to out_dir when it is set. Returns the report (also in result.json).
TrainReport train(TrainableModel& model, const Dataset& ds, const TrainOptions& opt, std::ostream& log);
TrainReport train(SasRec<float>& model, const Dataset& ds, const TrainOptions& opt, std::ostream& log);

// result.json text for a report (format in docs/design.md).
std::string report_json(const TrainReport& r, const std::string& device);

}  // namespace ada
