// Device discovery and the CUDA backend's entry points in a build without CUDA (the CUDA build has
// kernels/device.cu and kernels/cuda_backend.cu instead). Discovery reports no devices; everything
// that would need a device throws ada::Error.
#include "ada/device.hpp"

#ifndef ADA_WITH_CUDA
#include "ada/check.hpp"
#include "ada/cuda_backend.hpp"

namespace ada {
bool built_with_cuda() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_description(int) { return ""; }

namespace {
[[noreturn]] void no_cuda(const char* what) {
  ADA_FAIL(what << ": this build of ada-retrieval has no CUDA support (configure with "
                   "-DADA_WITH_CUDA=ON and a CUDA toolkit)");
}
}  // namespace

std::unique_ptr<Backend<float>> make_cuda_backend(int) { no_cuda("make_cuda_backend"); }
void cuda_use_device(int) { no_cuda("cuda_use_device"); }
void cuda_synchronize() { no_cuda("cuda_synchronize"); }
void set_cuda_phase_clock(bool) {}
PhaseClockReading cuda_phase_clock(const std::string&) { return {}; }

template <class T>
DeviceArray<T>::DeviceArray(size_t n) {
  if (n > 0) no_cuda("DeviceArray");
}
template <class T>
void DeviceArray<T>::upload(const T*, size_t n) {
  if (n > 0) no_cuda("DeviceArray::upload");
}
template <class T>
void DeviceArray<T>::download(T*, size_t n) const {
  if (n > 0) no_cuda("DeviceArray::download");
}
template <class T>
void DeviceArray<T>::fill_zero() {}
template <class T>
void DeviceArray<T>::release() noexcept {}

template class DeviceArray<float>;
template class DeviceArray<int32_t>;
template class DeviceArray<int64_t>;
template class DeviceArray<uint8_t>;
}  // namespace ada
#endif
