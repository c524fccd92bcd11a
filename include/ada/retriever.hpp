// The serving API: load a checkpoint (base SASRec or Ada-Retrieval) and retrieve the next items for
// user histories from the whole catalog.
//
//   ada::AdaRetriever r = ada::AdaRetriever::load("runs/beauty-ada/model.safetensors");
//   std::vector<ada::ItemId> items = r.retrieve({3, 17, 42}, 100, 5);
//
// Rules of retrieve(seq, k, T):
// - k distinct items, none of them padding (0) and none in `seq`; returned in round order, and by
//   descending score within a round.
// - k is split over T rounds: the first k % T rounds take ceil(k/T) items, the others floor(k/T)
//   (k = 100, T = 5: 20 each; k = 10, T = 3: 4, 3, 3). Each round excludes the items of earlier rounds.
// - An Ada model runs T adapted rounds (its internal context is the training's ceil(K/T) items per
//   round, whatever k is); a base model has one user vector, so its rounds are consecutive slices of
//   one ranking.
// - Errors (ada::Error, naming the value): k < 1, T < 1, T > k, an item id outside 1..N-1, k larger
//   than the catalog minus the history. An empty history is allowed (a new user).
// Thread-safety: one AdaRetriever serves one thread at a time (it keeps scratch buffers), not
// necessarily the one that loaded it (a GPU model makes its device current for the calling thread;
// ada::BatchingRetriever in batching.hpp serves many threads through one model).
#pragma once
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "ada/data.hpp"

namespace ada {

// A read-only view of contiguous values (std::span is C++20).
template <class T>
class Span {
 public:
  Span() = default;
  Span(const T* data, size_t size) : data_(data), size_(size) {}
  Span(const std::vector<std::remove_const_t<T>>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT
  // For a braced list in a call, retrieve({3, 17, 42}, ...): the list lives until the call returns.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winit-list-lifetime"
  Span(std::initializer_list<std::remove_const_t<T>> l) : data_(l.begin()), size_(l.size()) {}  // NOLINT
#pragma GCC diagnostic pop
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  const T* data_ = nullptr;
  size_t size_ = 0;
};

struct Retrieved {
  ItemId item;
  float score;  // <u_round, e_item> + b_item
  int round;    // 0-based
};

// Where retrieve() runs.
struct RetrieverOptions {
  // "cpu" or "cuda". With "cuda" the model lives on the GPU (CUDA backend, device `gpu`): every
  // round's forward and every full-catalog search (the Ada model's own context in each round and the
  // returned lists) run there, the searches in the fused top-k kernel (topk.hpp; k per round <= 1024).
  // Its user vectors equal the CPU's to rounding (cuBLAS vs OpenBLAS), so lists can differ from the
  // CPU's at near ties.
  std::string device = "cpu";
  // 0 = the backend's own search (CPU: the evaluation's sgemm path, what `ada eval` measures; CUDA:
  // the fused kernel over the whole catalog). N >= 1 = the catalog split into N shards searched one
  // by one and merged exactly (topk.hpp); with "cuda", N shards on one GPU (0 and 1 are the same
  // there). Shard and kernel scores use fma arithmetic, identical for any N and on either device;
  // they can differ from the CPU's sgemm path in the last bits, and so can the order of near-ties.
  // On the CPU, 1 shard is the faster choice for large catalogs (about 2x at 1M items, which the
  // sgemm path scores into a matrix it then rescans; docs/benchmarks.md); at Beauty's 12k items
  // the two are close.
  int shards = 0;
  int gpu = 0;  // CUDA device index
  // Users per pass of retrieve_batch() and user_vectors(): a longer list is served in passes of this
  // many, so memory stays bounded by it (the Ada forward keeps every round's activations and context
  // of the pass); larger passes use a GPU better. The results depend on it only through rounding
  // (matrix products of another shape: scores can differ in the last bits, near ties can swap).
  int batch = 1024;
};

// Where retrieve_batch() (and retrieve(), retrieve_scored()) spent their wall-clock time, summed
// over the calls since reset_timing(). The five parts add up to total_s.
struct RetrieveTiming {
  int64_t calls = 0, users = 0;
  int64_t searches = 0;    // full-catalog searches (an Ada model: one per round, two when a round's
                           // list and context cannot share one)
  double total_s = 0;
  double forward_s = 0;    // the rounds' forwards on the host: op launches on a GPU, the whole
                           // computation on the CPU
  double wait_s = 0;       // waiting for the forwards' device work before each search (GPU)
  double search_s = 0;     // the searches, their transfers included (a base model's also include
                           // building its exclusion lists)
  double host_s = 0;       // an Ada model's bookkeeping around its searches: exclusion lists,
                           // per-row sets, one search's result split into a list and a context
  double request_s = 0;    // the request: checking ids and candidates, laying out the histories,
                           // building the returned lists
};

class AdaRetriever {
 public:
  // Loads model.safetensors (or a run folder holding one). Throws ada::Error naming the file, or
  // when the options cannot be met (no CUDA device, more shards than items).
  static AdaRetriever load(const std::string& checkpoint, const RetrieverOptions& options = {});
  AdaRetriever(AdaRetriever&&) noexcept;
  AdaRetriever& operator=(AdaRetriever&&) noexcept;
  ~AdaRetriever();

