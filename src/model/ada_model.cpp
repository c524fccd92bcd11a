#include "ada/ada_model.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <type_traits>

#include "ada/check.hpp"
#include "ada/eval.hpp"
#include "ada/rng.hpp"
#include "src/core/wall_clock.hpp"

namespace ada {

namespace {

// Dropout sites per round: the backbone uses 0 .. 1+4L; the adapters use these (and kBlockSite + r).
constexpr uint32_t kSitesPerRound = 128;
constexpr uint32_t kIraSite = 40, kUraSite = 41, kBlockSite = 64;

// Rows [b*rows_per + off, +n) of a [B, rows_per, D] tensor <-> a [B, n, D] tensor (layout moves only).
template <class T>
void copy_rows_out(DeviceMemory* mem, T* dst, const T* src, int64_t B, int64_t rows_per, int64_t off, int64_t n,
                   int64_t D) {
  mem_copy_rows(mem, dst, n * D, src + off * D, rows_per * D, B, n * D);
}
template <class T>
void copy_rows_in(DeviceMemory* mem, T* dst, const T* src, int64_t B, int64_t rows_per, int64_t off, int64_t n,
                  int64_t D) {
  mem_copy_rows(mem, dst + off * D, rows_per * D, src, n * D, B, n * D);
}

// Adds a scope's wall time, minus the time its searches took (and waited for the device), to
// times->host_s; nothing when times is null (timing off).
template <class Times>
class HostTime {
 public:
  explicit HostTime(Times* times) : t_(times) {
    if (t_) inner0_ = t_->search_s + t_->wait_s;
  }
  ~HostTime() {
    if (t_) t_->host_s += seconds_since(start_) - (t_->search_s + t_->wait_s - inner0_);
  }
  HostTime(const HostTime&) = delete;
  HostTime& operator=(const HostTime&) = delete;

