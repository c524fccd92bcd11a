// Memory for the engine: Buffer<T> owns an aligned allocation and is move-only (copies are explicit,
// with clone(), to prevent performance accidents); View<T> is a non-owning pointer + shape passed by
// value to ops. A Buffer lives in host memory, or in a backend's device memory when it is given the
// backend's DeviceMemory (Backend::device_memory(); null = host). Model code moves data only through
// the mem_* helpers below, which take that pointer, so the same code runs on either memory.
#pragma once
#include <cassert>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <vector>

#include "ada/check.hpp"

namespace ada {

// Device memory of a backend (implemented by the CUDA backend; the CPU backend has none). Copies and
// zeroing are ordered with the backend's ops: upload() may return before the device has the data
// but the source may be reused at once; download() waits for every op queued before it.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual void* allocate(size_t bytes) = 0;  // throws std::bad_alloc / ada::Error when it cannot
  virtual void release(void* p) noexcept = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* p, size_t bytes) = 0;
  // rows x row_bytes from src (rows src_stride bytes apart) to dst (dst_stride apart); every size
  // and both pointers a multiple of 4 bytes.
  virtual void copy_rows(void* dst, size_t dst_stride, const void* src, size_t src_stride,
                         size_t row_bytes, size_t rows) = 0;
  // Waits until every op and copy queued before it has finished (throws on a device error).
  virtual void synchronize() = 0;
};

// The same moves on either memory (mem == nullptr: host). Typed counts are elements of T. Source and
// destination must not overlap (on a device the copy is cudaMemcpyAsync).
template <class T>
void mem_copy(DeviceMemory* mem, T* dst, const T* src, int64_t n) {
  if (n <= 0 || dst == src) return;
  if (mem)
    mem->copy(dst, src, size_t(n) * sizeof(T));
  else
    std::memmove(dst, src, size_t(n) * sizeof(T));
}
template <class T>
void mem_zero(DeviceMemory* mem, T* p, int64_t n) {
  if (n <= 0) return;
  if (mem)
    mem->zero(p, size_t(n) * sizeof(T));
  else
    std::memset(static_cast<void*>(p), 0, size_t(n) * sizeof(T));
}
// host -> memory and memory -> host (plain copies without a device)
template <class T>
void mem_upload(DeviceMemory* mem, T* dst, const T* host_src, int64_t n) {
  if (n <= 0) return;
  if (mem)
    mem->upload(dst, host_src, size_t(n) * sizeof(T));
  else
    std::memcpy(static_cast<void*>(dst), host_src, size_t(n) * sizeof(T));
}
template <class T>
void mem_download(DeviceMemory* mem, T* host_dst, const T* src, int64_t n) {
  if (n <= 0) return;
  if (mem)
    mem->download(host_dst, src, size_t(n) * sizeof(T));
  else
    std::memcpy(static_cast<void*>(host_dst), src, size_t(n) * sizeof(T));
}
// rows of `cols` elements: dst[r * dst_ld + c] = src[r * src_ld + c]
template <class T>
void mem_copy_rows(DeviceMemory* mem, T* dst, int64_t dst_ld, const T* src, int64_t src_ld, int64_t rows,
                   int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  if (mem) {
    mem->copy_rows(dst, size_t(dst_ld) * sizeof(T), src, size_t(src_ld) * sizeof(T), size_t(cols) * sizeof(T),
                   size_t(rows));
  } else {
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<void*>(dst + r * dst_ld), src + r * src_ld, size_t(cols) * sizeof(T));
  }
}

template <class T>
class Buffer;

// A host array as the ops of a backend with memory `mem` take it: the array itself on the host, else
// its copy uploaded into `staging` (grown as needed).
template <class T>
const T* mem_stage(DeviceMemory* mem, const T* host, int64_t n, Buffer<T>& staging);

template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n, DeviceMemory* mem = nullptr) { ensure(n, mem); }
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_), cap_(o.cap_), mem_(o.mem_) {
    o.data_ = nullptr;
    o.size_ = o.cap_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = o.data_;
      size_ = o.size_;
      cap_ = o.cap_;
      mem_ = o.mem_;
      o.data_ = nullptr;
      o.size_ = o.cap_ = 0;
    }
    return *this;
  }

  // Sets the size to n, keeping the allocation when it is large enough (activations of the next
  // batch reuse the memory of the last one). Contents are unspecified after a growth. A buffer that
  // grows a second time (its size follows the batches' token counts, which set new maxima now and
  // then) gets 1/8 of headroom: every growth is a fresh allocation whose pages fault in on first
  // touch, and on the 2-core dev VM a fault costs about 17 us (perf: 6% of an Ada step for ~5k faults).
  void ensure(size_t n) {
    if (n > cap_) {
      const size_t cap = cap_ ? n + n / 8 : n;
      release();
      const size_t bytes = ((cap * sizeof(T) + 63) / 64) * 64;
      if (mem_) {
        data_ = static_cast<T*>(mem_->allocate(bytes));
      } else {
        data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
        if (!data_) throw std::bad_alloc();
      }
      cap_ = cap;
    }
    size_ = n;
  }
  // The same in `mem` (null: host); a buffer moving between memories drops its contents. The
  // DeviceMemory (its backend) must outlive the buffer.
  void ensure(size_t n, DeviceMemory* mem) {
    if (mem != mem_) {
      release();
      mem_ = mem;
    }
    ensure(n);
  }
  // Host buffers only (device contents go through mem_zero / mem_copy).
  void fill(T v) {
    ADA_CHECK(!mem_, "Buffer::fill on device memory");
    for (size_t i = 0; i < size_; ++i) data_[i] = v;
  }
  Buffer clone() const {
    ADA_CHECK(!mem_, "Buffer::clone on device memory");
    Buffer b(size_);
    if (size_) std::memcpy(b.data_, data_, size_ * sizeof(T));
    return b;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  DeviceMemory* memory() const { return mem_; }
  T& operator[](size_t i) {  // host buffers only
    assert(!mem_);
    return data_[i];
  }
  const T& operator[](size_t i) const {
    assert(!mem_);
    return data_[i];
  }

 private:
  void release() noexcept {
    if (data_) {
      if (mem_)
        mem_->release(data_);
      else
        std::free(data_);
    }
    data_ = nullptr;
    size_ = cap_ = 0;
  }
  T* data_ = nullptr;
  size_t size_ = 0, cap_ = 0;
  DeviceMemory* mem_ = nullptr;
};

template <class T>
const T* mem_stage(DeviceMemory* mem, const T* host, int64_t n, Buffer<T>& staging) {
  if (!mem) return host;
  staging.ensure(size_t(n), mem);
  mem_upload(mem, staging.data(), host, n);
  return staging.data();
}

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
