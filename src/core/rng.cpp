#include "ada/rng.hpp"

#include <cmath>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace ada {

double random_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const uint32_t a = random_u32(seed, stream, 2 * index);
  const uint32_t b = random_u32(seed, stream, 2 * index + 1);
  // u1 in (0, 1] so log is finite; u2 in [0, 1).
  const double u1 = (double(a) + 1.0) / 4294967296.0;
  const double u2 = double(b) / 4294967296.0;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

namespace {

// The 4 words of Philox block `block` of (seed, stream) into out[0..4).
inline void philox_block_words(uint64_t seed, uint64_t stream, uint64_t block, uint32_t* out) {
  const Philox4 r = philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(stream), uint32_t(stream >> 32),
                                  uint32_t(seed), uint32_t(seed >> 32));
  for (int w = 0; w < 4; ++w) out[w] = r.v[w];
}

#if defined(__AVX2__)
// Blocks block0 .. block0 + 8G - 1 of (seed, stream), their 32G words in order into out: the same
// function as philox4x32_10, eight blocks per AVX2 register (one 32-bit lane per block) and G
// independent registers in flight, since one register's ten rounds are a chain of dependent multiplies.
template <int G>
inline void philox_blocks_avx2(uint64_t seed, uint64_t stream, uint64_t block0, uint32_t* out) {
  const __m256i m0 = _mm256_set1_epi32(int(0xD2511F53u)), m1 = _mm256_set1_epi32(int(0xCD9E8D57u));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i c0[G], c1[G], c2[G], c3[G];
  for (int g = 0; g < G; ++g) {
    const uint64_t b = block0 + uint64_t(8 * g);
    if (uint32_t(b) <= 0xFFFFFFF7u) {  // the low counter word does not wrap inside these 8 blocks
      c0[g] = _mm256_add_epi32(_mm256_set1_epi32(int(uint32_t(b))), lane);
      c1[g] = _mm256_set1_epi32(int(uint32_t(b >> 32)));
    } else {
      alignas(32) uint32_t lo[8], hi[8];
      for (int l = 0; l < 8; ++l) {
        lo[l] = uint32_t(b + uint64_t(l));
        hi[l] = uint32_t((b + uint64_t(l)) >> 32);
      }
      c0[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
      c1[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    }
    c2[g] = _mm256_set1_epi32(int(uint32_t(stream)));
    c3[g] = _mm256_set1_epi32(int(uint32_t(stream >> 32)));
  }
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const __m256i key0 = _mm256_set1_epi32(int(k0)), key1 = _mm256_set1_epi32(int(k1));
    for (int g = 0; g < G; ++g) {
      // 32 x 32 -> 64-bit products of the even lanes and of the odd lanes, then high and low halves
      const __m256i e0 = _mm256_mul_epu32(c0[g], m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(c0[g], 32), m0);
      const __m256i e1 = _mm256_mul_epu32(c2[g], m1), o1 = _mm256_mul_epu32(_mm256_srli_epi64(c2[g], 32), m1);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
      const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), key0);
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), key1);
      c1[g] = lo1;
      c3[g] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int g = 0; g < G; ++g) {  // transpose: lane l's words 0..3 go to out[4 l .. 4 l + 3]
    const __m256i t0 = _mm256_unpacklo_epi32(c0[g], c1[g]), t1 = _mm256_unpackhi_epi32(c0[g], c1[g]);
    const __m256i t2 = _mm256_unpacklo_epi32(c2[g], c3[g]), t3 = _mm256_unpackhi_epi32(c2[g], c3[g]);
    const __m256i l04 = _mm256_unpacklo_epi64(t0, t2), l15 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i l26 = _mm256_unpacklo_epi64(t1, t3), l37 = _mm256_unpackhi_epi64(t1, t3);
    __m256i* d = reinterpret_cast<__m256i*>(out + 32 * g);
    _mm256_storeu_si256(d + 0, _mm256_permute2x128_si256(l04, l15, 0x20));
    _mm256_storeu_si256(d + 1, _mm256_permute2x128_si256(l26, l37, 0x20));
    _mm256_storeu_si256(d + 2, _mm256_permute2x128_si256(l04, l15, 0x31));
    _mm256_storeu_si256(d + 3, _mm256_permute2x128_si256(l26, l37, 0x31));
  }
}
#endif

}  // namespace

void random_u32_fill(uint64_t seed, uint64_t stream, uint64_t index0, uint64_t n, uint32_t* out) {
  uint64_t i = 0;
  uint32_t words[4];
  if (index0 & 3) {  // a partial first block
    philox_block_words(seed, stream, index0 >> 2, words);
    for (uint64_t w = index0 & 3; w < 4 && i < n; ++w, ++i) out[i] = words[w];
  }
  // from here index0 + i is a multiple of 4
#if defined(__AVX2__)
  for (; i + 64 <= n; i += 64) philox_blocks_avx2<2>(seed, stream, (index0 + i) >> 2, out + i);
  for (; i + 32 <= n; i += 32) philox_blocks_avx2<1>(seed, stream, (index0 + i) >> 2, out + i);
#endif
  for (; i + 4 <= n; i += 4) philox_block_words(seed, stream, (index0 + i) >> 2, out + i);
  if (i < n) {
    philox_block_words(seed, stream, (index0 + i) >> 2, words);
    for (uint64_t w = 0; i < n; ++w, ++i) out[i] = words[w];
  }
}

}  // namespace ada