 private:
  Times* t_;
  WallClock::time_point start_ = WallClock::now();
  double inner0_ = 0;
};

}  // namespace

template <class T>
AdaSasRec<T>::AdaSasRec(const SasRecConfig& base, const AdaConfig& ada, Backend<T>& be)
    : ada_(ada), be_(be), mem_(be.device_memory()), kc_(ada.k_per_round()),
      base_(base, be, [this, &base](ParamStore<T>& ps) {
        const int64_t D = base.hidden;
        p_cw_ = ps.add("low_filter.complex_weight", {1, kc_ / 2 + 1, D, 2});
        p_fd_w_ = ps.add("low_filter.dense.weight", {D, D});
        p_fd_b_ = ps.add("low_filter.dense.bias", {D});
        p_fln_w_ = ps.add("low_filter.LayerNorm.weight", {D});
        p_fln_b_ = ps.add("low_filter.LayerNorm.bias", {D});
        p_aln_w_ = ps.add("att_LayerNorm.weight", {D});
        p_aln_b_ = ps.add("att_LayerNorm.bias", {D});
        p_wih_ = ps.add("post_trans_gru_layer.weight_ih_l0", {3 * D, D});
        p_whh_ = ps.add("post_trans_gru_layer.weight_hh_l0", {3 * D, D});
        p_bih_ = ps.add("post_trans_gru_layer.bias_ih_l0", {3 * D});
        p_bhh_ = ps.add("post_trans_gru_layer.bias_hh_l0", {3 * D});
        p_m1_w_ = ps.add("ffn_dense_1.weight", {2 * D, 2 * D});
        p_m1_b_ = ps.add("ffn_dense_1.bias", {2 * D});
        p_m2_w_ = ps.add("ffn_dense_2.weight", {D, 2 * D});
        p_m2_b_ = ps.add("ffn_dense_2.bias", {D});
        p_mln_w_ = ps.add("ffn_LayerNorm.weight", {D});
        p_mln_b_ = ps.add("ffn_LayerNorm.bias", {D});
      }) {
  ADA_CHECK(ada.rounds >= 1, "Ada: rounds must be >= 1, got " << ada.rounds);
  ADA_CHECK(ada.rounds <= int(kBlockSite - 1) && ada.rounds * kc_ < base.n_items,
            "Ada: " << ada.rounds << " rounds of " << kc_ << " context items do not fit a catalog of "
                    << base.n_items - 1 << " items");
  ADA_CHECK(ada.total_k >= ada.rounds, "Ada: total_k " << ada.total_k << " < rounds " << ada.rounds);
  ADA_CHECK(!mem_ || kc_ <= kGpuTopkMaxK, "Ada: " << kc_ << " context items per round (ceil(" << ada.total_k << " / "
                                                  << ada.rounds << ")) exceed the GPU top-k kernel's limit of "
                                                  << kGpuTopkMaxK << " (train this configuration on the CPU)");
}

template <class T>
void AdaSasRec<T>::init(uint64_t seed) {
  base_.init(seed);  // every tensor by name: N(0, 0.02) weights, zero ".bias", LayerNorm 1/0
  ParamStore<T>& ps = params();
  // PyTorch's nn.GRU default: U(-1/sqrt(hidden), 1/sqrt(hidden)) for weights and biases.
  const double bound = 1.0 / std::sqrt(double(base_.config().hidden));
  for (int idx : {p_wih_, p_whh_, p_bih_, p_bhh_}) {
    const uint64_t st = rng_stream(RngPurpose::kInit, uint32_t(1000 + idx));
    T* v = ps.value(idx);
    for (int64_t j = 0; j < ps.entry(idx).numel; ++j)
      v[j] = T(bound * (2.0 * double(u32_to_unit_float(random_u32(seed, st, uint64_t(j)))) - 1.0));
  }
  ps.push();
}

template <class T>
uint64_t AdaSasRec<T>::stream(int round, uint32_t site) const {
  return rng_stream(RngPurpose::kDropout, uint32_t(step_), uint32_t(round) * kSitesPerRound + site);
}

template <class T>
void AdaSasRec<T>::search(const T* u, int64_t B, int k, const Ragged& ex, ItemId* ids, float* scores) {
  const auto& c = base_.config();
  const int64_t D = c.hidden, N = c.n_items;
  ++searches_;
  WallClock::time_point t0;
  if (timing_) {
    if (mem_) {  // the forward's queued device work first, so that the search's time is its own
      t0 = WallClock::now();
      mem_->synchronize();
      times_.wait_s += seconds_since(t0);
    }
    ++times_.searches;
    t0 = WallClock::now();
  }
  if (searcher_) {
    ADA_CHECK((std::is_same_v<T, float>), "AdaSasRec: a context searcher needs a float model");
    if constexpr (std::is_same_v<T, float>) {
      const float* uh = u;
      std::vector<float> host_u;
      if (mem_) {  // the searcher takes host queries
        host_u.resize(size_t(B * D));
        mem_download(mem_, host_u.data(), u, B * D);
        uh = host_u.data();
      }
      const TopkLists top = searcher_->search(uh, B, k, ex);  // throws when a row has too few items
      std::copy(top.ids.begin(), top.ids.end(), ids);
      if (scores) std::copy(top.scores.begin(), top.scores.end(), scores);
    }
  } else {
    be_.topk(ids, u, B, base_.item_table(), base_.item_bias(), N, D, k, ex, scores);
  }
  if (timing_) times_.search_s += seconds_since(t0);  // (a search that throws is not timed)
}

// The model's own context: top-kc of <u, e_j> + b_j over 1..N-1 minus earlier context (no history).
template <class T>
void AdaSasRec<T>::context_topk(const T* u, int64_t B, const ItemId* prev, int n_prev, ItemId* out) {
  const HostTime<Times> host(timing_ ? &times_ : nullptr);
  Ragged ex;
  ex.offsets.reserve(size_t(B) + 1);
  ex.ids.reserve(size_t(B * n_prev * kc_));
  for (int64_t b = 0; b < B; ++b) {
    for (int r = 0; r < n_prev; ++r) {
      const ItemId* row = prev + (int64_t(r) * B + b) * kc_;
      ex.ids.insert(ex.ids.end(), row, row + kc_);
    }
    ex.offsets.push_back(int64_t(ex.ids.size()));
  }
  search(u, B, kc_, ex, out, nullptr);
}

// Round t of forward_lists. Per row, A = the earlier contexts (the context search excludes them), P =
// the row's exclusions and earlier lists (the list search excludes them). The best m items of the
// catalog minus item 0 and A n P, in the search order, hold the best kc items outside A (the context)
// when m >= kc + |A \ P|, and the best k_t outside P (the list) when m >= k_t + |P \ A|: both are
// prefixes of that order filtered. With m over the GPU search's limit (on every backend, so the
// searches do not depend on it), two searches. (m exceeds a row's candidates only when one of the
// two searches would: they then report it.)
template <class T>
bool AdaSasRec<T>::round_lists(const T* u, int64_t B, int t, bool with_context, ItemId* ctx_out) {
  const HostTime<Times> host(timing_ ? &times_ : nullptr);
  Lists& L = *lists_;
  const int64_t N = base_.config().n_items;
  const int kt = L.ks[size_t(t)];
  const size_t nb = static_cast<size_t>(B);
  // Per row, A and P as sorted sets kept from round to round (list_sets_): round t adds round t - 1's
  // context and list (20 ids each at K = 100, T = 5) by a merge, instead of sorting the whole sets
  // again. Rows in parallel: at B = 1024 this host work cost as much as a search on an H100.
  if (list_sets_.size() < nb) list_sets_.resize(nb);
  std::vector<int64_t> need(nb);
#pragma omp parallel if (B >= 64)
  {
    std::vector<ItemId> add, merged;  // the thread's scratch
    // s |= the n ids at `ids` (s sorted and distinct, and so after)
    auto merge_in = [&](std::vector<ItemId>& s, const ItemId* ids, int64_t n) {
      add.assign(ids, ids + n);
      std::sort(add.begin(), add.end());
      merged.resize(s.size() + add.size());
      merged.erase(std::unique(merged.begin(), std::merge(s.begin(), s.end(), add.begin(), add.end(), merged.begin())),
                   merged.end());
      s.swap(merged);
    };
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      RowSets& rs = list_sets_[size_t(b)];
      if (t == 0) {  // P = the row's exclusions (item 0 dropped: the search never offers it)
        rs.a.clear();
        rs.p.clear();
        const ItemId* ex = L.exclude->row_begin(size_t(b));
        merge_in(rs.p, ex, int64_t(L.exclude->row_end(size_t(b)) - ex));
        rs.p.erase(std::remove(rs.p.begin(), rs.p.end(), ItemId(0)), rs.p.end());
      } else {  // round t - 1's context (A) and list (P), never item 0
        merge_in(rs.a, ctx_.data() + (int64_t(t - 1) * B + b) * kc_, kc_);
        merge_in(rs.p, L.ids + b * L.total + L.start[size_t(t - 1)], L.ks[size_t(t - 1)]);
      }
      rs.common.clear();
      if (with_context)
        std::set_intersection(rs.a.begin(), rs.a.end(), rs.p.begin(), rs.p.end(), std::back_inserter(rs.common));
      const int64_t nc = int64_t(rs.common.size());
      need[size_t(b)] = std::max(with_context ? int64_t(kc_) + int64_t(rs.a.size()) - nc : 0,
                                 int64_t(kt) + int64_t(rs.p.size()) - nc);
    }
  }
  Ragged both;  // A n P per row
  int64_t m = kt, room = N;
  for (int64_t b = 0; b < B; ++b) {
    const auto& c = list_sets_[size_t(b)].common;
    both.push_row(c.data(), c.data() + c.size());
    m = std::max(m, need[size_t(b)]);
    room = std::min(room, N - 1 - int64_t(c.size()));  // the row's candidates (out-of-range exclusions are
                                                       // reported by the list-only search of the last round)
  }
  if (!with_context || m > room || m > kGpuTopkMaxK) {
    // the list alone (multi_round_topk's search): the row's exclusions and the earlier lists
    Ragged ex;
    for (int64_t b = 0; b < B; ++b) {
      ex.ids.insert(ex.ids.end(), L.exclude->row_begin(size_t(b)), L.exclude->row_end(size_t(b)));
      ex.ids.insert(ex.ids.end(), L.ids + b * L.total, L.ids + b * L.total + L.start[size_t(t)]);
      ex.offsets.push_back(int64_t(ex.ids.size()));
    }
    std::vector<ItemId> ids(size_t(B * kt));
    std::vector<float> sc(size_t(B * kt));
    search(u, B, kt, ex, ids.data(), sc.data());
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(ids.begin() + b * kt, kt, L.ids + b * L.total + L.start[size_t(t)]);
      std::copy_n(sc.begin() + b * kt, kt, L.scores + b * L.total + L.start[size_t(t)]);
    }
    return false;
  }
  std::vector<ItemId> ids(size_t(B * m));
  std::vector<float> sc(size_t(B * m));
  search(u, B, int(m), both, ids.data(), sc.data());
  int64_t short_row = -1;
  // Per row, the search's m ids in order, each tested against A and P: by a bit per catalog item
  // (the thread's walk_bits_, set from the row's sets and cleared after it) rather than two binary
  // searches per id, which were most of this host work (m is about 150 at K = 100, T = 5).
  const size_t words = size_t(N + 63) / 64;
  const int threads = B >= 64 ? omp_get_max_threads() : 1;
  if (walk_bits_.size() < size_t(threads)) walk_bits_.resize(size_t(threads));
