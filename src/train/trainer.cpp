#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ada/check.hpp"
#include "ada/checkpoint.hpp"
#include "ada/eval.hpp"
#include "ada/fileio.hpp"
#include "ada/train.hpp"
#include "src/core/wall_clock.hpp"

namespace ada {

using nlohmann::json;

namespace {

Ragged slice_rows(const Ragged& r, size_t begin, size_t end) {
  Ragged out;
  out.offsets.reserve(end - begin + 1);
  for (size_t i = begin; i < end; ++i) out.push_row(r.row_begin(i), r.row_end(i));
  return out;
}

void progress_bar(size_t done, size_t total, double loss_mean) {
  const int width = 30;
  const int fill = int(double(done) / double(total) * width);
  std::fprintf(stderr, "\r  [%s%s] %zu/%zu batches  loss %.4f ", std::string(size_t(fill), '=').c_str(),
               std::string(size_t(width - fill), ' ').c_str(), done, total, loss_mean);
  if (done == total) std::fprintf(stderr, "\r%*s\r", width + 50, "");
  std::fflush(stderr);
}

json metrics_json(const MetricMap& m) {
  json j = json::object();
  for (const auto& [k, v] : m) j[k] = v;
  return j;
}

MetricMap metrics_from_json(const json& j) {
  MetricMap m;
  for (auto it = j.begin(); it != j.end(); ++it) m[it.key()] = it.value().get<double>();
  return m;
}

// Trainer state saved after every epoch so that --resume continues exactly where it stopped
// (all randomness is counter-based on (seed, epoch, step), so a resumed run equals an uninterrupted one).
struct LoopState {
  int next_epoch = 0;
  int64_t step = 0;       // batches seen (names the dropout streams)
  int64_t adam_step = 0;  // optimizer steps taken (NaN steps are skipped)
  double best_score = -1;
  int bad_count = 0;
  TrainReport report;
};

std::string state_json(const LoopState& s) {
  json j;
  j["next_epoch"] = s.next_epoch;
  j["step"] = s.step;
  j["adam_step"] = s.adam_step;
  j["best_score"] = s.best_score;
  j["bad_count"] = s.bad_count;
  j["best_epoch"] = s.report.best_epoch;
  j["epochs_trained"] = s.report.epochs_trained;
  j["epoch_seconds"] = s.report.epoch_seconds;
  j["eval_seconds"] = s.report.eval_seconds;
  j["epoch_loss"] = s.report.epoch_loss;
  j["train_seconds"] = s.report.train_seconds;
  json hist = json::array();
  for (const auto& m : s.report.valid_history) hist.push_back(metrics_json(m));
  j["valid_history"] = hist;
  j["valid"] = metrics_json(s.report.valid);
  return j.dump();
}

void state_from_json(LoopState& s, const std::string& text, const std::string& where) {
  try {
    const json j = json::parse(text);
    s.next_epoch = j.at("next_epoch");
    s.step = j.at("step");
    s.adam_step = j.at("adam_step");
    s.best_score = j.at("best_score");
    s.bad_count = j.at("bad_count");
    s.report.best_epoch = j.at("best_epoch");
    s.report.epochs_trained = j.at("epochs_trained");
    s.report.epoch_seconds = j.at("epoch_seconds").get<std::vector<double>>();
    s.report.eval_seconds = j.at("eval_seconds").get<std::vector<double>>();
    s.report.epoch_loss = j.at("epoch_loss").get<std::vector<double>>();
    s.report.train_seconds = j.at("train_seconds");
    for (const auto& m : j.at("valid_history")) s.report.valid_history.push_back(metrics_from_json(m));
    s.report.valid = metrics_from_json(j.at("valid"));
  } catch (const std::exception& e) {
    ADA_FAIL(where << ": bad trainer state: " << e.what());
  }
}

}  // namespace

std::vector<float> user_vectors(SasRec<float>& model, const Ragged& histories, int batch) {
  ADA_CHECK(batch > 0, "user_vectors: batch must be positive");
  const int64_t D = model.config().hidden;
  DeviceMemory* mem = model.memory();
  std::vector<float> U(histories.rows() * size_t(D));
  Buffer<float> dev;
  for (size_t b = 0; b < histories.rows(); b += size_t(batch)) {
    const size_t e = std::min(histories.rows(), b + size_t(batch));
    const Ragged part = slice_rows(histories, b, e);
    float* out = U.data() + b * size_t(D);
    if (mem) {
      dev.ensure((e - b) * size_t(D), mem);
      model.forward(part, false, 0, 0, dev.data());
      mem_download(mem, out, dev.data(), int64_t((e - b) * size_t(D)));
    } else {
      model.forward(part, false, 0, 0, out);
    }
  }
  return U;
}

namespace {

// Per-row exclusion lists of an evaluation set (rows follow set.users).
Ragged rows_of(const EvalSet& set, const Ragged& exclude) {
  Ragged ex;
  ex.offsets.reserve(set.users.size() + 1);
  for (int32_t u : set.users) ex.push_row(exclude.row_begin(size_t(u)), exclude.row_end(size_t(u)));
  return ex;
}

// The cutoff the log lines show: 50 when the metrics have it, else the smallest one there is (an
// Ada model with K < 50 has only hit@K).
int headline_cutoff(const MetricMap& m) {
  if (m.count("hit@50")) return 50;
  int best = -1;
  for (const auto& [name, v] : m)
    if (name.rfind("hit@", 0) == 0) {
      const int c = std::stoi(name.substr(4));
      if (best < 0 || c < best) best = c;
    }
  ADA_CHECK(best > 0, "no hit@k metric among the validation results");
  return best;
}

// opt.key_metric, or for lists too short for its cutoff (an Ada model with K below it) the same
// metric at the largest cutoff the lists have.
std::string resolve_key_metric(const MetricMap& m, const std::string& key) {
  if (m.count(key)) return key;
  const size_t at = key.find('@');
  ADA_CHECK(at != std::string::npos, "unknown key metric \"" << key << "\"");
  const std::string stem = key.substr(0, at + 1);
  int best = -1;
  for (const auto& [name, v] : m)
    if (name.rfind(stem, 0) == 0) best = std::max(best, std::stoi(name.substr(stem.size())));
  ADA_CHECK(best > 0, "key metric \"" << key << "\" is not among the validation results");
  return stem + std::to_string(best);
}

}  // namespace

MetricMap evaluate(TrainableModel& model, const EvalSet& set, const Ragged& exclude, int batch,
                   std::vector<int32_t>* ranks_out) {
  std::vector<int32_t> ranks = model.ranks(set, exclude, batch);
  std::vector<int> ks = {50, 100};
  if (model.info().ada) {  // the reference skips k > K for an Ada model's lists
    const int K = model.analysis_rounds() * model.analysis_k();
    ks.erase(std::remove_if(ks.begin(), ks.end(), [&](int k) { return k > K; }), ks.end());
    if (ks.empty()) ks.push_back(K);  // lists shorter than 50: their own length is the only cutoff
  }
  MetricMap m = ranking_metrics(ranks, ks);
  if (ranks_out) *ranks_out = std::move(ranks);
  return m;
}

MetricMap evaluate(SasRec<float>& model, const EvalSet& set, const Ragged& exclude, int batch,
                   std::vector<int32_t>* ranks_out) {
  SasRecTrainable t(model, "");
  return evaluate(t, set, exclude, batch, ranks_out);
}

ModelInfo SasRecTrainable::info() const {
  ModelInfo i;
  i.sasrec = m_.config();
  i.dataset = dataset_;
  return i;
}

double SasRecTrainable::train_step(const Batch& batch, uint64_t seed, uint64_t step) {
  const int64_t B = int64_t(batch.size()), C = 1 + batch.n_neg, D = m_.config().hidden;
  DeviceMemory* mem = m_.memory();
  u_.ensure(size_t(B * D), mem);
  du_.ensure(size_t(B * D), mem);
  logits_.ensure(size_t(B * C), mem);
  const int32_t* items = mem_stage(mem, batch.items.data(), int64_t(batch.items.size()), items_);
  m_.forward(batch.histories, true, seed, step, u_.data());
  const double loss = m_.backend().sampled_bce(logits_.data(), du_.data(), m_.item_table_grad(), m_.item_bias_grad(),
                                               u_.data(), m_.item_table(), m_.item_bias(), items, B, C, D, 1.0);
  if (std::isfinite(loss)) m_.backward(du_.data());
  return loss;
}

std::vector<int32_t> SasRecTrainable::ranks(const EvalSet& set, const Ragged& exclude, int batch) {
  const Ragged ex = rows_of(set, exclude);
  const auto& c = m_.config();
  if (DeviceMemory* mem = m_.memory()) {
    // On the device: each row's best `depth` items through the backend's top-k, the target's rank
    // counted in that list (ties in its favour, as 4.1). A target beyond the list gets rank `depth`:
    // every metric and round slice reported is cut at <= depth, so they equal the full ranking's
    // (but for a target whose score ties exactly with the last listed one's, with a larger id).
    // Catalogs too small for that list rank on the host instead.
    const int depth = std::max(100, analysis_rounds() * analysis_k());
    const int64_t B = int64_t(set.users.size());
    Ragged cand;  // the exclusions without the target (the target is always a candidate)
    bool fits = depth <= kGpuTopkMaxK;
    for (int64_t b = 0; b < B && fits; ++b) {
      std::vector<ItemId> row;
      for (const ItemId* it = ex.row_begin(size_t(b)); it != ex.row_end(size_t(b)); ++it)
        if (*it != set.targets[size_t(b)]) row.push_back(*it);
      std::sort(row.begin(), row.end());
      row.erase(std::unique(row.begin(), row.end()), row.end());
      fits = int64_t(c.n_items) - 1 - int64_t(row.size()) >= depth;
      cand.push_row(row.data(), row.data() + row.size());
    }
    if (fits) {
      std::vector<int32_t> ranks(static_cast<size_t>(B), static_cast<int32_t>(depth));
      Buffer<float> dev_u;
      std::vector<ItemId> ids;
      std::vector<float> scores;
      for (int64_t b0 = 0; b0 < B; b0 += batch) {
        const int64_t b1 = std::min(B, b0 + int64_t(batch)), nb = b1 - b0;
        dev_u.ensure(size_t(nb * c.hidden), mem);
        m_.forward(slice_rows(set.histories, size_t(b0), size_t(b1)), false, 0, 0, dev_u.data());
        const Ragged part = slice_rows(cand, size_t(b0), size_t(b1));
        ids.resize(size_t(nb * depth));
        scores.resize(ids.size());
        m_.backend().topk(ids.data(), dev_u.data(), nb, m_.item_table(), m_.item_bias(), c.n_items, c.hidden, depth,
                          part, scores.data());
        for (int64_t b = 0; b < nb; ++b) {
          const size_t row = size_t(b * depth);
          for (int j = 0; j < depth; ++j)
            if (ids[row + size_t(j)] == set.targets[size_t(b0 + b)]) {
              int r = j;  // items before it with an equal score (and a smaller id) do not count
              while (r > 0 && !(scores[row + size_t(r - 1)] > scores[row + size_t(j)])) --r;
              ranks[size_t(b0 + b)] = r;
              break;
            }
        }
      }
      return ranks;
    }
    m_.params().pull();  // the host table
  }
  const std::vector<float> U = user_vectors(m_, set.histories, batch);
  return full_ranking_ranks(U.data(), int64_t(set.users.size()), m_.host_item_table(), m_.host_item_bias(), c.n_items,
                            c.hidden, set.targets.data(), ex);
}

ModelInfo AdaTrainable::info() const {
  ModelInfo i;
  i.sasrec = m_.base().config();
  i.ada = true;
  i.ada_cfg = m_.ada_config();
  i.dataset = dataset_;
  return i;
}

double AdaTrainable::train_step(const Batch& batch, uint64_t seed, uint64_t step) {
  const AdaConfig& a = m_.ada_config();
  const int64_t B = int64_t(batch.size()), C = 1 + batch.n_neg, D = m_.base().config().hidden, R = a.rounds;
  DeviceMemory* mem = m_.base().memory();
  u_.ensure(size_t(R * B * D), mem);
  du_.ensure(size_t(R * B * D), mem);
  logits_.ensure(size_t(B * C), mem);
  const int32_t* items = mem_stage(mem, batch.items.data(), int64_t(batch.items.size()), items_);
  m_.forward(batch.histories, true, seed, step, u_.data());
  double loss = 0;
  auto& be = m_.backend();
  // The sampled scorer's table and bias gradients accumulate round by round (each weighted lambda^t).
  for (int64_t t = 0; t < R; ++t)
    loss += be.sampled_bce(logits_.data(), du_.data() + t * B * D, m_.base().item_table_grad(),
                           m_.base().item_bias_grad(), u_.data() + t * B * D, m_.base().item_table(),
                           m_.base().item_bias(), items, B, C, D, std::pow(a.lambda, double(t)));
  if (std::isfinite(loss)) m_.backward(du_.data());
  return loss;
}

std::vector<int32_t> AdaTrainable::ranks(const EvalSet& set, const Ragged& exclude, int batch) {
  const AdaConfig& a = m_.ada_config();
  const auto& c = m_.base().config();
  const int64_t D = c.hidden, R = a.rounds, kc = m_.k_ctx(), total = R * kc;
  const std::vector<int> ks(static_cast<size_t>(R), static_cast<int>(kc));
  std::vector<int32_t> ranks(set.users.size(), int32_t(total));
  std::vector<float> scores;
  // The user vectors stay in the backend's memory and are searched there (on a GPU: the fused kernel).
  Buffer<float> users(0, m_.base().memory());
  std::vector<ItemId> ids;
  for (size_t b0 = 0; b0 < set.users.size(); b0 += size_t(batch)) {
    const size_t b1 = std::min(set.users.size(), b0 + size_t(batch));
    const int64_t B = int64_t(b1 - b0);
    Ragged hist, ex;
    for (size_t i = b0; i < b1; ++i) {
      hist.push_row(set.histories.row_begin(i), set.histories.row_end(i));
      // the evaluator masks the full sequence but restores the target (reference-spec 4.2)
      const int32_t u = set.users[i];
      std::vector<ItemId> row;
      for (const ItemId* it = exclude.row_begin(size_t(u)); it != exclude.row_end(size_t(u)); ++it)
        if (*it != set.targets[i]) row.push_back(*it);
      ex.push_row(row.data(), row.data() + row.size());
    }
    users.ensure(size_t(R * B * D));
    ids.resize(size_t(B * total));
    scores.resize(size_t(B * total));
    m_.forward_lists(hist, ex, ks, users.data(), ids.data(), scores.data());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < total; ++j)
        if (ids[size_t(b * total + j)] == set.targets[b0 + size_t(b)]) {
          ranks[b0 + size_t(b)] = int32_t(j);
          break;
        }
  }
  return ranks;
}

