// The GPU shard searcher in a build without CUDA (the CUDA build has kernels/topk.cu instead).
#include "ada/topk.hpp"

#ifndef ADA_WITH_CUDA
#include "ada/check.hpp"

namespace ada {
void set_gpu_topk_tensor_cores(TensorCores) {}
void set_gpu_topk_staged(bool) {}
void set_gpu_topk_tc_kernel(TcKernel) {}
void set_gpu_topk_select_threads(int) {}
void set_gpu_topk_autotune(TopkAutotune) {}
TopkAutotune gpu_topk_autotune() { return TopkAutotune::kOff; }
std::vector<GpuTopkTuning> gpu_topk_tunings() { return {}; }

std::unique_ptr<TopkSearcher> make_gpu_searcher(const float*, const float*, int64_t, int64_t, int64_t, int device) {
  ADA_FAIL("gpu searcher: this build of ada-retrieval has no CUDA (configure with -DADA_WITH_CUDA=ON and nvcc on "
           "PATH); cannot use device "
           << device);
}
}  // namespace ada
#endif
