// Phase clocks of the CUDA kernels (ada::set_cuda_phase_clock, include/ada/cuda_backend.hpp): where
// a kernel's time goes, for benchmarks, without a profiler. A clocked kernel has a second
// instantiation (kOn = true) that the launcher picks while the clocks are on; in it, thread 0 of
// each block reads clock64() at the kernel's phase boundaries and adds each phase's cycles (and
// whatever it counts) into the kernel's device sums: a few atomics per block, the results
// unchanged. The kOn = false instantiation compiles every call away.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ada {
namespace cuda {

// The clocked kernels; the slot names of each (phases in cycles, then counts) are in
// kernels/phase_clock.cu. Slot 0 of every kernel counts its units (PhaseClock::unit).
enum class Clocked {
  kTopkSelect, kFilterForward, kContextForward, kContextBackward, kAttentionForward, kAttentionBackward,
  kUserBackward, kCount
};

// The device sums of kernel k while the clocks are on (allocated and zeroed when they were switched
// on), else nullptr: a launcher runs the kOn instantiation with it exactly when it is not null.
unsigned long long* phase_sums(Clocked k);

// Host side of ada::set_cuda_phase_clock / cuda_phase_clock.
void phase_clock_switch(bool on);
// The units counted since the clocks were switched on (0 while off), what a unit is, the slots'
// names and their means per unit (waits for the device). ada::Error for an unknown kernel.
int64_t phase_clock_read(const std::string& kernel, std::string& unit, std::vector<std::string>& names,
                         std::vector<double>& means);

template <bool kOn>
struct PhaseClock {
  unsigned long long* sums;
  long long begin = 0, last = 0;
  __device__ explicit PhaseClock(unsigned long long* s) : sums(s) {
    if (kOn && threadIdx.x == 0) begin = last = clock64();
  }
  // The cycles since the last lap (or since the start) into `slot`.
  __device__ __forceinline__ void lap(int slot) {
    if (kOn && threadIdx.x == 0) {
      const long long now = clock64();
      atomicAdd(sums + slot, (unsigned long long)(now - last));
      last = now;
    }
  }
  // Restarts the lap without adding (time not to be counted in any phase).
  __device__ __forceinline__ void restart() {
    if (kOn && threadIdx.x == 0) last = clock64();
  }
  // A count into `slot` (non-negative).
  __device__ __forceinline__ void add(int slot, long long v) {
    if (kOn && threadIdx.x == 0) atomicAdd(sums + slot, (unsigned long long)v);
  }
  // One unit of the kernel (slot 0): the divisor of the means.
  __device__ __forceinline__ void unit() { add(0, 1); }
  // The largest time from the clock's start (the block's) to now over all blocks, into `slot`: a
  // slot named max_... (phase_clock.cu), read as it is, not as a mean. The slowest block is the
  // kernel's critical path when the grid runs in one wave; the means hide it.
  __device__ __forceinline__ void max_since_start(int slot) {
    if (kOn && threadIdx.x == 0) atomicMax(sums + slot, (unsigned long long)(clock64() - begin));
  }
};

}  // namespace cuda
}  // namespace ada
