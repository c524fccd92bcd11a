#include "ada/rng.hpp"

#include <cmath>

namespace ada {

double random_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const uint32_t a = random_u32(seed, stream, 2 * index);
  const uint32_t b = random_u32(seed, stream, 2 * index + 1);
  // u1 in (0, 1] so log is finite; u2 in [0, 1).
  const double u1 = (double(a) + 1.0) / 4294967296.0;
  const double u2 = double(b) / 4294967296.0;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

void random_u32_fill(uint64_t seed, uint64_t stream, uint64_t index0, uint64_t n, uint32_t* out) {
  uint64_t i = 0;
  while (i < n) {
    const uint64_t idx = index0 + i;
    const uint64_t block = idx >> 2;
    const Philox4 r = philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(stream),
                                    uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
    for (uint64_t w = idx & 3; w < 4 && i < n; ++w, ++i) out[i] = r.v[w];
  }
}

}  // namespace ada
