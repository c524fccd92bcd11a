// The part of CUDA's <mma.h> (nvcuda::wmma) that kernels/*.cu uses: TF32 m16n16k8 fragments with FP32
// accumulators. Each emulated thread holds a whole tile (the hardware spreads it over the warp's
// lanes; kernels that only load, multiply and store fragments cannot tell). Every operation is
// warp-collective like the hardware's: all 32 lanes must reach it together (checked as __syncwarp),
// and, as on the hardware, orders no memory accesses between the lanes.
// mma_sync accumulates the products in FP32 in k order; the hardware's order and rounding differ
// within FP32 accumulation error, which code using TF32 must allow for anyway.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment;

template <class Layout>
struct fragment<matrix_a, 16, 16, 8, precision::tf32, Layout> {
  static constexpr int rows = 16, cols = 8, num_elements = rows * cols;
  float x[num_elements];  // [16][8], row i = x[i * 8 ..]
};
template <class Layout>
struct fragment<matrix_b, 16, 16, 8, precision::tf32, Layout> {
  static constexpr int rows = 8, cols = 16, num_elements = rows * cols;
  float x[num_elements];  // [8][16], row k = x[k * 16 ..]
};
template <>
struct fragment<accumulator, 16, 16, 8, float, void> {
  static constexpr int rows = 16, cols = 16, num_elements = rows * cols;
  float x[num_elements];  // [16][16]
};

// TF32: FP32 with a 10-bit mantissa, rounded to nearest (ties away from zero), like cvt.rna.tf32.f32.
inline float __float_to_tf32(float f) {
  if (!std::isfinite(f)) return f;
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

namespace detail {
// All 32 lanes together, as __syncwarp checks it; but, like the hardware's wmma operations, no
// memory ordering between the lanes (--racecheck): that takes a __syncwarp.
inline void converge(const char* what) { ::emu::warp_converge(what, 0); }
}  // namespace detail

template <class Layout>
void load_matrix_sync(fragment<matrix_a, 16, 16, 8, precision::tf32, Layout>& a, const float* p, unsigned ldm) {
  detail::converge("wmma::load_matrix_sync");
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 8; ++k)
      a.x[i * 8 + k] = std::is_same<Layout, row_major>::value ? p[size_t(i) * ldm + k] : p[size_t(k) * ldm + i];
}
template <class Layout>
void load_matrix_sync(fragment<matrix_b, 16, 16, 8, precision::tf32, Layout>& b, const float* p, unsigned ldm) {
  detail::converge("wmma::load_matrix_sync");
  for (int k = 0; k < 8; ++k)
    for (int j = 0; j < 16; ++j)
      b.x[k * 16 + j] = std::is_same<Layout, row_major>::value ? p[size_t(k) * ldm + j] : p[size_t(j) * ldm + k];
}
inline void fill_fragment(fragment<accumulator, 16, 16, 8, float>& c, float v) {
  detail::converge("wmma::fill_fragment");
  for (float& x : c.x) x = v;
}
template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 8, float>& d, const fragment<matrix_a, 16, 16, 8, precision::tf32, LA>& a,
              const fragment<matrix_b, 16, 16, 8, precision::tf32, LB>& b,
              const fragment<accumulator, 16, 16, 8, float>& c) {
  detail::converge("wmma::mma_sync");
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float acc = c.x[i * 16 + j];
      for (int k = 0; k < 8; ++k) acc += __float_to_tf32(a.x[i * 8 + k]) * __float_to_tf32(b.x[k * 16 + j]);
      out[i * 16 + j] = acc;
    }
  std::memcpy(d.x, out, sizeof out);
}
// Every lane holds the whole tile, but each element is stored by one lane (element e by lane e % 32),
// as the hardware spreads the tile over the lanes: the same bytes land, and under --racecheck the
// lanes' stores do not overlap (a lane's reads of elements another lane stored need a __syncwarp).
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float>& c, unsigned ldm, layout_t layout) {
  detail::converge("wmma::store_matrix_sync");
  const int lane = int(::emu::lane_id());
  for (int e = lane; e < 256; e += 32) {
    const int i = e / 16, j = e % 16;
    (layout == mem_row_major ? p[size_t(i) * ldm + j] : p[size_t(j) * ldm + i]) = c.x[e];
  }
}

}  // namespace wmma
}  // namespace nvcuda
