// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
// value = f(seed, stream, index): no state, so any element of any random tensor can be computed
// independently, in any order, on any thread or device. The CUDA backend uses the same function,
// so a CPU and a GPU run with one seed draw identical dropout masks and negatives.
//
// Streams: a 64-bit id naming what is being drawn (dropout site + step, negatives of an epoch, ...);
// make one with rng_stream(purpose, a, b). Index: the element's flat index inside that draw.
#pragma once
#include <cstdint>

// The inline functions below also compile as device code under nvcc (the CUDA backend draws the
// same dropout masks). The bits do not change.
#include "ada/host_device.hpp"

namespace ada {

struct Philox4 {
  uint32_t v[4];
};

// One Philox4x32-10 block: counter (c0..c3) under key (k0, k1).
ADA_HOST_DEVICE inline Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                             uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(kM0) * c0;
    const uint64_t p1 = uint64_t(kM1) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Purposes keep streams of different kinds apart.
enum class RngPurpose : uint32_t {
  kInit = 1,       // parameter initialisation (a = parameter index)
  kDropout = 2,    // a = training step, b = dropout site id
  kNegatives = 3,  // a = epoch
  kShuffle = 4,    // a = epoch
  kSynthetic = 5,  // synthetic data generator
};

ADA_HOST_DEVICE inline uint64_t rng_stream(RngPurpose purpose, uint32_t a, uint32_t b = 0) {
  return (uint64_t(purpose) << 56) ^ (uint64_t(a) << 24) ^ uint64_t(b);
}

// The 32-bit word number `index` of stream `stream` under `seed`.
ADA_HOST_DEVICE inline uint32_t random_u32(uint64_t seed, uint64_t stream, uint64_t index) {
  const uint64_t block = index >> 2;
  const Philox4 r = philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(stream),
                                  uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
  return r.v[index & 3];
}

// Uniform in [0, 1) with 24 random bits (exactly representable as float).
ADA_HOST_DEVICE inline float u32_to_unit_float(uint32_t x) {
  return float(x >> 8) * (1.0f / 16777216.0f);
}

// Uniform integer in [0, n) by multiply-shift (bias < n / 2^32, negligible for n << 2^32).
ADA_HOST_DEVICE inline uint32_t u32_to_range(uint32_t x, uint32_t n) {
  return uint32_t((uint64_t(x) * n) >> 32);
}

// Standard normal by Box-Muller from words 2*index and 2*index+1.
double random_normal(uint64_t seed, uint64_t stream, uint64_t index);

// Fill out[0..n) with words index0 .. index0+n-1 of a stream (computes 4 words per Philox block).
void random_u32_fill(uint64_t seed, uint64_t stream, uint64_t index0, uint64_t n, uint32_t* out);

}  // namespace ada
