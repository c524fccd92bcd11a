// exp for float, written so that the compiler vectorises the loops that call it: no libm call, no
// branch, only fmas, compares, bit casts and integer shifts (GCC turns a loop over it into 8-lane AVX2 at
// -O3 -march=x86-64-v3). The CPU backend's SiLU and softmaxes call it for T = float, where glibc's
// expf, one scalar call per element, took a fifth of a CPU serving call (docs/benchmarks.md).
//
// The function is the same bits in a vectorised loop and in a scalar call, on any instruction set:
// every step is a single IEEE operation, the fused ones written as std::fma, and no a * b + c is left
// for the compiler to contract (GCC contracts in C++ whenever the target has an fma).
// Accuracy: under 1 ulp of the exact exp everywhere (0.894 ulp at most over every float from -104 to
// 89, denormal results included, against exp in double; glibc's expf: 0.502), exp(0) = 1, 0 from
// x = -104 down, +inf above ln(FLT_MAX), NaN stays NaN (tests/cpu_vec_exp.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace ada {

namespace vec_exp_detail {
inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
}  // namespace vec_exp_detail

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 in two parts, so
// that n ln 2 is exact to well beyond float precision), exp(r) by Cephes' degree-7 polynomial
// (expf.c: relative error under 2e-7 there), 2^n as two factors so that n = 128 (x just under
// ln(FLT_MAX)) and the denormal results down to n = -150 need no special case.
inline float vec_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // 16 significant bits: n kLn2Hi is exact
  constexpr float kLn2Lo = 1.42860682030941723212e-6f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: (y + kRound) - kRound rounds y to an integer
  constexpr float kHi = 89.0f;  // above ln(FLT_MAX) = 88.72...: the product below overflows to +inf
  constexpr float kLo = -104.0f;  // exp(-104) is under half the smallest denormal: rounds to 0
  // clamps written as comparisons, so that a NaN goes through (std::fmax would drop it)
  float xc = x < kLo ? kLo : x;
  xc = xc > kHi ? kHi : xc;
  const float t = std::fma(xc, kLog2e, kRound);  // kRound + n, in a range where floats are integers
  const float kf = t - kRound;
  float r = std::fma(kf, -kLn2Hi, xc);
  r = std::fma(kf, -kLn2Lo, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  // n from t's bits, not by converting kf (which would be undefined for a NaN, whose p is NaN anyway)
  const int32_t n = int32_t(vec_exp_detail::to_bits(t) - vec_exp_detail::to_bits(kRound));  // -150 .. 128
  const int32_t n1 = n / 2, n2 = n - n1;
  return p * vec_exp_detail::from_bits(uint32_t(n1 + 127) << 23) *
         vec_exp_detail::from_bits(uint32_t(n2 + 127) << 23);
}

}  // namespace ada
