#include "ada/retriever.hpp"

#include <algorithm>
#include <numeric>

#include "ada/ada_model.hpp"
#include "ada/check.hpp"
#include "ada/checkpoint.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/device.hpp"
#include "ada/eval.hpp"
#include "ada/fileio.hpp"
#include "ada/topk.hpp"
#include "src/core/wall_clock.hpp"

namespace ada {

struct AdaRetriever::Impl {
  ModelInfo info;
  std::unique_ptr<Backend<float>> be;
  std::unique_ptr<SasRec<float>> base;
  std::unique_ptr<AdaSasRec<float>> ada;
  std::vector<std::string> names;
  // null: the backend's own search (CPU: the sgemm path of eval.hpp; CUDA: the fused kernel through
  // Backend::topk on the device-resident model)
  std::unique_ptr<ShardedSearcher> searcher;
  DeviceMemory* mem = nullptr;  // the backend's device memory (null on the CPU)
  int gpu = 0;                  // its CUDA device
  // A GPU model's device made current for the calling thread (the model may have been loaded in
  // another: a BatchingRetriever's worker, a server's threads).
  void use_device() const {
    if (mem) cuda_use_device(gpu);
  }
  int64_t batch = 1024;         // users per pass (RetrieverOptions::batch)
  Buffer<float> d_users;        // [T, B, D] on the device
  bool timing = false;          // retrieve_batch's timing (set_timing)
  RetrieveTiming timed;
  SasRec<float>& backbone() { return ada ? ada->base() : *base; }

  void make_searcher(const RetrieverOptions& opt) {
    const bool cuda = opt.device == "cuda";
    if (opt.shards <= (cuda ? 1 : 0)) return;
    SasRec<float>& bb = backbone();
    const int64_t N = info.sasrec.n_items, D = info.sasrec.hidden;
    searcher = std::make_unique<ShardedSearcher>();
    for (auto [lo, hi] : split_items(N, opt.shards))
      searcher->add(cuda ? make_gpu_searcher(bb.host_item_table(), bb.host_item_bias(), lo, hi, D, opt.gpu)
                         : make_cpu_searcher(bb.host_item_table(), bb.host_item_bias(), lo, hi, D));
    if (ada) ada->set_context_searcher(searcher.get());
  }

  // Round t takes the top ks[t] of users[t] over the catalog minus the history and the earlier
  // rounds' items (multi_round_topk's rule) through the shard searcher.
  void searcher_rounds(const float* users, const Ragged& hist, const std::vector<int>& ks, ItemId* ids,
                       float* scores) {
    const int64_t B = int64_t(hist.rows()), D = info.sasrec.hidden;
    const int K = std::accumulate(ks.begin(), ks.end(), 0);
    std::vector<std::vector<ItemId>> earlier(static_cast<size_t>(B));
    int col = 0;
    for (size_t t = 0; t < ks.size(); ++t) {
      Ragged extra;
      for (int64_t b = 0; b < B; ++b) extra.push_row(earlier[size_t(b)].data(), earlier[size_t(b)].data() + earlier[size_t(b)].size());
      const TopkLists top = searcher->search(users + int64_t(t) * B * D, B, ks[t], hist, &extra);
      for (int64_t b = 0; b < B; ++b)
        for (int i = 0; i < ks[t]; ++i) {
          const size_t src = size_t(b * ks[t] + i), dst = size_t(b * K + col + i);
          ids[dst] = top.ids[src];
          scores[dst] = top.scores[src];
          earlier[size_t(b)].push_back(top.ids[src]);
        }
      col += ks[t];
    }
  }

  // Checks every item id of seqs (`who` names the caller in errors), before any work is done.
  void check_ids(const std::vector<std::vector<ItemId>>& seqs, const char* who) const {
    const int32_t N = info.sasrec.n_items;
    for (size_t b = 0; b < seqs.size(); ++b)
      for (ItemId it : seqs[b])
        ADA_CHECK(it >= 1 && it < N, who << ": item id " << it << " (sequence " << b << ") is not in the catalog 1.."
                                         << N - 1);
  }

  // Rows [b0, b1) of seqs (checked by check_ids) laid out as a batch.
  static Ragged histories(const std::vector<std::vector<ItemId>>& seqs, size_t b0, size_t b1) {
    Ragged hist;
    for (size_t b = b0; b < b1; ++b) hist.push_row(seqs[b].data(), seqs[b].data() + seqs[b].size());
    return hist;
  }

