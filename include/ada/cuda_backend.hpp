// The CUDA implementation of Backend<float> (kernels/cuda_backend.cu), and a small owner of device
// memory that plain C++ code (tests, benchmarks, later the models) can use without CUDA headers.
// A build without CUDA provides the same symbols; they throw ada::Error
// (src/core/device_cpu_only.cpp).
//
// Pointer convention of the CUDA backend:
//   * every T* / int32_t* data argument of a Backend op (activations, parameters, gradients, ids,
//     positions, items, probabilities) is a DEVICE pointer (e.g. DeviceArray::data());
//   * JaggedLayout::tok_offsets and JaggedLayout::all_masked (attention, gather_last,
//     scatter_last_add) and the q_offsets of the context attention and the context block
//     (context_block_forward/backward) are HOST pointers, as the CPU
//     backend reads them; the backend copies them into its own device scratch during the call, so
//     the caller may change or free them as soon as the call returns.
//   * topk: U, table and bias are DEVICE pointers; the exclusion lists (a host Ragged) and out_ids
//     are HOST memory (the call waits for the stream to return the ids).
//   * device_memory() is the backend's DeviceMemory (tensor.hpp): cudaMalloc/cudaFree, and copies,
//     zeroing and copy_rows queued on the backend's stream (download waits for it), so Buffers made
//     with it hold device pointers for the ops above. It lives as long as the backend.
// Stream and synchronisation: ops are queued on the backend's own stream (a blocking stream, so the
// legacy default stream, cudaMemcpy and DeviceArray::upload/download order with it) and return
// before the device finishes, except sampled_bce and sum_squares, which return a value, and topk,
// which returns host ids: those wait for the stream. DeviceArray::download and cuda_synchronize()
// wait for all device work.
// Numerics: gemm/linear go to cuBLAS in FP32 (CUBLAS_DEFAULT_MATH, no TF32); every other op is a
// hand-written kernel with the CPU backend's formulas; dropout masks are the counter RNG's, bit for
// bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ada/backend.hpp"

namespace ada {

// The CUDA backend on `device` (made current on the calling thread). Throws ada::Error when the
// library was built without CUDA, or when the device cannot be used (no driver, no GPU, bad index).
std::unique_ptr<Backend<float>> make_cuda_backend(int device = 0);

// Waits until every queued operation on the current device has finished (throws on a device error).
void cuda_synchronize();

// An owned array of n elements in device memory of the current device (move-only). n = 0 holds no
// memory. upload/download copy the first n elements (n <= size()) and are synchronous: download
// waits for all queued device work first, so it sees the results of asynchronous backend ops.
// Instantiated for float, int32_t, int64_t and uint8_t.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n);
  ~DeviceArray() { release(); }
  DeviceArray(DeviceArray&& o) noexcept : ptr_(o.ptr_), n_(o.n_) {
    o.ptr_ = nullptr;
    o.n_ = 0;
  }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = o.ptr_;
      n_ = o.n_;
      o.ptr_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void upload(const T* src, size_t n);
  void download(T* dst, size_t n) const;
  void fill_zero();  // every byte 0 (synchronous)

  // Convenience: a device copy of a host vector, and the whole array back to the host.
  static DeviceArray from(const std::vector<T>& v) {
    DeviceArray a(v.size());
    a.upload(v.data(), v.size());
    return a;
  }
  std::vector<T> to_vector() const {
    std::vector<T> v(n_);
    download(v.data(), n_);
    return v;
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  void release() noexcept;
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// Phase clocks of CUDA kernels, for benchmarks: where a kernel's time goes, without a profiler.
// While on, the clocked kernels ("topk_select", "filter_block_forward", "context_block_forward",
// "context_block_backward", "attention_forward", "attention_backward": SASRec's attention where
// the thread-per-pair kernels take the shape; "user_adapter_backward": its kernel, not the cuBLAS
// GEMMs and column sums after it) run a separate instantiation whose thread 0 of each block reads the SM
// clock at the kernel's phase boundaries and adds each phase's cycles, and a few counts, into device
// sums (a few atomics per block; the results are unchanged, the time a little longer).
// set_cuda_phase_clock(true) starts every clock from zero, (false) stops them; both wait for the
// device. cuda_phase_clock(kernel) waits for the device and returns, since the start, how many
// units of the kernel were counted (a query, a filter block, ...: `unit`) and, per slot, its name
// and its mean per unit (SM cycles for the phases, each timed from the end of the one before; then
// counts), except the slots named max_...: the largest cycles any block (or persistent CTA) took
// from its start to its end. An unknown kernel is an ada::Error. Without CUDA: a no-op, and
// readings of 0 units.
struct PhaseClockReading {
  int64_t units = 0;
  std::string unit;
  std::vector<std::string> names;
  std::vector<double> means;
};
void set_cuda_phase_clock(bool on);
PhaseClockReading cuda_phase_clock(const std::string& kernel);

extern template class DeviceArray<float>;
extern template class DeviceArray<int32_t>;
extern template class DeviceArray<int64_t>;
extern template class DeviceArray<uint8_t>;

}  // namespace ada