MetricMap evaluate_popularity(const Dataset& ds, const EvalSet& set, const Ragged& exclude) {
  std::vector<float> count(size_t(ds.n_items), 0.0f);
  for (const auto& seq : ds.sequences)
    for (size_t i = 0; i + 2 < seq.size(); ++i) count[size_t(seq[i])] += 1.0f;
  const std::vector<float> U(set.users.size(), 1.0f);
  const Ragged ex = rows_of(set, exclude);
  return ranking_metrics(full_ranking_ranks(U.data(), int64_t(set.users.size()), count.data(), nullptr,
                                            ds.n_items, 1, set.targets.data(), ex));
}

std::string report_json(const TrainReport& r, const std::string& device) {
  json j;
  j["dataset"] = r.dataset;
  j["model"] = "sasrec";
  j["ada"] = r.ada;
  j["device"] = device;
  j["seed"] = r.seed;
  j["epochs_trained"] = r.epochs_trained;
  j["best_epoch"] = r.best_epoch;
  j["valid"] = metrics_json(r.valid);
  j["test"] = metrics_json(r.test);
  j["epoch_seconds"] = r.epoch_seconds;
  j["eval_seconds"] = r.eval_seconds;
  j["epoch_loss"] = r.epoch_loss;
  j["train_seconds"] = r.train_seconds;
  j["parameters"] = r.parameters;
  json rounds = json::array();
  for (size_t t = 0; t < r.test_round_hits.size(); ++t) rounds.push_back({{"round", t}, {"hit", r.test_round_hits[t]}});
  j["rounds"] = rounds;
  return j.dump(2) + "\n";
}

