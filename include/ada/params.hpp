// One flat parameter buffer with a name -> (offset, shape) table (design.md). Gradients mirror it;
// the optimizer, gradient clipping and checkpoints work on the flat buffers. The gradients are
// allocated (zero) by the first call that asks for them, so a model that only serves (AdaRetriever,
// evaluation) never holds them: 256 MB for a 1M-item table. That first call must not race another.
//
// Two views: value()/values()/grads() are the HOST arrays (init, checkpoints, tests); dvalue()/
// dgrad()/flat_values()/flat_grads() are the arrays the backend's ops take. Without a device they
// are the same memory. After attach(mem) (a model built on a device backend does it) the op arrays
// are a device mirror and the model trains there: push() copies host values to the device (after
// init or a load), pull() / pull_grads() copy the device's back (before a checkpoint or a host read).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ada/check.hpp"
#include "ada/tensor.hpp"

namespace ada {

struct ParamEntry {
  std::string name;             // the reference PyTorch name, e.g. "item_embedding.weight"
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
};

template <class T>
class ParamStore {
 public:
  ParamStore() = default;
  // Copies hold the host values only (no device mirror).
  ParamStore(const ParamStore& o)
      : entries_(o.entries_),
        value_(o.value_),
        grad_(o.grad_),
        total_(o.total_),
        finalized_(o.finalized_),
        grads_ready_(o.grads_ready_) {}
  ParamStore& operator=(const ParamStore& o) {
    ADA_CHECK(!mem_, "ParamStore: assignment to a store with a device mirror (assign values() and push())");
    if (this != &o) {
      entries_ = o.entries_;
      value_ = o.value_;
      grad_ = o.grad_;
      total_ = o.total_;
      finalized_ = o.finalized_;
      grads_ready_ = o.grads_ready_;
      dvalue_ = Buffer<T>();
      dgrad_ = Buffer<T>();
      mem_ = nullptr;
    }
    return *this;
  }

  // Registers a tensor; returns its index. Call before finalize().
  int add(const std::string& name, std::vector<int64_t> shape) {
    ADA_CHECK(!finalized_, "ParamStore: add(" << name << ") after finalize()");
    ADA_CHECK(find(name) < 0, "ParamStore: duplicate parameter " << name);
    ParamEntry e;
    e.name = name;
    e.shape = std::move(shape);
    e.numel = 1;
    for (int64_t d : e.shape) e.numel *= d;
    e.offset = total_;
    total_ += (e.numel + 15) / 16 * 16;  // 64-byte aligned starts for vector loads
    entries_.push_back(std::move(e));
    return int(entries_.size()) - 1;
  }
  void finalize() {
    finalized_ = true;
    value_.assign(size_t(total_), T(0));
  }
  int find(const std::string& name) const {
    for (size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].name == name) return int(i);
    return -1;
  }
  const std::vector<ParamEntry>& entries() const { return entries_; }
  const ParamEntry& entry(int i) const { return entries_[size_t(i)]; }
  T* value(int i) { return value_.data() + entries_[size_t(i)].offset; }
  const T* value(int i) const { return value_.data() + entries_[size_t(i)].offset; }
  T* grad(int i) {
    ensure_grads();
    return grad_.data() + entries_[size_t(i)].offset;
  }
  std::vector<T>& values() { return value_; }
  const std::vector<T>& values() const { return value_; }
  std::vector<T>& grads() {
    ensure_grads();
    return grad_;
  }
  int64_t flat_size() const { return total_; }
  bool has_grads() const { return grads_ready_; }  // allocated yet (by grad(), grads(), flat_grads(), ...)
  // Number of trainable scalars (padding between tensors excluded).
  int64_t count() const {
    int64_t n = 0;
    for (const auto& e : entries_) n += e.numel;
    return n;
  }
  void zero_grad() {
    if (!grads_ready_) return ensure_grads();  // allocated as zeros
    if (mem_)
      mem_zero(mem_, dgrad_.data(), total_);
    else
      std::fill(grad_.begin(), grad_.end(), T(0));
  }

  // ---- the backend's view (device mirror after attach) ----
  void attach(DeviceMemory* mem) {
    ADA_CHECK(finalized_, "ParamStore: attach() before finalize()");
    mem_ = mem;
    if (!mem) {
      dvalue_ = Buffer<T>();
      dgrad_ = Buffer<T>();
      return;
    }
    dvalue_.ensure(size_t(total_), mem);
    push();
    if (grads_ready_) {
      dgrad_.ensure(size_t(total_), mem);
      mem_zero(mem_, dgrad_.data(), total_);
    }
  }
  DeviceMemory* memory() const { return mem_; }
  T* flat_values() { return mem_ ? dvalue_.data() : value_.data(); }
  T* flat_grads() {
    ensure_grads();
    return mem_ ? dgrad_.data() : grad_.data();
  }
  T* dvalue(int i) { return flat_values() + entries_[size_t(i)].offset; }
  const T* dvalue(int i) const {
    return (mem_ ? dvalue_.data() : value_.data()) + entries_[size_t(i)].offset;
  }
  T* dgrad(int i) { return flat_grads() + entries_[size_t(i)].offset; }
  void push() {
    if (mem_) mem_upload(mem_, dvalue_.data(), value_.data(), total_);
  }
  void pull() {
    if (mem_) mem_download(mem_, value_.data(), dvalue_.data(), total_);
  }
  void pull_grads() {
    ensure_grads();
    if (mem_) mem_download(mem_, grad_.data(), dgrad_.data(), total_);
  }

 private:
  void ensure_grads() {
    if (grads_ready_) return;
    ADA_CHECK(finalized_, "ParamStore: gradients before finalize()");
    grad_.assign(size_t(total_), T(0));
    if (mem_) {
      dgrad_.ensure(size_t(total_), mem_);
      mem_zero(mem_, dgrad_.data(), total_);
    }
    grads_ready_ = true;
  }

  std::vector<ParamEntry> entries_;
  std::vector<T> value_, grad_;
  int64_t total_ = 0;
  bool finalized_ = false;
  bool grads_ready_ = false;  // grad_ (and dgrad_ with a device) allocated
  DeviceMemory* mem_ = nullptr;
  Buffer<T> dvalue_, dgrad_;
};

}  // namespace ada
