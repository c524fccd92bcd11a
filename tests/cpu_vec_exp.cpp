// The vectorisable exp of src/core/vec_exp.hpp (the CPU backend's SiLU and softmaxes, T = float):
// its accuracy against exp in double, its special values, and that the backend's vectorised SiLU
// gives the bits of the scalar definition (its backward: within float rounding).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ada/backend.hpp"
#include "src/core/vec_exp.hpp"

using namespace ada;

namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// |y - exp(x)| in units of the last place of the float nearest exp(x) (denormals: in units of the
// smallest denormal)
double ulp_error(float x, float y) {
  const double e = std::exp(double(x));
  int ex = 0;
  std::frexp(e, &ex);
  const double ulp = e < double(std::numeric_limits<float>::min()) ? std::ldexp(1.0, -149) : std::ldexp(1.0, ex - 24);
  return std::fabs(double(y) - e) / ulp;
}

}  // namespace

TEST_CASE("vec_exp is within 1 ulp of exp over the float range", "[cpu]") {
  // every 97th float of [-104, 0] and [0, ln(FLT_MAX)) (about 23 million), denormal results included;
  // an exhaustive run over all of them gave 0.894 ulp at most (the header)
  const float hi = 88.72283172607421875f;  // the largest float whose exp is finite
  double worst = 0;
  float worst_x = 0;
  for (const uint32_t sign : {0u, 0x80000000u}) {
    const uint32_t last = sign ? to_bits(104.0f) : to_bits(hi);
    for (uint32_t m = 0; m <= last; m += 97) {
      const float x = from_bits(m | sign);
      const double err = ulp_error(x, vec_exp(x));
      if (err > worst) {
        worst = err;
        worst_x = x;
      }
    }
  }
  INFO("worst at x = " << worst_x);
  CHECK(worst < 1.0);
}

TEST_CASE("vec_exp's special values: 1 at 0, 0 and +inf at the ends, NaN through", "[cpu]") {
  CHECK(vec_exp(0.0f) == 1.0f);
  CHECK(vec_exp(-0.0f) == 1.0f);
  CHECK(vec_exp(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(vec_exp(-104.0f) == 0.0f);
  CHECK(vec_exp(-1e30f) == 0.0f);
  // the smallest denormal, exp(-103.9) = 1.1e-45, rounds to it
  CHECK(vec_exp(-103.9f) == std::numeric_limits<float>::denorm_min());
  const float hi = 88.72283172607421875f;
  CHECK(std::isfinite(vec_exp(hi)));
  CHECK(ulp_error(hi, vec_exp(hi)) < 1.0);
  CHECK(std::isinf(vec_exp(std::nextafter(hi, 100.0f))));
  CHECK(std::isinf(vec_exp(1e30f)));
  CHECK(std::isinf(vec_exp(std::numeric_limits<float>::infinity())));
  CHECK(std::isnan(vec_exp(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(vec_exp(-std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("the CPU backend's SiLU gives the scalar definition's bits in its vectorised loop", "[cpu]") {
  // forward x / (1 + exp(-x)): the backend's loop runs 8 lanes at a time (and a scalar tail: n is
  // odd); every value must be the bits this translation unit computes one element at a time. (The
  // backward, s (1 + x (1 - s)), is compared within float rounding only: the library is built for
  // x86-64-v3, where GCC contracts a * b + c into an fma, and this file for plain x86-64.)
  const int64_t n = 1003;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-30.0f, 30.0f);
  std::vector<float> x(n), dout(n), out(n), din(n);
  for (auto& v : x) v = u(rng);
  for (auto& v : dout) v = u(rng);
  x[0] = 0.0f;
  x[1] = -100.0f;
  x[2] = 95.0f;
  auto be = make_cpu_backend<float>();
  be->activation_forward(out.data(), x.data(), n, Activation::kSilu);
  be->activation_backward(din.data(), dout.data(), x.data(), n, Activation::kSilu);
  int64_t fwd_diff = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = vec_exp(-x[i]);
    fwd_diff += to_bits(out[i]) != to_bits(x[i] / (1.0f + e));
    const float s = 1.0f / (1.0f + e);
    // (absolute margin: s (1 + x (1 - s)) cancels to 0 near x = -1.28)
    REQUIRE(din[i] == Approx(dout[i] * (s * (1.0f + x[i] * (1.0f - s)))).epsilon(1e-6).margin(1e-6 * std::fabs(dout[i])));
  }
  CHECK(fwd_diff == 0);
  // and the function is the SiLU and its derivative: against double within a few float ulps
  for (int64_t i = 0; i < n; ++i) {
    const double xd = x[i], sd = 1.0 / (1.0 + std::exp(-xd));
    REQUIRE(double(out[i]) == Approx(xd * sd).epsilon(1e-6).margin(1e-30));
    REQUIRE(double(din[i]) == Approx(dout[i] * sd * (1.0 + xd * (1.0 - sd))).epsilon(1e-5).margin(1e-6 * std::fabs(dout[i])));
  }
}
