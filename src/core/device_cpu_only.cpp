// Device discovery in a build without CUDA (the CUDA build has kernels/device.cu instead).
#include "ada/device.hpp"

#ifndef ADA_WITH_CUDA
namespace ada {
bool built_with_cuda() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_description(int) { return ""; }
}  // namespace ada
#endif