#pragma omp parallel if (B >= 64)
  {
    std::vector<uint64_t>& bits = walk_bits_[size_t(omp_get_thread_num())];
    if (bits.size() != 2 * words) bits.assign(2 * words, 0);
    uint64_t* in_a = bits.data();
    uint64_t* in_p = bits.data() + words;
    // s's ids in the catalog (exclusions may hold others, which no search returns) into or out of set
    auto mark = [N](uint64_t* set, const std::vector<ItemId>& s, bool on) {
      for (const ItemId id : s)
        if (id >= 0 && id < N) {
          if (on)
            set[size_t(id) >> 6] |= uint64_t(1) << (id & 63);
          else
            set[size_t(id) >> 6] = 0;  // only this row's bits are set
        }
    };
    auto has = [N](const uint64_t* set, ItemId id) {
      return id >= 0 && id < N && ((set[size_t(id) >> 6] >> (id & 63)) & 1);
    };
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const auto& a = list_sets_[size_t(b)].a;
      const auto& pr = list_sets_[size_t(b)].p;
      mark(in_a, a, true);
      mark(in_p, pr, true);
      int nctx = 0, nlist = 0;
      ItemId* lid = L.ids + b * L.total + L.start[size_t(t)];
      float* lsc = L.scores + b * L.total + L.start[size_t(t)];
      for (int64_t j = 0; j < m && (nctx < kc_ || nlist < kt); ++j) {
        const ItemId id = ids[size_t(b * m + j)];
        if (nctx < kc_ && !has(in_a, id)) ctx_out[b * kc_ + nctx++] = id;
        if (nlist < kt && !has(in_p, id)) {
          lid[nlist] = id;
          lsc[nlist++] = sc[size_t(b * m + j)];
        }
      }
      mark(in_a, a, false);
      mark(in_p, pr, false);
      if (nctx < kc_ || nlist < kt) {  // cannot happen (m covers both); reported after the loop
#pragma omp critical(ada_round_lists)
        short_row = std::max(short_row, b);
      }
    }
  }
  ADA_CHECK(short_row < 0, "AdaSasRec: round " << t << " of row " << short_row
                                               << " found too few context or list items in one search");
  return true;
}

