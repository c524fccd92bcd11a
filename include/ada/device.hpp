// Which accelerators this build can see. No CUDA types here: a CPU-only build provides the same
// functions (reporting no devices).
#pragma once
#include <string>

namespace ada {

bool built_with_cuda();
// Number of usable CUDA devices (0 without CUDA, without a driver, or without a GPU).
int cuda_device_count();
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for device i; empty when there is none.
std::string cuda_device_description(int device);
// Makes `device` the calling thread's current CUDA device (CUDA's current device is per thread: a
// model made on device 1 and used from another thread needs it). ada::Error when that fails, or
// without CUDA.
void cuda_use_device(int device);

}  // namespace ada
