#include "ada/batching.hpp"

#include <algorithm>

#include "ada/check.hpp"

namespace ada {

BatchingRetriever::BatchingRetriever(AdaRetriever& model, int k, int T, int max_batch)
    : model_(model), k_(k), T_(T), max_batch_(max_batch) {
  (void)AdaRetriever::round_sizes(k, T);  // k >= 1, T >= 1, T <= k
  ADA_CHECK(max_batch >= 1, "BatchingRetriever: max_batch must be >= 1, got " << max_batch);
  worker_ = std::thread([this] { work(); });
}

BatchingRetriever::~BatchingRetriever() {
  {
    const std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  worker_.join();
}

std::vector<Retrieved> BatchingRetriever::retrieve(std::vector<ItemId> seq) {
  return submit(std::move(seq)).get();  // rethrows an error of the batch
}

std::future<std::vector<Retrieved>> BatchingRetriever::submit(std::vector<ItemId> seq) {
  model_.check_request(seq, k_);  // here, so that this request alone fails (num_items only: thread-safe)
  std::future<std::vector<Retrieved>> answer;
  {
    const std::lock_guard<std::mutex> lock(mu_);
    ADA_CHECK(!stopping_, "BatchingRetriever: retrieve() after the destructor began");
    queue_.push_back(Request{std::move(seq), {}});
    answer = queue_.back().answer.get_future();
  }
  wake_.notify_one();
  return answer;
}

BatchingRetriever::Stats BatchingRetriever::stats() const {
  const std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void BatchingRetriever::work() {
  std::vector<Request> batch;
  std::vector<std::vector<ItemId>> seqs;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to serve
      const size_t take = std::min(queue_.size(), size_t(max_batch_));
      batch.clear();
      for (size_t i = 0; i < take; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    seqs.clear();
    for (Request& r : batch) seqs.push_back(std::move(r.seq));
    try {
      std::vector<std::vector<Retrieved>> lists = model_.retrieve_batch(seqs, k_, T_);
      {
        const std::lock_guard<std::mutex> lock(mu_);
        stats_.requests += int64_t(batch.size());
        stats_.batches += 1;
        stats_.largest = std::max(stats_.largest, int64_t(batch.size()));
      }
      for (size_t i = 0; i < batch.size(); ++i) batch[i].answer.set_value(std::move(lists[i]));
    } catch (...) {
      for (Request& r : batch) r.answer.set_exception(std::current_exception());
    }
  }
}

}  // namespace ada