template <class T>
void AdaSasRec<T>::forward_lists(const Ragged& hist, const Ragged& exclude, const std::vector<int>& ks, T* users,
                                 ItemId* ids, float* scores) {
  ADA_CHECK(!ks.empty(), "AdaSasRec::forward_lists: no rounds");
  ADA_CHECK(exclude.rows() == hist.rows(), "AdaSasRec::forward_lists: " << exclude.rows() << " exclusion rows for "
                                                                        << hist.rows() << " histories");
  Lists L;
  L.exclude = &exclude;
  L.ks = ks;
  for (int k : ks) {
    ADA_CHECK(k >= 1, "AdaSasRec::forward_lists: a round of " << k << " items");
    L.start.push_back(L.total);
    L.total += k;
  }
  L.ids = ids;
  L.scores = scores;
  lists_ = &L;
  try {
    forward(hist, false, 0, 0, users, nullptr, int(ks.size()));
  } catch (...) {
    lists_ = nullptr;
    throw;
  }
  lists_ = nullptr;
}

template <class T>
void AdaSasRec<T>::ira_forward(Round& rd, int t, int64_t B) {
  Round& io = ira_io(t);
  const int64_t D = base_.config().hidden, K = kc_, Ntok = round_ctx(t).num_tokens(), Nc = int64_t(t) * K;
  const ParamStore<T>& ps = params();
  const float p = training_ ? base_.config().dropout : 0.0f;
  io.X.ensure(size_t(Ntok * D), mem_);
  be_.embedding_forward(io.X.data(), round_ctx(t).op_ids, base_.item_table(), nullptr, nullptr, Ntok, D);
  io.C.ensure(size_t(B * Nc * D), mem_);
  rd.blocks.resize(size_t(t));
  for (int r = 0; r < t; ++r) {
    // Without training (no dropout) block r's rows are the same in every round after r: round r + 1
    // computes them and later rounds copy its output (the same bits; a training forward keeps every
    // round's own blocks for the backward, and draws other dropout masks each round).
    if (!training_ && r + 1 < t) {
      const Block& first = rounds_[size_t(r + 1)].blocks[size_t(r)];
      copy_rows_in(mem_, io.C.data(), (ada_.filter ? first.Et : first.E).data(), B, Nc, int64_t(r) * K, K, D);
      continue;
    }
    Block& bl = rd.blocks[size_t(r)];
    const int64_t n = B * K;
    const ItemId* ids = ctx_op() + int64_t(r) * B * K;
    bl.E.ensure(size_t(n * D), mem_);
    be_.embedding_forward(bl.E.data(), ids, base_.item_table(), nullptr, nullptr, n, D);
    const T* ctx_rows = bl.E.data();
    if (ada_.filter) {
      // Et = LN_tf(E + dropout(dense(irfft(rfft(E) * W))))
      // (one op: Backend::filter_block_forward; G is not kept)
      bl.F.ensure(size_t(n * D), mem_);
      bl.R.ensure(size_t(n * D), mem_);
      bl.mean.ensure(size_t(n), mem_);
      bl.rstd.ensure(size_t(n), mem_);
      bl.Et.ensure(size_t(n * D), mem_);
      be_.filter_block_forward(bl.Et.data(), bl.F.data(), bl.R.data(), bl.mean.data(), bl.rstd.data(), bl.E.data(),
                               ps.dvalue(p_cw_), ps.dvalue(p_fd_w_), ps.dvalue(p_fd_b_), ps.dvalue(p_fln_w_),
                               ps.dvalue(p_fln_b_), B, K, D, T(ada_.ln_eps), p, seed_,
                               stream(t, kBlockSite + uint32_t(r)));
      ctx_rows = bl.Et.data();
    }
    copy_rows_in(mem_, io.C.data(), ctx_rows, B, Nc, int64_t(r) * K, K, D);
  }
  // Xp = LN(X + dropout(softmax(X C^T / sqrt(D)) C)) in one op (Backend::context_block_forward: the
  // CPU composes the primitive ops, the CUDA backend runs a fused kernel); without attention the
  // queries are zero, which makes the softmax uniform: the mean of the context.
  io.probs.ensure(size_t(Ntok * Nc), mem_);
  io.r.ensure(size_t(Ntok * D), mem_);
  io.mean.ensure(size_t(Ntok), mem_);
  io.rstd.ensure(size_t(Ntok), mem_);
  io.Xp.ensure(size_t(Ntok * D), mem_);
  be_.context_block_forward(io.Xp.data(), io.probs.data(), io.r.data(), io.mean.data(), io.rstd.data(), io.X.data(),
                            io.C.data(), ps.dvalue(p_aln_w_), ps.dvalue(p_aln_b_), round_ctx(t).tok_offsets.data(), B, Nc,
                            D, ada_.attention, p, seed_, stream(t, kIraSite), T(ada_.ln_eps));
}

