// The counter-based generator every random draw goes through (dropout masks, negatives, init), on the
// CPU and, with the same header, on the GPU: Philox4x32-10 itself and the vectorised block fill.
#include <catch2/catch.hpp>

#include <omp.h>

#include <cstdint>
#include <vector>

#include "ada/backend.hpp"
#include "ada/rng.hpp"

using namespace ada;

TEST_CASE("philox4x32_10 gives Random123's known-answer vectors", "[cpu]") {
  // Random123's tests/kat_vectors, the three "philox4x32 10" lines: counter, key -> output.
  struct Kat {
    uint32_t c[4], k[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& t : kats) {
    const Philox4 r = philox4x32_10(t.c[0], t.c[1], t.c[2], t.c[3], t.k[0], t.k[1]);
    for (int w = 0; w < 4; ++w) REQUIRE(r.v[w] == t.out[w]);
  }
}

TEST_CASE("random_u32_fill gives random_u32's words for every start, length and counter", "[cpu]") {
  // Starts at each word of a block, lengths around the vectorised paths' 32- and 64-word groups, and
  // counters whose low 32-bit word wraps inside a group of 8 blocks (the AVX2 path's special case).
  const uint64_t seed = 0x0123456789abcdefull, stream = rng_stream(RngPurpose::kDropout, 77, 5);
  const uint64_t bases[] = {0, 1000, (uint64_t(0xFFFFFFF0u) << 2), (uint64_t(0x1FFFFFFFCu) << 2) + 1};
  const uint64_t lengths[] = {0, 1, 3, 4, 5, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 1000};
  for (uint64_t base : bases)
    for (uint64_t off = 0; off < 4; ++off)
      for (uint64_t n : lengths) {
        const uint64_t i0 = base + off;
        std::vector<uint32_t> got(n + 1, 0xDEADBEEFu);
        random_u32_fill(seed, stream, i0, n, got.data());
        INFO("index0 " << i0 << ", n " << n);
        for (uint64_t i = 0; i < n; ++i) REQUIRE(got[i] == random_u32(seed, stream, i0 + i));
        REQUIRE(got[n] == 0xDEADBEEFu);  // nothing past the end
      }
}

TEST_CASE("dropout keeps element i exactly when u(seed, stream, i) >= p, for any thread count", "[cpu]") {
  auto be = make_cpu_backend<float>();
  const float p = 0.3f;
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(1023), int64_t(1024), int64_t(1025), int64_t(70001)}) {
    const size_t sz = static_cast<size_t>(n);
    std::vector<float> in(sz), one(sz), two(sz);
    for (int64_t i = 0; i < n; ++i) in[size_t(i)] = 1.0f + float(i % 13);
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    be->dropout_forward(one.data(), in.data(), n, p, 9, 1234);
    omp_set_num_threads(2);
    be->dropout_forward(two.data(), in.data(), n, p, 9, 1234);
    omp_set_num_threads(threads);
    REQUIRE(one == two);
    for (int64_t i = 0; i < n; ++i) {
      const bool keep = u32_to_unit_float(random_u32(9, 1234, uint64_t(i))) >= p;
      INFO("n " << n << ", i " << i);
      REQUIRE(one[size_t(i)] == (keep ? in[size_t(i)] * (1.0f / (1.0f - p)) : 0.0f));
    }
  }
}
