// Ada-Retrieval on a SASRec backbone (reference-spec.md section 3): T rounds per user; round t adapts
// the history's item embeddings to the context items retrieved in rounds < t (item representation
// adapter, IRA: learnable DFT filter per round block + context-aware attention) and fuses the earlier
// rounds' adapted user vectors into the new one (user representation adapter, URA: GRU + MLP).
// Round 0 is exactly the base model. Context = the model's own top-k (k = ceil(K/T)) over the whole
// catalog minus padding and earlier context; it has no gradient, the context embeddings do.
#pragma once
#include <cstdint>
#include <vector>

#include "ada/backend.hpp"
#include "ada/data.hpp"
#include "ada/sasrec.hpp"
#include "ada/topk.hpp"
#include "ada/tensor.hpp"

namespace ada {

struct AdaConfig {
  int rounds = 5;        // T
  int total_k = 100;     // K
  double lambda = 0.3;   // round t's loss is weighted lambda^t (t = 0 .. T-1)
  double ln_eps = 1e-12; // the adapters' LayerNorms
  // Ablations (targets.md section 3): off = the component is left out.
  bool filter = true;     // the learnable filter block on each context round (off: raw embeddings)
  bool attention = true;  // context-aware attention (off: the mean of the context)
  bool ira = true;        // the whole item adapter (off: history embeddings unchanged)
  bool gru = true;        // GRU over earlier user vectors (off: their mean)
  bool mlp = true;        // the MLP fusing [v; h] (off: LN(v + dropout(h)))
  bool ura = true;        // the whole user adapter (off: v' = v)
  int k_per_round() const { return (total_k + rounds - 1) / rounds; }  // the reference's ceil(K/T)
};

template <class T>
class AdaSasRec {
 public:
  AdaSasRec(const SasRecConfig& base, const AdaConfig& ada, Backend<T>& be);
  SasRec<T>& base() { return base_; }
  const AdaConfig& ada_config() const { return ada_; }
  ParamStore<T>& params() { return base_.params(); }
  Backend<T>& backend() { return be_; }
  int k_ctx() const { return kc_; }

  // Base init (reference-spec 2.2) plus the adapters': Linear N(0, 0.02), LayerNorms 1/0, filter
  // weight N(0, 0.02), GRU U(-1/sqrt(D), 1/sqrt(D)) as PyTorch's default.
  void init(uint64_t seed);

  // T rounds for B histories. users: [T, B, D] adapted user vectors (round-major, in the backend's
  // memory); ctx_ids: [T-1, B, kc] the model's own context of rounds 0..T-2 (HOST, may be null). rounds <= 0 means the configured T.
  // training keeps activations for backward.
  void forward(const Ragged& histories, bool training, uint64_t seed, uint64_t step, T* users,
               ItemId* ctx_ids = nullptr, int rounds = 0);
  // Evaluation and serving: forward() (not training) of ks.size() rounds that also returns each
  // round's list, multi_round_topk's rule: round t's list is the top ks[t] of users[t] over the
  // catalog minus item 0, the row's `exclude` ids and the earlier rounds' lists; ids and scores are
  // [B, sum ks] (HOST), the rounds' lists concatenated per row. One search per round gives both a
  // round's list and the next round's context (the best m items minus the ids both exclude, m large
  // enough for either; the same lists as searching twice), unless m would exceed what the search
  // takes (then two searches). users as forward(). Throws when a row has too few candidates.
  void forward_lists(const Ragged& histories, const Ragged& exclude, const std::vector<int>& ks, T* users,
                     ItemId* ids, float* scores);
  // Catalog searches (contexts and lists) the last forward or forward_lists ran.
  int last_searches() const { return searches_; }

  // Where forward / forward_lists spend their wall-clock time around the catalog searches, summed
  // over calls until reset_times(); collected only while set_timing(true) (serving profiles,
  // AdaRetriever::timing). On a device backend each search then first waits for the forward's
  // queued device work, timed as wait_s, so that search_s is the searches' own time. The rest of a
  // call (its wall time minus these three) is the forward's own host time: op launches on a device,
  // the whole computation on the CPU.
  struct Times {
    double search_s = 0;  // the catalog searches (contexts and lists), their transfers included
    double wait_s = 0;    // before a search: waiting for the device work queued by the forward
    double host_s = 0;    // host bookkeeping around the searches: exclusion lists, per-row sets,
                          // one search's result split into a round's list and its context
    int64_t searches = 0;
  };
  void set_timing(bool on) { timing_ = on; }
  const Times& times() const { return times_; }
  void reset_times() { times_ = Times{}; }
  // d_users: [T, B, D] gradients of the loss w.r.t. each round's adapted user vector (consumed; in
  // the backend's memory).
  void backward(T* d_users);

  // Where the per-round context top-k runs: null (the default) = the backend's topk (on the CPU:
  // topk_excluding, sgemm; on a GPU: the fused kernel);
  // otherwise this searcher (CPU or GPU shards of the item table, e.g. for serving a large catalog
  // on a GPU). The searcher must hold the model's current item table and bias; it is not owned.
  // float models only.
  void set_context_searcher(ShardedSearcher* searcher) { searcher_ = searcher; }