template <class T>
void AdaSasRec<T>::ira_backward(Round& rd, int t, int64_t B, const T* d_xp) {
  Round& io = ira_io(t);
  const int64_t D = base_.config().hidden, K = kc_, Ntok = round_ctx(t).num_tokens(), Nc = int64_t(t) * K;
  ParamStore<T>& ps = params();
  const float p = base_.config().dropout;
  // d X = d r (residual) + attention's d queries, d C, d LN (Backend::context_block_backward)
  Buffer<T>& d_x = g_.d_x;
  d_x.ensure(size_t(Ntok * D), mem_);
  Buffer<T>& d_c = g_.d_c;
  d_c.ensure(size_t(B * Nc * D), mem_);
  mem_zero(mem_, d_c.data(), B * Nc * D);
  be_.context_block_backward(d_x.data(), d_c.data(), ps.dgrad(p_aln_w_), ps.dgrad(p_aln_b_), d_xp, io.probs.data(),
                             io.r.data(), io.mean.data(), io.rstd.data(), io.X.data(), io.C.data(),
                             ps.dvalue(p_aln_w_), round_ctx(t).tok_offsets.data(), B, Nc, D, ada_.attention, p, seed_,
                             stream(t, kIraSite));
  // history tokens: gradient into the item table (padding tokens skipped by the op)
  be_.embedding_backward(base_.item_table_grad(), nullptr, d_x.data(), round_ctx(t).op_ids, nullptr, Ntok, D);
  // each earlier round's block
  for (int r = 0; r < t; ++r) {
    Block& bl = rd.blocks[size_t(r)];
    const int64_t n = B * K;
    const ItemId* ids = ctx_op() + int64_t(r) * B * K;
    Buffer<T>& d_et = g_.d_et;
    d_et.ensure(size_t(n * D), mem_);
    copy_rows_out(mem_, d_et.data(), d_c.data(), B, Nc, int64_t(r) * K, K, D);
    if (ada_.filter) {
      // d E = the residual's gradient plus the branch's through dropout, dense and the filter
      Buffer<T>& d_e = g_.d_e;
      d_e.ensure(size_t(n * D), mem_);
      be_.filter_block_backward(d_e.data(), ps.dgrad(p_cw_), ps.dgrad(p_fd_w_), ps.dgrad(p_fd_b_),
                                ps.dgrad(p_fln_w_), ps.dgrad(p_fln_b_), d_et.data(), bl.E.data(), bl.F.data(),
                                bl.R.data(), bl.mean.data(), bl.rstd.data(), ps.dvalue(p_cw_), ps.dvalue(p_fd_w_),
                                ps.dvalue(p_fln_w_), B, K, D, p, seed_, stream(t, kBlockSite + uint32_t(r)));
    }
    be_.embedding_backward(base_.item_table_grad(), nullptr, ada_.filter ? g_.d_e.data() : d_et.data(), ids,
                           nullptr, n, D);
  }
}

// The fused user adapter op's arguments (GRU + MLP configuration).
template <class T>
UserAdapterTensors<const T*> AdaSasRec<T>::ura_weights() {
  const ParamStore<T>& ps = params();
  UserAdapterTensors<const T*> w;
  w.w_ih = ps.dvalue(p_wih_);
  w.b_ih = ps.dvalue(p_bih_);
  w.w_hh = ps.dvalue(p_whh_);
  w.b_hh = ps.dvalue(p_bhh_);
  w.w1 = ps.dvalue(p_m1_w_);
  w.b1 = ps.dvalue(p_m1_b_);
  w.w2 = ps.dvalue(p_m2_w_);
  w.b2 = ps.dvalue(p_m2_b_);
  w.ln_w = ps.dvalue(p_mln_w_);
  w.ln_b = ps.dvalue(p_mln_b_);
  return w;
}