TrainReport train(SasRec<float>& model, const Dataset& ds, const TrainOptions& opt, std::ostream& log) {
  SasRecTrainable t(model, ds.name);
  return train(t, ds, opt, log);
}

TrainReport train(TrainableModel& model, const Dataset& ds, const TrainOptions& opt, std::ostream& log_os) {
  ADA_CHECK(opt.batch_size > 0, "train: batch size must be positive, got " << opt.batch_size);
  ADA_CHECK(opt.epochs >= 0, "train: epochs must be >= 0, got " << opt.epochs);
  ADA_CHECK(opt.n_neg >= 1, "train: n_neg must be >= 1, got " << opt.n_neg);
  const ModelInfo info = model.info();
  const SasRecConfig& cfg = info.sasrec;
  ADA_CHECK(ds.n_items == cfg.n_items,
            "train: the model has " << cfg.n_items << " item ids, the data " << ds.n_items);
  Backend<float>& be = model.backend();
  ParamStore<float>& P = model.params();
  const bool write = !opt.out_dir.empty();
  const std::string model_path = opt.out_dir + "/model.safetensors";
  const std::string state_path = opt.out_dir + "/last_state.safetensors";

  std::ostringstream log_text;
  // A resumed run continues the log instead of replacing it.
  if (opt.resume && write && file_exists(opt.out_dir + "/train.log")) log_text << read_file(opt.out_dir + "/train.log");
  auto log = [&](const std::string& line) {
    log_os << line << "\n" << std::flush;
    log_text << line << "\n";
    if (write) write_file_atomic(opt.out_dir + "/train.log", log_text.str());
  };

  const EvalSet valid = make_eval_set(ds, false);
  const EvalSet test = make_eval_set(ds, true);
  const Ragged exclude = full_histories(ds);
  TrainSampler sampler(ds, opt.seed, opt.n_neg, cfg.max_len);
  const size_t n_batches_full = sampler.num_batches(size_t(opt.batch_size));
  const size_t n_batches = opt.max_batches_per_epoch > 0
                               ? std::min(n_batches_full, size_t(opt.max_batches_per_epoch))
                               : n_batches_full;

  // Adam's moments live where the parameters do (the backend's memory).
  DeviceMemory* mem = P.memory();
  const int64_t n_flat = P.flat_size();
  Buffer<float> adam_m(size_t(n_flat), mem), adam_v(size_t(n_flat), mem);
  mem_zero(mem, adam_m.data(), n_flat);
  mem_zero(mem, adam_v.data(), n_flat);
  P.pull();
  std::vector<float> best_params = P.values();
  LoopState st;
  st.report.dataset = ds.name;
  st.report.seed = opt.seed;
  st.report.parameters = P.count();
  if (opt.resume) {
    ADA_CHECK(write, "train: --resume needs an output folder");
    const SafeTensorsFile s(state_path);  // (each tensor read once, when needed)
    load_params(P, s, state_path);
    const std::vector<float> m0 = s.blob("adam.m").to_f32(), v0 = s.blob("adam.v").to_f32();
    ADA_CHECK(int64_t(m0.size()) == n_flat && int64_t(v0.size()) == n_flat,
              state_path << ": optimizer state does not match the model");
    mem_upload(mem, adam_m.data(), m0.data(), n_flat);
    mem_upload(mem, adam_v.data(), v0.data(), n_flat);
    auto it = s.metadata().find("trainer");
    ADA_CHECK(it != s.metadata().end(), state_path << ": no trainer state");
    state_from_json(st, it->second, state_path);
    if (file_exists(model_path)) {
      ParamStore<float> tmp = P;
      load_params(tmp, SafeTensorsFile(model_path), model_path);
      best_params = tmp.values();
    }
    log("resuming at epoch " + std::to_string(st.next_epoch) + " (step " + std::to_string(st.step) + ")");
  } else {
    std::ostringstream os;
    os << "training " << (info.ada ? "ada-sasrec" : "sasrec") << " on " << ds.name << ": " << ds.sequences.size() << " users, "
       << ds.n_items - 1 << " items, " << sampler.num_samples() << " samples, " << n_batches
       << " batches of " << opt.batch_size << ", " << P.count() << " parameters, seed " << opt.seed;
    log(os.str());
  }

  const bool bar = opt.progress && isatty(2);
  Batch batch;
  const auto train_t0 = WallClock::now();
  const double train_seconds_before = st.report.train_seconds;
  bool key_note_logged = false;
  for (int epoch = st.next_epoch; epoch < opt.epochs; ++epoch) {
    // 1. validate first (the reference's order), 2. early stopping / best checkpoint
    auto t0 = WallClock::now();
    const MetricMap vm = evaluate(model, valid, exclude, opt.eval_batch);
    const double eval_s = seconds_since(t0);
    st.report.eval_seconds.push_back(eval_s);
    st.report.valid_history.push_back(vm);
    const std::string key = resolve_key_metric(vm, opt.key_metric);
    if (key != opt.key_metric && !key_note_logged) {
      log("note: the lists hold fewer items than the cutoff of " + opt.key_metric + "; early stopping uses " + key);
      key_note_logged = true;
    }
    const double score = vm.at(key);
    const std::string hit = "hit@" + std::to_string(headline_cutoff(vm)), ndcg = "ndcg" + hit.substr(3);
    std::string mark;
    if (score > st.best_score) {
      st.best_score = score;
      st.bad_count = 0;
      st.report.best_epoch = epoch;
      st.report.valid = vm;
      P.pull();
      best_params = P.values();
      if (write) save_checkpoint(model_path, P, info);
      mark = "  *best";
    } else {
      ++st.bad_count;
      mark = "  patience " + std::to_string(st.bad_count) + "/" + std::to_string(opt.patience);
    }
    if (st.bad_count > opt.patience) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "epoch %3d  valid %s %.4f %s %.4f (%.1fs)  early stop", epoch, hit.c_str(),
                    vm.at(hit), ndcg.c_str(), vm.at(ndcg), eval_s);
      log(buf);
      break;
    }
    // 3. one training epoch
    t0 = WallClock::now();
    sampler.start_epoch(uint32_t(epoch));
    double loss_sum = 0;
    size_t skipped = 0;
    for (size_t b = 0; b < n_batches; ++b) {
      sampler.fill_batch(b, size_t(opt.batch_size), batch);
      P.zero_grad();
      const double loss = model.train_step(batch, opt.seed, uint64_t(st.step));
      ++st.step;
      if (!std::isfinite(loss)) {  // the reference skips a step whose loss is NaN
        ++skipped;
        continue;
      }
      if (opt.clip_norm > 0) {
        const double norm = std::sqrt(be.sum_squares(P.flat_grads(), n_flat));
        const double coef = opt.clip_norm / (norm + 1e-6);
        if (coef < 1.0) be.scale(P.flat_grads(), n_flat, float(coef));
      }
      be.adam_update(P.flat_values(), adam_m.data(), adam_v.data(), P.flat_grads(), n_flat, opt.lr, opt.beta1,
                     opt.beta2, opt.adam_eps, ++st.adam_step);
      loss_sum += loss;
      if (bar) progress_bar(b + 1, n_batches, loss_sum / double(b + 1));
    }
    const double train_s = seconds_since(t0);
    st.report.epoch_seconds.push_back(train_s);
    st.report.epoch_loss.push_back(loss_sum);
    st.report.epochs_trained = epoch + 1;
    st.next_epoch = epoch + 1;
    st.report.train_seconds = train_seconds_before + seconds_since(train_t0);
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "epoch %3d  valid %s %.4f %s %.4f (%.1fs)%s | train loss %.4f (%.1fs)%s", epoch, hit.c_str(),
                  vm.at(hit), ndcg.c_str(), vm.at(ndcg), eval_s, mark.c_str(), loss_sum, train_s,
                  skipped ? (" " + std::to_string(skipped) + " NaN steps skipped").c_str() : "");
    log(buf);
    if (write) {
      P.pull();
      // the moments are written from where they are on the CPU; from a device, through host copies
      std::vector<float> m_host, v_host;
      const float* m = adam_m.data();
      const float* v = adam_v.data();
      if (mem) {
        m_host.resize(static_cast<size_t>(n_flat));
        v_host.resize(static_cast<size_t>(n_flat));
        mem_download(mem, m_host.data(), m, n_flat);
        mem_download(mem, v_host.data(), v, n_flat);
        m = m_host.data();
        v = v_host.data();
      }
      save_checkpoint(state_path, P, info, {{"adam.m", view_f32({n_flat}, m)}, {"adam.v", view_f32({n_flat}, v)}},
                      {{"trainer", state_json(st)}});
    }
  }
  st.report.train_seconds = train_seconds_before + seconds_since(train_t0);

  // Test the best checkpoint.
  P.values() = best_params;
  P.push();
  std::vector<int32_t> test_ranks;
  st.report.test = evaluate(model, test, exclude, opt.eval_batch, &test_ranks);
  st.report.ada = info.ada;
  st.report.test_round_hits = round_hits(test_ranks, model.analysis_rounds(), model.analysis_k());
  {
    std::ostringstream os;
    os.setf(std::ios::fixed);
    os.precision(4);
    os << "best epoch " << st.report.best_epoch << "  valid";
    for (const auto& [k, v] : st.report.valid) os << " " << k << " " << v;
    os << "  |  test";
    for (const auto& [k, v] : st.report.test) os << " " << k << " " << v;
    log(os.str());
  }
  return st.report;
}

}  // namespace ada
