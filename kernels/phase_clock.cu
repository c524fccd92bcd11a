// The phase clocks' host side (kernels/phase_clock.cuh): the device sums of each clocked kernel and
// the names of their slots.
#include "kernels/phase_clock.cuh"

#include <array>

#include "ada/check.hpp"
#include "ada/cuda_backend.hpp"
#include "kernels/cuda_util.cuh"

namespace ada {
namespace cuda {
namespace {

struct Spec {
  const char* kernel;
  const char* unit;                 // what slot 0 counts
  std::vector<const char*> slots;   // slots 1.. (cycles, then counts)
};

// The slot order of each kernel's PhaseClock calls (the enums next to the kernels).
const std::array<Spec, size_t(Clocked::kCount)>& specs() {
  static const std::array<Spec, size_t(Clocked::kCount)> s = {{
      {"topk_select", "query",
       {"keys", "tau", "offers", "rescore", "sort", "out", "tau_steps", "rescored_groups", "candidates",
        "max_block"}},
      {"filter_block_forward", "filter block",
       {"cta_setup", "stage", "filter", "linear", "norm", "wait", "max_cta"}},
      {"context_block_forward", "block", {"stage", "scores", "pc", "norm", "queries", "max_block"}},
      {"context_block_backward", "sample", {"stage", "queries", "wait", "dc", "flush", "rounds", "max_block"}},
      {"attention_forward", "sequence", {"stage", "pairs", "max_block"}},
      {"attention_backward", "sequence", {"stage", "queries", "restage", "keys", "max_block"}},
      {"user_adapter_backward", "CTA of 8 rows", {"ln", "w2", "w1", "steps", "max_cta"}},
  }};
  return s;
}

std::array<unsigned long long*, size_t(Clocked::kCount)> g_sums{};

size_t slot_count(size_t k) { return specs()[k].slots.size() + 1; }

}  // namespace

unsigned long long* phase_sums(Clocked k) { return g_sums[size_t(k)]; }

void phase_clock_switch(bool on) {
  ADA_CUDA_CHECK(cudaDeviceSynchronize());  // no queued clocked kernel still adds into the sums
  for (size_t k = 0; k < g_sums.size(); ++k) {
    if (g_sums[k]) ADA_CUDA_CHECK(cudaFree(g_sums[k]));
    g_sums[k] = nullptr;
    if (!on) continue;
    const size_t bytes = slot_count(k) * sizeof(unsigned long long);
    ADA_CUDA_CHECK(cudaMalloc(&g_sums[k], bytes));
    ADA_CUDA_CHECK(cudaMemset(g_sums[k], 0, bytes));
  }
}

int64_t phase_clock_read(const std::string& kernel, std::string& unit, std::vector<std::string>& names,
                         std::vector<double>& means) {
  for (size_t k = 0; k < specs().size(); ++k) {
    const Spec& sp = specs()[k];
    if (kernel != sp.kernel) continue;
    unit = sp.unit;
    names.assign(sp.slots.begin(), sp.slots.end());
    means.assign(names.size(), 0.0);
    if (!g_sums[k]) return 0;
    std::vector<unsigned long long> h(slot_count(k));
    ADA_CUDA_CHECK(cudaDeviceSynchronize());
    ADA_CUDA_CHECK(cudaMemcpy(h.data(), g_sums[k], h.size() * sizeof(h[0]), cudaMemcpyDeviceToHost));
    const double units = double(h[0]);
    for (size_t i = 0; i < names.size(); ++i) {
      const bool is_max = names[i].compare(0, 4, "max_") == 0;  // a maximum, not a sum
      means[i] = is_max ? double(h[i + 1]) : units > 0 ? double(h[i + 1]) / units : 0.0;
    }
    return int64_t(h[0]);
  }
  std::string known;
  for (const Spec& sp : specs()) known += std::string(known.empty() ? "" : ", ") + sp.kernel;
  ADA_FAIL("cuda_phase_clock: no clocked kernel \"" << kernel << "\" (" << known << ")");
}

}  // namespace cuda

void set_cuda_phase_clock(bool on) { cuda::phase_clock_switch(on); }

PhaseClockReading cuda_phase_clock(const std::string& kernel) {
  PhaseClockReading r;
  r.units = cuda::phase_clock_read(kernel, r.unit, r.names, r.means);
  return r;
}

}  // namespace ada
