// Interaction data: loading (FMLP-Rec text, generic CSV/TSV), id remapping, the synthetic generator,
// the leave-one-out split and the training sampler (reference-spec.md section 1).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ada {

using ItemId = int32_t;  // 0 = padding; real items are 1..n_items-1

// Ragged list of id lists (CSR): row r is ids[offsets[r] .. offsets[r+1]).
struct Ragged {
  std::vector<int64_t> offsets{0};
  std::vector<ItemId> ids;
  size_t rows() const { return offsets.size() - 1; }
  const ItemId* row_begin(size_t r) const { return ids.data() + offsets[r]; }
  const ItemId* row_end(size_t r) const { return ids.data() + offsets[r + 1]; }
  int64_t row_size(size_t r) const { return offsets[r + 1] - offsets[r]; }
  void push_row(const ItemId* b, const ItemId* e) {
    ids.insert(ids.end(), b, e);
    offsets.push_back(int64_t(ids.size()));
  }
};

// All users' chronological item sequences.
struct Dataset {
  std::string name;                              // e.g. file stem ("beauty") or "synthetic"
  std::vector<std::vector<ItemId>> sequences;    // per user, oldest first, ids in 1..n_items-1
  std::vector<std::string> user_names;           // the user's own id (as text), one per sequence
  int32_t n_items = 0;                           // ids incl. padding: max id + 1
  // When ids were remapped: item_names[id] = the user's own item id (item_names[0] = "<pad>").
  // Empty when the file's ids are used as they are (FMLP format).
  std::vector<std::string> item_names;
  size_t dropped_users = 0;                      // users dropped for having < min_len items
  size_t num_actions() const;
};

struct FmlpOptions {
  bool dedup = false;  // remove repeated items in a line, keeping the first (reference-spec 1.2)
  int min_len = 3;     // drop users with fewer items (after dedup); leave-one-out needs >= 3
};

// `user item item ...` per line, space separated, chronological (shared/data/README.md).
// Errors name file and line: malformed token, non-numeric or negative id, item id 0,
// repeated user id, empty file, missing file.
Dataset load_fmlp(const std::string& path, const FmlpOptions& opt = {});

struct CsvOptions {
  char delimiter = 0;          // 0 = detect from the first line (',', '\t', ';', ' ')
  int header = -1;             // -1 detect (first line has a non-numeric time/item field), 0 no, 1 yes
  std::string user_col;        // header name or 0-based index as text; default: "user"/"user_id" or column 0
  std::string item_col;        // default: "item"/"item_id" or column 1
  std::string time_col;        // default: "timestamp"/"time"/"ts" or column 2
  int kcore = 0;               // iterate: drop users and items with < kcore interactions (0 = off)
  bool dedup = false;          // keep only the first interaction with each item per user
  int min_len = 3;             // drop users with fewer items after filtering
};

// Generic interaction log: one (user, item, timestamp) per line. Users and items may be any
// strings; items are remapped to 1..N in order of first appearance (after sorting by user then time,
// stable for equal times), users keep their names. Errors name file and line (missing column,
// non-numeric timestamp, empty file, missing file).
Dataset load_interactions(const std::string& path, const CsvOptions& opt = {});

// Item id map, one line per id >= 1: `<internal id>\t<user's own id>`. Written atomically.
void save_item_map(const std::string& path, const Dataset& ds);
std::vector<std::string> load_item_map(const std::string& path);  // index = internal id

struct SyntheticOptions {
  int n_users = 3000;
  int n_items = 1500;       // real items (ids 1..n_items)
  int n_clusters = 30;      // item clusters = latent interests; id i is in (i-1)*n_clusters/n_items
  int interests_per_user = 3;
  int min_len = 5, max_len = 30;
  double switch_prob = 0.3; // chance to switch to another of the user's interests at each step
  double noise = 0.05;      // chance of a uniformly random item
  uint64_t seed = 2024;
};

// Users with a few latent interests (clusters of items), sequences that drift within an interest
// (neighbouring items are more likely) and switch between interests; popularity is skewed within
// each cluster. Deterministic given the options. No repeated items within a sequence.
Dataset generate_synthetic(const SyntheticOptions& opt = {});

// Leave-one-out split (reference-spec 1.4). Users have >= 3 items.
//   train samples: (user, p) for p = 0 .. n-3: history seq[:p], target seq[p] (p = 0: empty history)
//   valid: history seq[:-2], target seq[-2];  test: history seq[:-1], target seq[-1]
//   exclusion (evaluation and negatives): the full sequence seq[:]
struct TrainSample {
  int32_t user;
  int32_t pos;
};

struct EvalSet {
  std::vector<int32_t> users;
  Ragged histories;          // model input, NOT truncated (the model keeps the last max_len)
  std::vector<ItemId> targets;
};

std::vector<TrainSample> train_samples(const Dataset& ds);
EvalSet make_eval_set(const Dataset& ds, bool test);  // test=false: validation
// Full sequences (the evaluation's exclusion lists and the negatives' rejection lists).
Ragged full_histories(const Dataset& ds);

// One training batch. Histories are truncated to the last max_len items, chronological.
struct Batch {
  std::vector<int32_t> users;  // [B]
  Ragged histories;            // B rows, each 0..max_len items (0 = empty history)
  std::vector<ItemId> items;   // [B, 1 + n_neg], column 0 = the positive
  int n_neg = 0;
  size_t size() const { return users.size(); }
};

// Per epoch: a fresh shuffle of the samples and fresh negatives, all from the counter RNG
// (seed, epoch), so an epoch's batches are independent of thread count and call order.
// Negatives: uniform over 1..n_items-1, rejecting the positive and anything in the user's full
// sequence, with replacement, at most 100 tries then 0 (reference-spec 1.4).
class TrainSampler {
 public:
  TrainSampler(const Dataset& ds, uint64_t seed, int n_neg = 100, int max_len = 50);
  size_t num_samples() const { return samples_.size(); }
  size_t num_batches(size_t batch_size) const {
    return (samples_.size() + batch_size - 1) / batch_size;
  }
  void start_epoch(uint32_t epoch);  // reshuffles (Fisher-Yates driven by the counter RNG)
  // Batch b of the current epoch (the last one may be short). Thread-safe for distinct `out`.
  void fill_batch(size_t b, size_t batch_size, Batch& out) const;

 private:
  const Dataset& ds_;
  Ragged full_;
  std::vector<TrainSample> samples_;
  std::vector<uint32_t> order_;
  uint64_t seed_;
  uint32_t epoch_ = 0;
  int n_neg_, max_len_;
};

}  // namespace ada
