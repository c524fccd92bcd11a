// Many threads, one model: dynamic batching in front of an AdaRetriever.
//
//   ada::AdaRetriever model = ada::AdaRetriever::load("runs/beauty-ada", {"cuda"});
//   ada::BatchingRetriever server(model, 100, 5);        // k = 100 over T = 5 rounds
//   // from any number of threads, e.g. one per connection:
//   std::vector<ada::Retrieved> items = server.retrieve({3, 17, 42});
//
// An AdaRetriever serves one thread at a time, and a request of one history uses a GPU (or the
// CPU's matrix units) poorly. Callers of retrieve() wait while one worker thread serves every
// request waiting at that moment with one retrieve_batch() call, up to max_batch of them: a lone
// request goes at once (there is no timer), and under load the batches fill up by themselves
// (requests that arrive during a batch make the next one).
//
// Each request is checked in its caller's thread before it is queued (item ids in 1..N-1, k within
// its history's candidates), so a bad request throws ada::Error there and never fails the batch it
// would have joined. An error of the batch itself (the model, the device) reaches every request of
// that batch. As with retrieve_batch(), a request's scores can differ in the last bits with the
// batch it lands in (matrix products of another shape), so near ties may order differently.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "ada/retriever.hpp"

namespace ada {

class BatchingRetriever {
 public:
  // `model` must outlive this object, and no one else may use it meanwhile. k and T as in
  // AdaRetriever::retrieve (checked here: ada::Error); max_batch >= 1.
  BatchingRetriever(AdaRetriever& model, int k, int T, int max_batch = 1024);
  // Serves the requests already queued, then stops the worker.
  ~BatchingRetriever();
  BatchingRetriever(const BatchingRetriever&) = delete;
  BatchingRetriever& operator=(const BatchingRetriever&) = delete;

  // Thread-safe. Blocks until the request's batch is served.
  std::vector<Retrieved> retrieve(std::vector<ItemId> user_seq);
  // The same without waiting: the request is checked (ada::Error here) and queued; the future holds
  // its answer, or its batch's error. A caller with several requests submits them all, then waits.
  std::future<std::vector<Retrieved>> submit(std::vector<ItemId> user_seq);

  struct Stats {
    int64_t requests = 0;   // served (a request refused by its checks is not counted)
    int64_t batches = 0;    // retrieve_batch() calls
    int64_t largest = 0;    // the largest batch
  };
  Stats stats() const;

 private:
  struct Request {
    std::vector<ItemId> seq;
    std::promise<std::vector<Retrieved>> answer;
  };
  void work();

  AdaRetriever& model_;
  const int k_, T_, max_batch_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Request> queue_;
  bool stopping_ = false;
  Stats stats_;
  std::thread worker_;  // last: started once everything above is ready
};

}  // namespace ada
