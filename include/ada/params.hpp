// One flat parameter buffer with a name -> (offset, shape) table (design.md). Gradients mirror it;
// the optimizer, gradient clipping and checkpoints work on the flat buffers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ada/check.hpp"

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
    grad_.assign(size_t(total_), T(0));
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
  T* grad(int i) { return grad_.data() + entries_[size_t(i)].offset; }
  std::vector<T>& values() { return value_; }
  const std::vector<T>& values() const { return value_; }
  std::vector<T>& grads() { return grad_; }
  int64_t flat_size() const { return total_; }
  // Number of trainable scalars (padding between tensors excluded).
  int64_t count() const {
    int64_t n = 0;
    for (const auto& e : entries_) n += e.numel;
    return n;
  }
  void zero_grad() { std::fill(grad_.begin(), grad_.end(), T(0)); }

 private:
  std::vector<ParamEntry> entries_;
  std::vector<T> value_, grad_;
  int64_t total_ = 0;
  bool finalized_ = false;
};

}  // namespace ada