template <class T>
UserAdapterShape AdaSasRec<T>::ura_shape(int t, int64_t B, float p) const {
  UserAdapterShape sh;
  sh.B = B;
  sh.D = base_.config().hidden;
  sh.t = t;
  sh.p = p;
  sh.seed = seed_;
  sh.stream = stream(t, kUraSite);
  sh.eps = ada_.ln_eps;
  return sh;
}

// The saved arrays live in the round's buffers; the work scratch is g_.d_gi (free between ops).
template <class T>
void AdaSasRec<T>::ura_op_buffers(Round& rd, int t, int64_t B) {
  const int64_t D = base_.config().hidden;
  rd.hs.ensure(size_t((t + 1) * B * D), mem_);
  rd.gh.ensure(size_t(t * B * 3 * D), mem_);
  rd.gates.ensure(size_t(t * B * 3 * D), mem_);
  rd.a1r.ensure(size_t(B * 2 * D), mem_);
  rd.r2.ensure(size_t(B * D), mem_);
  rd.mean2.ensure(size_t(B), mem_);
  rd.rstd2.ensure(size_t(B), mem_);
  g_.d_gi.ensure(size_t(user_adapter_work_size(ura_shape(t, B, 0.0f))), mem_);
}

template <class T>
UserAdapterSaved<T> AdaSasRec<T>::ura_saved(Round& rd) {
  UserAdapterSaved<T> sv;
  sv.hs = rd.hs.data();
  sv.gates = rd.gates.data();
  sv.gh = rd.gh.data();
  sv.a1r = rd.a1r.data();
  sv.r2 = rd.r2.data();
  sv.mean = rd.mean2.data();
  sv.rstd = rd.rstd2.data();
  return sv;
}

template <class T>
void AdaSasRec<T>::ura_forward(Round& rd, int t, int64_t B, const T* users, T* out) {
  const int64_t D = base_.config().hidden;
  const ParamStore<T>& ps = params();
  const float p = training_ ? base_.config().dropout : 0.0f;
  if (ada_.gru && ada_.mlp) {  // the default configuration: one op (Backend::user_adapter_forward)
    ura_op_buffers(rd, t, B);
    be_.user_adapter_forward(out, ura_saved(rd), g_.d_gi.data(), users, rd.v.data(), ura_weights(),
                             ura_shape(t, B, p));
    return;
  }
  // h: GRU over the earlier adapted vectors users[0..t-1] from h_0 = 0 (or their mean without GRU)
  rd.hs.ensure(size_t((t + 1) * B * D), mem_);
  mem_zero(mem_, rd.hs.data(), B * D);
  if (ada_.gru) {
    rd.gi.ensure(size_t(t * B * 3 * D), mem_);
    rd.gh.ensure(size_t(t * B * 3 * D), mem_);
    rd.gates.ensure(size_t(t * B * 3 * D), mem_);
    for (int s = 0; s < t; ++s) {
      T* gi = rd.gi.data() + int64_t(s) * B * 3 * D;
      T* gh = rd.gh.data() + int64_t(s) * B * 3 * D;
      be_.linear_forward(gi, users + int64_t(s) * B * D, ps.dvalue(p_wih_), ps.dvalue(p_bih_), B, D, 3 * D);
      be_.linear_forward(gh, rd.hs.data() + int64_t(s) * B * D, ps.dvalue(p_whh_), ps.dvalue(p_bhh_), B, D, 3 * D);
      be_.gru_cell_forward(rd.hs.data() + int64_t(s + 1) * B * D, rd.gates.data() + int64_t(s) * B * 3 * D, gi,
                           gh, rd.hs.data() + int64_t(s) * B * D, B, D);
    }
  } else {
    T* h = rd.hs.data() + int64_t(t) * B * D;
    mem_zero(mem_, h, B * D);
    for (int s = 0; s < t; ++s) be_.add_inplace(h, users + int64_t(s) * B * D, B * D);
    be_.scale(h, B * D, T(1) / T(t));
  }
  const T* h = rd.hs.data() + int64_t(t) * B * D;
  const T* v = rd.v.data();
  rd.r2.ensure(size_t(B * D), mem_);
  rd.a2.ensure(size_t(B * D), mem_);
  if (ada_.mlp) {
    // v' = LN(v + dropout(W2 relu(W1 [v; h] + b1) + b2))
    rd.z.ensure(size_t(B * 2 * D), mem_);
    rd.a1.ensure(size_t(B * 2 * D), mem_);
    rd.a1r.ensure(size_t(B * 2 * D), mem_);
    be_.concat_cols(rd.z.data(), v, h, B, D, D);
    be_.linear_forward(rd.a1.data(), rd.z.data(), ps.dvalue(p_m1_w_), ps.dvalue(p_m1_b_), B, 2 * D, 2 * D);
    be_.activation_forward(rd.a1r.data(), rd.a1.data(), B * 2 * D, Activation::kRelu);
    be_.linear_forward(rd.a2.data(), rd.a1r.data(), ps.dvalue(p_m2_w_), ps.dvalue(p_m2_b_), B, 2 * D, D);
  } else {
    mem_copy(mem_, rd.a2.data(), h, B * D);  // v' = LN(v + dropout(h))
  }
  be_.dropout_forward(rd.r2.data(), rd.a2.data(), B * D, p, seed_, stream(t, kUraSite));
  be_.add_inplace(rd.r2.data(), v, B * D);
  rd.mean2.ensure(size_t(B), mem_);
  rd.rstd2.ensure(size_t(B), mem_);
  be_.layernorm_forward(out, rd.mean2.data(), rd.rstd2.data(), rd.r2.data(), ps.dvalue(p_mln_w_), ps.dvalue(p_mln_b_),
                        B, D, T(ada_.ln_eps));
}