  // The user vectors of rounds 0..T-1 for B histories: [T, B, D] (round-major). A base model's one
  // vector serves every round.
  void check_rounds(int T) const {
    ADA_CHECK(T >= 1, "retrieve: T must be >= 1, got " << T);
    ADA_CHECK(!ada || int64_t(T - 1) * ada->k_ctx() <= int64_t(info.sasrec.n_items) - 1,
              "retrieve: T = " << T << " rounds need " << int64_t(T - 1) * (ada ? ada->k_ctx() : 0)
                               << " context items, the catalog has " << info.sasrec.n_items - 1);
  }

  // An Ada model's lists: the rounds' forward with one search per round for its list and the next
  // round's context (AdaSasRec::forward_lists; the user vectors stay where the model runs).
  void ada_lists(const Ragged& hist, const std::vector<int>& ks, ItemId* ids, float* scores) {
    check_rounds(int(ks.size()));
    const int64_t B = int64_t(hist.rows()), D = info.sasrec.hidden;
    const size_t n = ks.size() * size_t(B * D);
    std::vector<float> host;
    float* out = nullptr;
    if (mem) {
      d_users.ensure(n, mem);
      out = d_users.data();
    } else {
      host.resize(n);
      out = host.data();
    }
    ada->forward_lists(hist, hist, ks, out, ids, scores);
  }

