// DeviceArray (include/ada/cuda_backend.hpp) and cuda_synchronize for the CUDA build.
#include "ada/cuda_backend.hpp"
#include "kernels/cuda_util.cuh"

namespace ada {

void cuda_synchronize() { ADA_CUDA_CHECK(cudaDeviceSynchronize()); }

template <class T>
DeviceArray<T>::DeviceArray(size_t n) {
  if (n == 0) return;
  void* p = nullptr;
  ADA_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  ptr_ = static_cast<T*>(p);
  n_ = n;
}

template <class T>
void DeviceArray<T>::release() noexcept {
  if (ptr_) cudaFree(ptr_);  // cudaFree waits for the device; errors cannot be reported from here
  ptr_ = nullptr;
  n_ = 0;
}

// cudaMemcpy runs on the legacy default stream, which orders with the backend's blocking stream;
// download also waits for the whole device first, so it sees every queued op's results.
template <class T>
void DeviceArray<T>::upload(const T* src, size_t n) {
  ADA_CHECK(n <= n_, "DeviceArray::upload: " << n << " elements into an array of " << n_);
  if (n == 0) return;
  ADA_CUDA_CHECK(cudaMemcpy(ptr_, src, n * sizeof(T), cudaMemcpyHostToDevice));
}

template <class T>
void DeviceArray<T>::download(T* dst, size_t n) const {
  ADA_CHECK(n <= n_, "DeviceArray::download: " << n << " elements from an array of " << n_);
  ADA_CUDA_CHECK(cudaDeviceSynchronize());
  if (n == 0) return;
  ADA_CUDA_CHECK(cudaMemcpy(dst, ptr_, n * sizeof(T), cudaMemcpyDeviceToHost));
}

template <class T>
void DeviceArray<T>::fill_zero() {
  if (n_ == 0) return;
  ADA_CUDA_CHECK(cudaMemset(ptr_, 0, n_ * sizeof(T)));
  ADA_CUDA_CHECK(cudaDeviceSynchronize());
}

template class DeviceArray<float>;
template class DeviceArray<int32_t>;
template class DeviceArray<int64_t>;
template class DeviceArray<uint8_t>;

}  // namespace ada