template <class T>
void AdaSasRec<T>::ura_backward(Round& rd, int t, int64_t B, const T* d_out, T* d_users) {
  const int64_t D = base_.config().hidden;
  ParamStore<T>& ps = params();
  const float p = base_.config().dropout;
  if (ada_.gru && ada_.mlp) {  // Backend::user_adapter_backward; d v into scratch2_ as below
    scratch2_.ensure(size_t(B * D), mem_);
    g_.d_gi.ensure(size_t(user_adapter_work_size(ura_shape(t, B, p))), mem_);
    UserAdapterTensors<T*> g;
    g.w_ih = ps.dgrad(p_wih_);
    g.b_ih = ps.dgrad(p_bih_);
    g.w_hh = ps.dgrad(p_whh_);
    g.b_hh = ps.dgrad(p_bhh_);
    g.w1 = ps.dgrad(p_m1_w_);
    g.b1 = ps.dgrad(p_m1_b_);
    g.w2 = ps.dgrad(p_m2_w_);
    g.b2 = ps.dgrad(p_m2_b_);
    g.ln_w = ps.dgrad(p_mln_w_);
    g.ln_b = ps.dgrad(p_mln_b_);
    be_.user_adapter_backward(scratch2_.data(), d_users, g, g_.d_gi.data(), d_out, ura_saved(rd), users_.data(),
                              rd.v.data(), ura_weights(), ura_shape(t, B, p));
    return;
  }
  Buffer<T>&d_r2 = g_.d_r2, &d_a2 = g_.d_a2, &d_h = g_.d_h;
  d_r2.ensure(size_t(B * D), mem_);
  d_a2.ensure(size_t(B * D), mem_);
  d_h.ensure(size_t(B * D), mem_);
  be_.layernorm_backward(d_r2.data(), ps.dgrad(p_mln_w_), ps.dgrad(p_mln_b_), d_out, rd.r2.data(), ps.dvalue(p_mln_w_),
                         rd.mean2.data(), rd.rstd2.data(), B, D);
  // scratch2_ collects d v, the gradient w.r.t. the backbone's user vector (residual + MLP branch);
  // backward() hands it to the backbone.
  scratch2_.ensure(size_t(B * D), mem_);
  mem_copy(mem_, scratch2_.data(), d_r2.data(), B * D);
  be_.dropout_backward(d_a2.data(), d_r2.data(), B * D, p, seed_, stream(t, kUraSite));
  if (ada_.mlp) {
    Buffer<T>&d_a1r = g_.d_a1r, &d_a1 = g_.d_a1, &d_z = g_.d_z;
    d_a1r.ensure(size_t(B * 2 * D), mem_);
    d_a1.ensure(size_t(B * 2 * D), mem_);
    d_z.ensure(size_t(B * 2 * D), mem_);
    be_.linear_backward(d_a1r.data(), ps.dgrad(p_m2_w_), ps.dgrad(p_m2_b_), d_a2.data(), rd.a1r.data(),
                        ps.dvalue(p_m2_w_), B, 2 * D, D, false);
    be_.activation_backward(d_a1.data(), d_a1r.data(), rd.a1.data(), B * 2 * D, Activation::kRelu);
    be_.linear_backward(d_z.data(), ps.dgrad(p_m1_w_), ps.dgrad(p_m1_b_), d_a1.data(), rd.z.data(), ps.dvalue(p_m1_w_),
                        B, 2 * D, 2 * D, false);
    mem_zero(mem_, d_h.data(), B * D);
    be_.split_cols_add(scratch2_.data(), d_h.data(), d_z.data(), B, D, D);
  } else {
    mem_copy(mem_, d_h.data(), d_a2.data(), B * D);
  }
  if (ada_.gru) {
    Buffer<T>&d_gi = g_.d_gi, &d_gh = g_.d_gh, &d_hprev = g_.d_hprev;
    d_gi.ensure(size_t(B * 3 * D), mem_);
    d_gh.ensure(size_t(B * 3 * D), mem_);
    d_hprev.ensure(size_t(B * D), mem_);
    for (int s = t - 1; s >= 0; --s) {
      be_.gru_cell_backward(d_gi.data(), d_gh.data(), d_hprev.data(), d_h.data(),
                            rd.gates.data() + int64_t(s) * B * 3 * D, rd.gh.data() + int64_t(s) * B * 3 * D,
                            rd.hs.data() + int64_t(s) * B * D, B, D);
      be_.linear_backward(d_hprev.data(), ps.dgrad(p_whh_), ps.dgrad(p_bhh_), d_gh.data(),
                          rd.hs.data() + int64_t(s) * B * D, ps.dvalue(p_whh_), B, D, 3 * D, true);
      be_.linear_backward(d_users + int64_t(s) * B * D, ps.dgrad(p_wih_), ps.dgrad(p_bih_), d_gi.data(),
                          users_.data() + int64_t(s) * B * D, ps.dvalue(p_wih_), B, D, 3 * D, true);
      std::swap(d_h, d_hprev);
    }
  } else {
    be_.scale(d_h.data(), B * D, T(1) / T(t));
    for (int s = 0; s < t; ++s) be_.add_inplace(d_users + int64_t(s) * B * D, d_h.data(), B * D);
  }
}