  // wait (timing on): adds the time spent waiting for the forward's device work.
  std::vector<float> round_users(const Ragged& hist, int T, double* wait = nullptr) {
    check_rounds(T);
    const int64_t B = int64_t(hist.rows()), D = info.sasrec.hidden;
    std::vector<float> users(size_t(T) * size_t(B * D));
    if (B == 0) return users;
    // On a device the vectors stay there too (d_users) for the device search.
    float* out = users.data();
    if (mem) {
      d_users.ensure(users.size(), mem);
      out = d_users.data();
    }
    if (ada) {
      ada->forward(hist, false, 0, 0, out, nullptr, T);
    } else {
      backbone().forward(hist, false, 0, 0, out);
      for (int t = 1; t < T; ++t) mem_copy(mem, out + t * B * D, out, B * D);
    }
    if (mem) {
      if (wait) {
        const WallClock::time_point t0 = WallClock::now();
        mem->synchronize();
        *wait += seconds_since(t0);
      }
      mem_download(mem, users.data(), out, int64_t(users.size()));
    }
    return users;
  }
};

AdaRetriever::AdaRetriever(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AdaRetriever::AdaRetriever(AdaRetriever&&) noexcept = default;
AdaRetriever& AdaRetriever::operator=(AdaRetriever&&) noexcept = default;
AdaRetriever::~AdaRetriever() = default;

AdaRetriever AdaRetriever::load(const std::string& checkpoint, const RetrieverOptions& options) {
  const std::string path =
      file_exists(checkpoint + "/model.safetensors") ? checkpoint + "/model.safetensors" : checkpoint;
  // the header now; each tensor is read once, straight into the model's parameters (load_params)
  const SafeTensorsFile st(path);
  auto impl = std::make_unique<Impl>();
  impl->info = checkpoint_info(st, path);
  impl->info.sasrec.dropout = 0.0f;  // serving never drops out
  ADA_CHECK(options.device == "cpu" || options.device == "cuda",
            "retriever: device must be \"cpu\" or \"cuda\", got \"" << options.device << "\"");
  ADA_CHECK(options.shards >= 0, "retriever: shards must be >= 0, got " << options.shards);
  ADA_CHECK(options.batch >= 1, "retriever: batch must be >= 1, got " << options.batch);
  impl->batch = options.batch;
  if (options.device == "cuda") {
    const int n = built_with_cuda() ? cuda_device_count() : 0;
    ADA_CHECK(options.gpu >= 0 && options.gpu < n,
              "retriever: CUDA device " << options.gpu << " is not available ("
                                        << (built_with_cuda() ? std::to_string(n) + " CUDA devices visible"
                                                              : std::string("this build has no CUDA support"))
                                        << ")");
  }
  impl->be = options.device == "cuda" ? make_cuda_backend(options.gpu) : make_cpu_backend<float>();
  impl->mem = impl->be->device_memory();
  impl->gpu = options.gpu;
  if (impl->info.ada) {
    impl->ada = std::make_unique<AdaSasRec<float>>(impl->info.sasrec, impl->info.ada_cfg, *impl->be);
    load_params(impl->ada->params(), st, path);
  } else {
    impl->base = std::make_unique<SasRec<float>>(impl->info.sasrec, *impl->be);
    load_params(impl->base->params(), st, path, false);
  }
  const auto slash = path.find_last_of('/');
  const std::string map_path = (slash == std::string::npos ? std::string(".") : path.substr(0, slash)) + "/item_map.tsv";
  if (file_exists(map_path)) impl->names = load_item_map(map_path);
  impl->make_searcher(options);
  return AdaRetriever(std::move(impl));
}

bool AdaRetriever::is_ada() const { return impl_->ada != nullptr; }
int32_t AdaRetriever::num_items() const { return impl_->info.sasrec.n_items; }
const std::vector<std::string>& AdaRetriever::item_names() const { return impl_->names; }

int AdaRetriever::embedding_dim() const { return impl_->info.sasrec.hidden; }
int AdaRetriever::rounds() const { return impl_->ada ? impl_->info.ada_cfg.rounds : 1; }
const float* AdaRetriever::item_embeddings() const { return impl_->backbone().host_item_table(); }
const float* AdaRetriever::item_bias() const { return impl_->backbone().host_item_bias(); }

std::vector<float> AdaRetriever::user_vectors(const std::vector<std::vector<ItemId>>& seqs, int T) {
  ADA_CHECK(T >= 1, "user_vectors: T must be >= 1, got " << T);
  impl_->check_ids(seqs, "user_vectors");
  impl_->check_rounds(T);
  impl_->use_device();
  const size_t B = seqs.size(), D = size_t(embedding_dim());
  std::vector<float> out(B * size_t(T) * D);  // [B, T, D]
  for (size_t b0 = 0; b0 < B; b0 += size_t(impl_->batch)) {
    const size_t b1 = std::min(B, b0 + size_t(impl_->batch)), nb = b1 - b0;
    const std::vector<float> users = impl_->round_users(Impl::histories(seqs, b0, b1), T);
    for (size_t t = 0; t < size_t(T); ++t)  // [T, nb, D] -> rows b0.. of [B, T, D]
      for (size_t b = 0; b < nb; ++b)
        std::copy_n(users.begin() + long((t * nb + b) * D), D, out.begin() + long(((b0 + b) * size_t(T) + t) * D));
  }
  return out;
}

std::vector<int> AdaRetriever::round_sizes(int k, int T) {
  ADA_CHECK(T >= 1, "retrieve: T must be >= 1, got " << T);
  ADA_CHECK(k >= 1, "retrieve: k must be >= 1, got " << k);
  ADA_CHECK(T <= k, "retrieve: T = " << T << " rounds cannot each return an item when k = " << k);
  std::vector<int> ks(size_t(T), k / T);
  for (int t = 0; t < k % T; ++t) ++ks[size_t(t)];
  return ks;
}

int64_t AdaRetriever::candidates(Span<const ItemId> seq) const {
  std::vector<ItemId> distinct(seq.begin(), seq.end());
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  return int64_t(num_items()) - 1 - int64_t(distinct.size());
}

void AdaRetriever::check_request(Span<const ItemId> seq, int k) const {
  const int64_t N = num_items();
  for (ItemId it : seq) ADA_CHECK(it >= 1 && it < N, "retrieve: item id " << it << " is not in the catalog 1.." << N - 1);
  const int64_t c = candidates(seq);
  ADA_CHECK(k <= c, "retrieve: k = " << k << " but the history leaves only " << c << " candidate items (" << N - 1
                                     << " in the catalog, " << N - 1 - c << " in the history)");
}

void AdaRetriever::set_timing(bool on) {
  impl_->timing = on;
  if (impl_->ada) impl_->ada->set_timing(on);
}
RetrieveTiming AdaRetriever::timing() const { return impl_->timed; }
void AdaRetriever::reset_timing() { impl_->timed = RetrieveTiming{}; }

std::vector<std::vector<Retrieved>> AdaRetriever::retrieve_batch(const std::vector<std::vector<ItemId>>& seqs, int k,
                                                                 int T) {
  const WallClock::time_point t_call = WallClock::now();
  RetrieveTiming part;  // this call's wait_s, search_s, host_s and searches
  double model_s = 0;   // this call's model work whole: forwards, searches and their bookkeeping
  const AdaSasRec<float>::Times model0 = impl_->ada ? impl_->ada->times() : AdaSasRec<float>::Times{};
  const std::vector<int> ks = round_sizes(k, T);
  const int32_t N = num_items();
  const int64_t B = int64_t(seqs.size()), D = impl_->info.sasrec.hidden;
  impl_->check_ids(seqs, "retrieve");  // every id and every row's candidates checked before any work
  impl_->use_device();
  for (size_t b = 0; b < seqs.size(); ++b) {
    if (int64_t(k) <= int64_t(N) - 1 - int64_t(seqs[b].size())) continue;  // enough even with no repeats
    const int64_t c = candidates(seqs[b]);
    ADA_CHECK(k <= c, "retrieve: k = " << k << " but sequence " << b << " leaves only " << c << " candidate items ("
                                       << N - 1 << " in the catalog, " << N - 1 - c << " in the history)");
  }
  std::vector<std::vector<Retrieved>> out(seqs.size());
  std::vector<ItemId> ids;
  std::vector<float> scores;
  for (int64_t b0 = 0; b0 < B; b0 += impl_->batch) {  // passes of `batch` users
    const int64_t nb = std::min(impl_->batch, B - b0);
    const Ragged hist = Impl::histories(seqs, size_t(b0), size_t(b0 + nb));
    ids.resize(size_t(nb * k));
    scores.resize(size_t(nb * k));
    const WallClock::time_point t_model = WallClock::now();
    if (impl_->ada) {  // the rounds' lists searched with their contexts
      impl_->ada_lists(hist, ks, ids.data(), scores.data());
    } else {  // one user vector for every round
      const std::vector<float> users = impl_->round_users(hist, T, impl_->timing ? &part.wait_s : nullptr);
      const WallClock::time_point t_search = WallClock::now();
      SasRec<float>& bb = impl_->backbone();
      if (impl_->searcher)
        impl_->searcher_rounds(users.data(), hist, ks, ids.data(), scores.data());
      else if (impl_->mem)  // the device-resident user vectors, searched where they are
        multi_round_topk(*impl_->be, impl_->d_users.data(), nb, bb.item_table(), bb.item_bias(), N, D, ks, hist,
                         ids.data(), scores.data());
      else
        multi_round_topk(users.data(), nb, bb.host_item_table(), bb.host_item_bias(), N, D, ks, hist, ids.data(),
                         scores.data());
      part.search_s += seconds_since(t_search);
      part.searches += T;
    }
    model_s += seconds_since(t_model);
    // rows in parallel: at B = 1024 the lists' allocation and copy took 0.8 ms on one core
#pragma omp parallel for schedule(static) if (nb >= 64)
    for (int64_t b = 0; b < nb; ++b) {
      std::vector<Retrieved>& list = out[size_t(b0 + b)];
      list.reserve(size_t(k));
      int round = 0, left = ks[0];
      for (int j = 0; j < k; ++j) {
        while (left == 0) left = ks[size_t(++round)];
        list.push_back({ids[size_t(b * k + j)], scores[size_t(b * k + j)], round});
        --left;
      }
    }
  }
  if (impl_->timing) {
    RetrieveTiming& a = impl_->timed;
    const double total = seconds_since(t_call);
    if (impl_->ada) {  // the model's own account of its calls
      const AdaSasRec<float>::Times& m = impl_->ada->times();
      part.wait_s = m.wait_s - model0.wait_s;
      part.search_s = m.search_s - model0.search_s;
      part.host_s = m.host_s - model0.host_s;
      part.searches = m.searches - model0.searches;
    }
    a.calls += 1;
    a.users += B;
    a.searches += part.searches;
    a.total_s += total;
    a.request_s += total - model_s;
    a.forward_s += model_s - part.wait_s - part.search_s - part.host_s;
    a.wait_s += part.wait_s;
    a.search_s += part.search_s;
    a.host_s += part.host_s;
  }
  return out;
}

std::vector<Retrieved> AdaRetriever::retrieve_scored(Span<const ItemId> seq, int k, int T) {
  return retrieve_batch({std::vector<ItemId>(seq.begin(), seq.end())}, k, T)[0];
}

std::vector<ItemId> AdaRetriever::retrieve(Span<const ItemId> seq, int k, int T) {
  std::vector<ItemId> ids;
  for (const Retrieved& r : retrieve_scored(seq, k, T)) ids.push_back(r.item);
  return ids;
}

}  // namespace ada