 private:
  struct Block {  // one earlier round's context through the filter block
    Buffer<T> E, F, R, mean, rstd, Et;  // [B, kc, D] each (mean/rstd [B*kc]); filter_block_forward's
  };
  struct Round {
    typename SasRec<T>::Context sctx;  // the backbone's activations: round_ctx(t)
    // IRA (rounds > 0)
    bool ira = false;
    std::vector<Block> blocks;
    Buffer<T> X, C, probs, r, mean, rstd, Xp;  // context_block_forward's inputs, saved tensors, output: ira_io(t)
    // URA (rounds > 0)
    bool ura = false;
    Buffer<T> v;                         // backbone user vector [B, D]
    Buffer<T> hs, gi, gh, gates;         // GRU: h_0..h_t [t+1, B, D], per step [t, B, 3D]
    Buffer<T> z, a1, a1r, a2, r2, mean2, rstd2;  // MLP
  };
  uint64_t stream(int round, uint32_t site) const;
  // Round t's backbone context. A training forward keeps every round's activations for the
  // backward; without training the rounds differ only in their token inputs, so they all run in
  // round 0's (one set of activations instead of T: at B = 1024 with histories of 1-50 items
  // about 225 MB each, by the peak RSS of a serving call).
  typename SasRec<T>::Context& round_ctx(int t) { return rounds_[size_t(training_ ? t : 0)].sctx; }
  // Round t's (t >= 1) context-attention inputs, saved tensors and output (X, C, probs, r, mean,
  // rstd, Xp), likewise: round 1's for every round without training. (The context blocks stay
  // per round: later rounds copy theirs.)
  Round& ira_io(int t) { return rounds_[size_t(training_ ? t : 1)]; }
  void ira_forward(Round& rd, int t, int64_t B);
  void ira_backward(Round& rd, int t, int64_t B, const T* d_xp);
  void ura_forward(Round& rd, int t, int64_t B, const T* users, T* out);
  void ura_backward(Round& rd, int t, int64_t B, const T* d_out, T* d_users);
  // Arguments of Backend::user_adapter_forward/backward (the GRU + MLP configuration).
  UserAdapterTensors<const T*> ura_weights();
  UserAdapterShape ura_shape(int t, int64_t B, float p) const;
  void ura_op_buffers(Round& rd, int t, int64_t B);
  UserAdapterSaved<T> ura_saved(Round& rd);
  void context_topk(const T* u, int64_t B, const ItemId* prev, int n_prev, ItemId* out);
  // The top k of u over 1..N-1 minus `ex` through the searcher or the backend (HOST ids, scores).
  void search(const T* u, int64_t B, int k, const Ragged& ex, ItemId* ids, float* scores);
  // forward_lists' state: the request and which rounds' lists are done.
  struct Lists {
    const Ragged* exclude = nullptr;
    std::vector<int> ks, start;  // round t's list: columns start[t] .. start[t] + ks[t] of a row
    int total = 0;
    ItemId* ids = nullptr;
    float* scores = nullptr;
  };
  // Round t's list, and when t is not the last round and one search can give both, its context
  // into ctx_out (returns whether it did).
  bool round_lists(const T* u, int64_t B, int t, bool with_context, ItemId* ctx_out);
  // The context ids as the ops take them (the device copy on a device backend).
  const ItemId* ctx_op() const { return mem_ ? d_ctx_.data() : ctx_.data(); }

  // Backward scratch, reused by every step (no allocation in the steady state).
  struct Grads {
    Buffer<T> d_x, d_c, d_et, d_e, d_r2, d_a2, d_h, d_a1r, d_a1, d_z, d_gi, d_gh, d_hprev, d_tokens;
  };

  AdaConfig ada_;
  Backend<T>& be_;
  DeviceMemory* mem_ = nullptr;  // be_.device_memory()
  int kc_ = 0;
  // adapter parameter indices (reference names)
  int p_cw_ = -1, p_fd_w_ = -1, p_fd_b_ = -1, p_fln_w_ = -1, p_fln_b_ = -1, p_aln_w_ = -1, p_aln_b_ = -1;
  int p_wih_ = -1, p_whh_ = -1, p_bih_ = -1, p_bhh_ = -1, p_m1_w_ = -1, p_m1_b_ = -1, p_m2_w_ = -1,
      p_m2_b_ = -1, p_mln_w_ = -1, p_mln_b_ = -1;
  SasRec<T> base_;

  // state of the last training forward
  bool training_ = false;
  uint64_t seed_ = 0, step_ = 0;
  int rounds_run_ = 0;
  int64_t batch_ = 0;
  std::vector<ItemId> ctx_;  // [T-1, B, kc]
  Buffer<ItemId> d_ctx_;     // its device copy (device backends)
  Grads g_;
  std::vector<Round> rounds_;
  Buffer<T> users_;          // [T, B, D] forward outputs (URA inputs of later rounds)
  Buffer<T> scratch2_;
  ShardedSearcher* searcher_ = nullptr;
  Lists* lists_ = nullptr;  // set during forward_lists
  // round_lists' per-row sets, sorted and distinct: A = the earlier rounds' contexts, P = the row's
  // exclusions (item 0 dropped) and earlier lists, common = A n P (scratch reused by every call).
  struct RowSets {
    std::vector<ItemId> a, p, common;
  };
  std::vector<RowSets> list_sets_;
  // round_lists' walk: per OpenMP thread, two bit sets over the catalog (A's and P's ids of the row
  // at hand, cleared after it), kept between calls
  std::vector<std::vector<uint64_t>> walk_bits_;
  int searches_ = 0;
  bool timing_ = false;
  Times times_;
};

extern template class AdaSasRec<float>;
extern template class AdaSasRec<double>;

}  // namespace ada
