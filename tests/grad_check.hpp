// Finite-difference gradient checking in double precision.
#pragma once
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "ada/rng.hpp"

namespace ada_test {

inline std::vector<double> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * ada::random_normal(seed, 99, i);
  return v;
}

// Sum of a[i] * b[i]: the scalar "loss" <out, R> whose gradient w.r.t. out is R.
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Compares analytic[i] with (f(x + h e_i) - f(x - h e_i)) / 2h for the given coordinates of x
// (all when `coords` is empty). Fails naming the tensor, the first bad index and both values.
inline void check_gradient(const std::string& what, std::vector<double>& x,
                           const std::vector<double>& analytic, const std::function<double()>& f,
                           std::vector<size_t> coords = {}, double h = 1e-6, double tol = 1e-6) {
  REQUIRE(analytic.size() == x.size());
  if (coords.empty())
    for (size_t i = 0; i < x.size(); ++i) coords.push_back(i);
  double max_abs = 0;
  for (size_t i : coords) max_abs = std::max(max_abs, std::abs(analytic[i]));
  for (size_t i : coords) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    const double numeric = (fp - fm) / (2 * h);
    const double err = std::abs(numeric - analytic[i]);
    const double bound = tol * std::max(1.0, max_abs) + tol * std::abs(numeric) * 100;
    INFO(what << "[" << i << "]: analytic " << analytic[i] << " numeric " << numeric << " (|x|="
              << x.size() << ")");
    REQUIRE(err <= bound);
  }
}

}  // namespace ada_test