  std::vector<ItemId> retrieve(Span<const ItemId> user_seq, int k, int T);
  std::vector<Retrieved> retrieve_scored(Span<const ItemId> user_seq, int k, int T);
  // Many users at once (faster: batched passes of RetrieverOptions::batch users, each one pass per
  // round).
  std::vector<std::vector<Retrieved>> retrieve_batch(const std::vector<std::vector<ItemId>>& user_seqs, int k, int T);

  bool is_ada() const;
  int32_t num_items() const;                     // ids 1..num_items()-1 are items
  const std::vector<std::string>& item_names() const;  // the user's own ids when the data was remapped (else empty)
  int embedding_dim() const;                     // D
  int rounds() const;                            // an Ada model's trained T; 1 for a base model

  // The model's scoring tables, for external (ANN) indexes: retrieve() scores item i for a user
  // vector u as <u, item_embeddings()[i]> + item_bias()[i] and takes the top over ids 1..N-1 minus
  // the history (and, after round 0, minus the earlier rounds' items).
  // item_embeddings(): [num_items(), embedding_dim()] row-major, row i = item id i, row 0 = padding.
  // item_bias(): [num_items()], or nullptr when the model has no item bias (score = <u, e_i>).
  // Both stay valid (and unchanged) as long as this AdaRetriever lives.
  const float* item_embeddings() const;
  const float* item_bias() const;

  // The user vectors retrieve_batch(seqs, k, T) ranks with, for the same histories: [B, T, D]
  // row-major (user b's round-t vector starts at (b * T + t) * D). An Ada model gives its adapted
  // vectors of rounds 0..T-1 (round 0 = the backbone's vector; round t adapts to the model's own
  // context of rounds < t, so it does not depend on k); a base model has one vector per user and
  // returns it T times, exactly as retrieve() reuses it for every round. Same checks as retrieve()
  // (T >= 1, item ids in 1..N-1; empty histories allowed), without k's.
  std::vector<float> user_vectors(const std::vector<std::vector<ItemId>>& seqs, int T);

  // How k splits over T rounds (see above).
  static std::vector<int> round_sizes(int k, int T);
  // The items a retrieval for this history can return: the catalog's N - 1 minus its distinct ids.
  int64_t candidates(Span<const ItemId> user_seq) const;
  // The checks retrieve_batch() makes of one row (ids in 1..N-1, k <= candidates), as ada::Error
  // without a row number: for a caller that checks each request before it joins a batch.
  void check_request(Span<const ItemId> user_seq, int k) const;

  // Timing of retrieve_batch() (off by default): a serving profile of where a call's time goes.
  // While on, a GPU model waits for its queued device work before each search (timed as wait_s), so
  // that the searches are timed alone; the results are the same. A call that throws is not counted.
  void set_timing(bool on);
  RetrieveTiming timing() const;
  void reset_timing();

 private:
  struct Impl;
  explicit AdaRetriever(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ada
