// Device discovery for the CUDA build.
#include <cuda_runtime.h>

#include <cstdio>

#include "ada/check.hpp"
#include "ada/device.hpp"

namespace ada {

bool built_with_cuda() { return true; }

int cuda_device_count() {
  int n = 0;
  // No driver or no GPU is not an error for the caller: it means "no devices".
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void cuda_use_device(int device) {
  const cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    ADA_FAIL("CUDA device " << device << " cannot be used: " << cudaGetErrorString(e));
  }
}

std::string cuda_device_description(int device) {
  cudaDeviceProp p{};
  if (device < 0 || device >= cuda_device_count() || cudaGetDeviceProperties(&p, device) != cudaSuccess)
    return "";
  char buf[320];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                double(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace ada
