// Memory for the engine: Buffer<T> owns an aligned allocation and is move-only (copies are explicit,
// with clone(), to prevent performance accidents); View<T> is a non-owning pointer + shape passed by
// value to ops. Host memory here; the CUDA backend adds device buffers with the same interface.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <vector>

#include "ada/check.hpp"

namespace ada {

template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) { ensure(n); }
  ~Buffer() { std::free(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_), cap_(o.cap_) {
    o.data_ = nullptr;
    o.size_ = o.cap_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = o.data_;
      size_ = o.size_;
      cap_ = o.cap_;
      o.data_ = nullptr;
      o.size_ = o.cap_ = 0;
    }
    return *this;
  }

  // Sets the size to n, keeping the allocation when it is large enough (activations of the next
  // batch reuse the memory of the last one). Contents are unspecified after a growth.
  void ensure(size_t n) {
    if (n > cap_) {
      std::free(data_);
      const size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
      data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      cap_ = n;
    }
    size_ = n;
  }
  void fill(T v) {
    for (size_t i = 0; i < size_; ++i) data_[i] = v;
  }
  Buffer clone() const {
    Buffer b(size_);
    if (size_) std::memcpy(b.data_, data_, size_ * sizeof(T));
    return b;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

// Non-owning row-major view with a shape; cheap to copy, checked element access for tests and tools.
template <class T>
struct View {
  T* data = nullptr;
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  T& at(std::initializer_list<int64_t> idx) const {
    ADA_CHECK(idx.size() == shape.size(), "View: " << idx.size() << " indices for a " << shape.size() << "-d view");
    int64_t off = 0, k = 0;
    for (int64_t i : idx) {
      ADA_CHECK(i >= 0 && i < shape[size_t(k)], "View: index " << i << " out of range [0, " << shape[size_t(k)]
                                                               << ") in dimension " << k);
      off = off * shape[size_t(k)] + i;
      ++k;
    }
    return data[off];
  }
};

}  // namespace ada