template <class T>
void AdaSasRec<T>::forward(const Ragged& hist, bool training, uint64_t seed, uint64_t step, T* users,
                           ItemId* ctx_out, int rounds) {
  const int R = rounds > 0 ? rounds : ada_.rounds;
  const int64_t B = int64_t(hist.rows()), D = base_.config().hidden;
  training_ = training;
  seed_ = seed;
  step_ = step;
  rounds_run_ = R;
  batch_ = B;
  searches_ = 0;
  rounds_.resize(size_t(R));
  ctx_.resize(size_t(std::max(0, R - 1)) * size_t(B * kc_));
  if (mem_) d_ctx_.ensure(ctx_.size(), mem_);
  users_.ensure(size_t(R * B * D), mem_);
  for (int t = 0; t < R; ++t) {
    Round& rd = rounds_[size_t(t)];
    typename SasRec<T>::Context& sc = round_ctx(t);
    if (training || t == 0) base_.prepare(sc, hist, training, seed, step, uint32_t(t) * kSitesPerRound);
    rd.ira = t > 0 && ada_.ira;
    rd.ura = t > 0 && ada_.ura;
    if (rd.ira) ira_forward(rd, t, B);
    T* u = users_.data() + int64_t(t) * B * D;
    if (rd.ura) {
      rd.v.ensure(size_t(B * D), mem_);
      base_.forward(sc, rd.ira ? ira_io(t).Xp.data() : nullptr, rd.v.data());
      ura_forward(rd, t, B, users_.data(), u);
    } else {
      base_.forward(sc, rd.ira ? ira_io(t).Xp.data() : nullptr, u);
    }
    const bool context = t + 1 < R;
    ItemId* round_ids = context ? ctx_.data() + int64_t(t) * B * kc_ : nullptr;
    const bool both = lists_ && round_lists(u, B, t, context, round_ids);
    if (context) {
      if (!both) context_topk(u, B, ctx_.data(), t, round_ids);
      if (mem_) mem_upload(mem_, d_ctx_.data() + int64_t(t) * B * kc_, round_ids, B * kc_);
    }
  }
  mem_copy(mem_, users, users_.data(), R * B * D);
  if (ctx_out) std::copy(ctx_.begin(), ctx_.end(), ctx_out);
}

template <class T>
void AdaSasRec<T>::backward(T* d_users) {
  ADA_CHECK(training_, "AdaSasRec::backward without a training forward");
  const int64_t B = batch_, D = base_.config().hidden;
  for (int t = rounds_run_ - 1; t >= 0; --t) {
    Round& rd = rounds_[size_t(t)];
    T* du = d_users + int64_t(t) * B * D;  // complete: later rounds have added their URA terms
    const T* d_v = du;
    if (rd.ura) {
      ura_backward(rd, t, B, du, d_users);
      d_v = scratch2_.data();
    }
    Buffer<T>& d_tokens = g_.d_tokens;
    if (rd.ira) d_tokens.ensure(size_t(round_ctx(t).num_tokens() * D), mem_);
    base_.backward(round_ctx(t), d_v, rd.ira ? d_tokens.data() : nullptr);
    if (rd.ira) ira_backward(rd, t, B, d_tokens.data());
  }
}

template class AdaSasRec<float>;
template class AdaSasRec<double>;

}  // namespace ada
