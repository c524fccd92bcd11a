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
};

// User vectors for every row of `histories` in batches (no dropout).
std::vector<float> user_vectors(SasRec<float>& model, const Ragged& histories, int batch);

// Full-ranking metrics (reference-spec 4.1, 4.3) of `model` on an evaluation set.
MetricMap evaluate(SasRec<float>& model, const EvalSet& set, const Ragged& exclude, int batch,
                   std::vector<int32_t>* ranks = nullptr);

// Most-popular baseline on the same protocol: items scored by their training-interaction count.
MetricMap evaluate_popularity(const Dataset& ds, const EvalSet& set, const Ragged& exclude);

// Trains `model` (already initialised or loaded) on `ds`. Log lines go to `log` (and to
// out_dir/train.log); outputs (model.safetensors, last_state.safetensors, result.json, metrics.tsv)
// to out_dir when it is set. Returns the report (also in result.json).
TrainReport train(SasRec<float>& model, const Dataset& ds, const TrainOptions& opt, std::ostream& log);

// result.json text for a report (format in docs/design.md).
std::string report_json(const TrainReport& r, const std::string& device, bool ada);

}  // namespace ada
