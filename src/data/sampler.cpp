// Training batches: per-epoch shuffle and uniform negatives with rejection (reference-spec.md 1.4).
//
// All randomness is a pure function of (seed, epoch, sample index) through the counter RNG, so a
// batch is the same whatever the batch size, the thread that fills it or the order of the calls:
//   shuffle:   word i of stream (kShuffle, epoch) drives step i of a Fisher-Yates shuffle;
//   negatives: try t of draw j for sample s is word ((s * kMaxTries + t) * n_neg + j) of stream
//              (kNegatives, epoch); s is the index into samples_, not the batch position.
// With t outermost, the first tries of a sample's n_neg draws are consecutive words, so one Philox
// block serves four draws (rejections are rare: ~9 of 12,101 items on Beauty). That keeps a whole
// Beauty epoch (15.4M draws) at about 0.2 s on one core.
#include <algorithm>
#include <numeric>
#include <vector>

#include "ada/check.hpp"
#include "ada/data.hpp"
#include "ada/rng.hpp"

namespace ada {

namespace {

// The reference retries a rejected negative up to 100 times, then uses the padding item 0.
constexpr uint32_t kMaxTries = 100;

}  // namespace

TrainSampler::TrainSampler(const Dataset& ds, uint64_t seed, int n_neg, int max_len)
    : ds_(ds), seed_(seed), n_neg_(n_neg), max_len_(max_len) {
  ADA_CHECK(n_neg >= 0, "TrainSampler: n_neg must be >= 0, got " << n_neg);
  ADA_CHECK(max_len >= 1, "TrainSampler: max_len must be >= 1, got " << max_len);
  ADA_CHECK(ds.n_items >= 2, "TrainSampler: dataset has no items (n_items " << ds.n_items << ")");
  samples_ = train_samples(ds);
  ADA_CHECK(samples_.size() <= size_t(UINT32_MAX), "TrainSampler: too many samples");
  full_ = full_histories(ds);
  // fill_batch indexes a bitmap by item id, so every id must be a real item.
  for (size_t i = 0; i < full_.ids.size(); ++i)
    ADA_CHECK(full_.ids[i] >= 1 && full_.ids[i] < ds.n_items,
              "TrainSampler: item id " << full_.ids[i] << " outside 1.." << ds.n_items - 1);
  // Usable straight away; a trainer calls start_epoch(e) at the start of every epoch anyway.
  start_epoch(0);
}

void TrainSampler::start_epoch(uint32_t epoch) {
  epoch_ = epoch;
  const size_t n = samples_.size();
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0u);
  const uint64_t stream = rng_stream(RngPurpose::kShuffle, epoch);
  // Fisher-Yates from the back: position i swaps with a uniform j in [0, i].
  for (size_t i = n; i-- > 1;) {
    const uint32_t j = u32_to_range(random_u32(seed_, stream, i), uint32_t(i + 1));
    std::swap(order_[i], order_[j]);
  }
}

void TrainSampler::fill_batch(size_t b, size_t batch_size, Batch& out) const {
  ADA_CHECK(batch_size > 0, "fill_batch: batch_size must be > 0");
  ADA_CHECK(b < num_batches(batch_size), "fill_batch: batch "
                                             << b << " out of range (" << num_batches(batch_size)
                                             << " batches of " << batch_size << ")");
  const size_t begin = b * batch_size;
  const size_t rows = std::min(batch_size, samples_.size() - begin);
  const size_t width = size_t(n_neg_) + 1;
  const uint64_t stream = rng_stream(RngPurpose::kNegatives, epoch_);
  const uint32_t n_real = uint32_t(ds_.n_items - 1);  // negatives are uniform over 1..n_items-1
  const uint64_t n_neg = uint64_t(n_neg_);
  std::vector<uint32_t> first_try(n_neg);
  // Bitmap of the current row's excluded items: O(1) rejection tests for any history length.
  // Local to the call (n_items bits), so concurrent calls share nothing.
  std::vector<uint64_t> excluded((size_t(ds_.n_items) + 63) / 64, 0);
  auto is_excluded = [&](ItemId v) { return (excluded[size_t(v) >> 6] >> (v & 63)) & 1; };

  out.n_neg = n_neg_;
  out.users.resize(rows);
  out.histories.offsets.assign(1, 0);
  out.histories.ids.clear();
  out.items.resize(rows * width);

  for (size_t r = 0; r < rows; ++r) {
    const uint32_t s = order_[begin + r];
    const TrainSample smp = samples_[s];
    const std::vector<ItemId>& seq = ds_.sequences[size_t(smp.user)];
    out.users[r] = smp.user;
    // History = seq[:pos], keeping only the most recent max_len items.
    const int32_t h0 = std::max(0, smp.pos - max_len_);
    out.histories.push_row(seq.data() + h0, seq.data() + smp.pos);

    const ItemId pos_item = seq[size_t(smp.pos)];
    ItemId* row = out.items.data() + r * width;
    row[0] = pos_item;
    const ItemId* excl_b = full_.row_begin(size_t(smp.user));
    const ItemId* excl_e = full_.row_end(size_t(smp.user));
    for (const ItemId* e = excl_b; e != excl_e; ++e)
      excluded[size_t(*e) >> 6] |= uint64_t(1) << (*e & 63);
    const uint64_t sample_base = uint64_t(s) * kMaxTries * n_neg;
    random_u32_fill(seed_, stream, sample_base, n_neg, first_try.data());
    for (uint64_t j = 0; j < n_neg; ++j) {
      uint32_t x = first_try[j];
      ItemId neg = 0;
      for (uint32_t t = 0;;) {
        const ItemId v = ItemId(1 + u32_to_range(x, n_real));
        // The positive is in the full sequence, so the bitmap rejects it too.
        if (!is_excluded(v)) {
          neg = v;
          break;
        }
        if (++t == kMaxTries) break;
        x = random_u32(seed_, stream, sample_base + t * n_neg + j);
      }
      row[1 + j] = neg;
    }
    for (const ItemId* e = excl_b; e != excl_e; ++e) excluded[size_t(*e) >> 6] = 0;
  }
}

}  // namespace ada
