// The Ada-Retrieval adapter ops of the CPU backend (reference-spec 3.1, 3.2): ReLU, the learnable
// frequency filter, context attention, the GRU cell and column concatenation. Forward against
// independent naive implementations, backward by finite differences in double.
#include <omp.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <complex>
#include <vector>

#include "ada/backend.hpp"
#include "ada/rng.hpp"
#include "tests/grad_check.hpp"

using namespace ada;
using ada_test::check_gradient;
using ada_test::dot;
using ada_test::random_vec;

namespace {


// torch.fft.irfft(torch.fft.rfft(x, dim=1, norm='ortho') * W, n=K, dim=1, norm='ortho') written
// with complex arithmetic: the full Hermitian spectrum is rebuilt from the half spectrum the way
// C2R transforms read it (DC and, for even K, Nyquist taken as real), then a full inverse DFT.
std::vector<double> naive_filter(const std::vector<double>& in, const std::vector<double>& W,
                                 int64_t R, int64_t K, int64_t D) {
  using cd = std::complex<double>;
  const double pi = std::acos(-1.0);
  const int64_t Kf = K / 2 + 1;
  const double s = 1.0 / std::sqrt(double(K));
  std::vector<double> out(size_t(R * K * D));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t d = 0; d < D; ++d) {
      std::vector<cd> G(static_cast<size_t>(Kf));
      for (int64_t k = 0; k < Kf; ++k) {
        cd F = 0;
        for (int64_t n = 0; n < K; ++n)
          F += in[size_t((r * K + n) * D + d)] * std::polar(1.0, -2 * pi * double(k * n) / double(K));
        F *= s;
        G[size_t(k)] = F * cd(W[size_t((k * D + d) * 2)], W[size_t((k * D + d) * 2 + 1)]);
      }
      std::vector<cd> H(static_cast<size_t>(K));
      for (int64_t k = 0; k < K; ++k) {
        if (k < Kf) H[size_t(k)] = G[size_t(k)];
        else H[size_t(k)] = std::conj(G[size_t(K - k)]);
      }
      H[0] = H[0].real();
      if (K % 2 == 0) H[size_t(K / 2)] = H[size_t(K / 2)].real();
      for (int64_t n = 0; n < K; ++n) {
        cd y = 0;
        for (int64_t k = 0; k < K; ++k) y += H[size_t(k)] * std::polar(1.0, 2 * pi * double(k * n) / double(K));
        y *= s;
        REQUIRE(std::abs(y.imag()) < 1e-12);  // Hermitian spectrum: real signal
        out[size_t((r * K + n) * D + d)] = y.real();
      }
    }
  return out;
}

}  // namespace

TEST_CASE("ReLU forward is max(x, 0) and its derivative is 0 at x <= 0", "[cpu]") {
  auto be = make_cpu_backend<double>();
  auto in = random_vec(50, 40, 3.0), R = random_vec(50, 41);
  in[0] = 0.0;
  in[1] = -0.0;
  std::vector<double> out(50), din(50);
  auto f = [&] {
    be->activation_forward(out.data(), in.data(), 50, Activation::kRelu);
    return dot(out, R);
  };
  f();
  for (size_t i = 0; i < in.size(); ++i) REQUIRE(out[i] == (in[i] > 0 ? in[i] : 0.0));
  be->activation_backward(din.data(), R.data(), in.data(), 50, Activation::kRelu);
  REQUIRE(din[0] == 0.0);
  REQUIRE(din[1] == 0.0);
  for (size_t i = 2; i < in.size(); ++i) REQUIRE(din[i] == (in[i] > 0 ? R[i] : 0.0));
  std::vector<size_t> away_from_kink;
  for (size_t i = 2; i < in.size(); ++i)
    if (std::abs(in[i]) > 1e-3) away_from_kink.push_back(i);
  check_gradient("relu", in, din, f, away_from_kink);
}

TEST_CASE("filter forward equals complex rfft times W then irfft for odd and even K", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t R = 3, D = 4;
  for (int64_t K : {1, 2, 3, 4, 7, 20}) {
    INFO("K=" << K);
    const int64_t Kf = K / 2 + 1;
    auto in = random_vec(size_t(R * K * D), 50 + uint64_t(K)), W = random_vec(size_t(Kf * D * 2), 60 + uint64_t(K));
    std::vector<double> out(in.size());
    be->filter_forward(out.data(), in.data(), W.data(), R, K, D);
    const auto ref = naive_filter(in, W, R, K, D);
    for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(ref[i]).margin(1e-12));
    std::vector<double> inplace = in;  // out == in is allowed
    be->filter_forward(inplace.data(), inplace.data(), W.data(), R, K, D);
    REQUIRE(inplace == out);

    // W = 1 + 0i everywhere: the identity
    std::vector<double> ones(W.size(), 0.0);
    for (int64_t i = 0; i < Kf * D; ++i) ones[size_t(2 * i)] = 1.0;
    be->filter_forward(out.data(), in.data(), ones.data(), R, K, D);
    for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(in[i]).margin(1e-12));

    // the imaginary parts of the DC bin and (even K) the Nyquist bin are ignored by irfft
    std::vector<double> out2(in.size()), W2 = W;
    be->filter_forward(out.data(), in.data(), W.data(), R, K, D);
    for (int64_t d = 0; d < D; ++d) {
      W2[size_t(2 * d + 1)] += 5.0;
      if (K % 2 == 0) W2[size_t(((K / 2) * D + d) * 2 + 1)] -= 3.0;
    }
    be->filter_forward(out2.data(), in.data(), W2.data(), R, K, D);
    for (size_t i = 0; i < out.size(); ++i) REQUIRE(out2[i] == Approx(out[i]).margin(1e-12));
  }
}

TEST_CASE("filter backward matches finite differences for din and dW", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t R = 3, D = 3;
  for (int64_t K : {1, 2, 3, 7, 20}) {
    INFO("K=" << K);
    const int64_t Kf = K / 2 + 1;
    auto in = random_vec(size_t(R * K * D), 70 + uint64_t(K)), W = random_vec(size_t(Kf * D * 2), 80 + uint64_t(K));
    auto Rw = random_vec(in.size(), 90 + uint64_t(K));
    std::vector<double> out(in.size());
    auto f = [&] {
      be->filter_forward(out.data(), in.data(), W.data(), R, K, D);
      return dot(out, Rw);
    };
    std::vector<double> din(in.size(), 123.0), dW(W.size(), 0.0);
    be->filter_backward(din.data(), dW.data(), Rw.data(), in.data(), W.data(), R, K, D);
    check_gradient("filter din", in, din, f);
    check_gradient("filter dW", W, dW, f);
    // imaginary parts of DC / Nyquist have exactly zero gradient
    for (int64_t d = 0; d < D; ++d) {
      REQUIRE(dW[size_t(2 * d + 1)] == 0.0);
      if (K % 2 == 0) REQUIRE(dW[size_t(((K / 2) * D + d) * 2 + 1)] == 0.0);
    }
    // dW accumulates
    std::vector<double> dW2(W.size(), 1.0);
    be->filter_backward(din.data(), dW2.data(), Rw.data(), in.data(), W.data(), R, K, D);
    for (size_t i = 0; i < dW.size(); ++i) REQUIRE(dW2[i] == Approx(dW[i] + 1.0).epsilon(1e-12));
  }
}

TEST_CASE("filter backward dW does not depend on the thread count", "[cpu]") {
  auto be = make_cpu_backend<float>();
  const int64_t R = 70, K = 20, D = 8, Kf = K / 2 + 1;  // R spans several reduction chunks
  std::vector<float> in(size_t(R * K * D)), W(size_t(Kf * D * 2)), g(in.size());
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(ada::random_normal(1, 2, i));
  for (size_t i = 0; i < g.size(); ++i) g[i] = float(ada::random_normal(1, 3, i));
  for (size_t i = 0; i < W.size(); ++i) W[i] = float(ada::random_normal(1, 4, i));
  std::vector<float> din1(in.size()), din2(in.size()), dW1(W.size(), 0.0f), dW2(W.size(), 0.0f);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  be->filter_backward(din1.data(), dW1.data(), g.data(), in.data(), W.data(), R, K, D);
  omp_set_num_threads(3);
  be->filter_backward(din2.data(), dW2.data(), g.data(), in.data(), W.data(), R, K, D);
  omp_set_num_threads(saved);
  REQUIRE(din1 == din2);
  REQUIRE(dW1 == dW2);
  // and the float result agrees with the double one
  auto bd = make_cpu_backend<double>();
  std::vector<double> ind(in.begin(), in.end()), Wd(W.begin(), W.end()), gd(g.begin(), g.end());
  std::vector<double> dind(in.size()), dWd(W.size(), 0.0);
  bd->filter_backward(dind.data(), dWd.data(), gd.data(), ind.data(), Wd.data(), R, K, D);
  for (size_t i = 0; i < dWd.size(); ++i) REQUIRE(dW1[i] == Approx(dWd[i]).margin(1e-3));
  for (size_t i = 0; i < dind.size(); ++i) REQUIRE(din1[i] == Approx(dind[i]).margin(1e-4));
}

TEST_CASE("filter rejects K < 1", "[cpu]") {
  auto be = make_cpu_backend<double>();
  std::vector<double> x(4), W(4);
  REQUIRE_THROWS(be->filter_forward(x.data(), x.data(), W.data(), 1, 0, 2));
}

namespace {

void naive_context_attention(std::vector<double>& out, const std::vector<double>& X, const std::vector<double>& C,
                             const std::vector<int64_t>& qoff, int64_t Nc, int64_t D) {
  const int64_t B = int64_t(qoff.size()) - 1;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = qoff[size_t(b)]; q < qoff[size_t(b + 1)]; ++q) {
      std::vector<double> e(static_cast<size_t>(Nc));
      double z = 0;
      for (int64_t j = 0; j < Nc; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += X[size_t(q * D + d)] * C[size_t((b * Nc + j) * D + d)];
        e[size_t(j)] = std::exp(s / std::sqrt(double(D)));  // small inputs: no max shift needed
        z += e[size_t(j)];
      }
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j < Nc; ++j) o += e[size_t(j)] / z * C[size_t((b * Nc + j) * D + d)];
        out[size_t(q * D + d)] = o;
      }
    }
}

}  // namespace

TEST_CASE("context attention matches a naive softmax(X C^T / sqrt(D)) C and its gradients", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t D = 5;
  const std::vector<int64_t> qoff = {0, 2, 2, 5, 6};  // row 1 has no queries
  const int64_t B = 4, Q = 6;
  for (int64_t Nc : {1, 4}) {
    INFO("Nc=" << Nc);
    auto X = random_vec(size_t(Q * D), 100 + uint64_t(Nc)), C = random_vec(size_t(B * Nc * D), 110 + uint64_t(Nc));
    auto Rw = random_vec(size_t(Q * D), 120 + uint64_t(Nc));
    std::vector<double> out(size_t(Q * D)), probs(size_t(Q * Nc)), ref(size_t(Q * D));
    auto f = [&] {
      be->context_attention_forward(out.data(), probs.data(), X.data(), C.data(), qoff.data(), B, Nc, D);
      return dot(out, Rw);
    };
    f();
    naive_context_attention(ref, X, C, qoff, Nc, D);
    for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(ref[i]).margin(1e-12));
    for (int64_t q = 0; q < Q; ++q) {
      double s = 0;
      for (int64_t j = 0; j < Nc; ++j) s += probs[size_t(q * Nc + j)];
      REQUIRE(s == Approx(1.0).epsilon(1e-12));
    }
    if (Nc == 1)  // a single context row: out is that row exactly
      for (int64_t d = 0; d < D; ++d) REQUIRE(out[size_t(2 * D + d)] == Approx(C[size_t(2 * D + d)]).epsilon(1e-14));

    std::vector<double> dX(size_t(Q * D), 77.0), dC(C.size(), 0.0);
    be->context_attention_backward(dX.data(), dC.data(), Rw.data(), probs.data(), X.data(), C.data(), qoff.data(),
                                   B, Nc, D);
    if (Nc == 1)
      for (double v : dX) REQUIRE(v == Approx(0.0).margin(1e-14));
    for (int64_t i = 0; i < Nc * D; ++i) REQUIRE(dC[size_t(1 * Nc * D + i)] == 0.0);  // the row without queries
    check_gradient("ctx dX", X, dX, f);
    check_gradient("ctx dC", C, dC, f);
    // dC accumulates (re-run forward: the last FD evaluation left probs of a perturbed input)
    f();
    std::vector<double> dC2(C.size(), -2.0);
    be->context_attention_backward(dX.data(), dC2.data(), Rw.data(), probs.data(), X.data(), C.data(), qoff.data(),
                                   B, Nc, D);
    for (size_t i = 0; i < dC.size(); ++i) REQUIRE(dC2[i] == Approx(dC[i] - 2.0).epsilon(1e-12));
  }
}

TEST_CASE("GRU cell forward follows nn.GRU's equations and its backward matches finite differences", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t B = 3, D = 4;
  auto gi = random_vec(size_t(B * 3 * D), 130), gh = random_vec(size_t(B * 3 * D), 131);
  auto hp = random_vec(size_t(B * D), 132), Rw = random_vec(size_t(B * D), 133);
  std::vector<double> hn(size_t(B * D)), gates(size_t(B * 3 * D));
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  be->gru_cell_forward(hn.data(), gates.data(), gi.data(), gh.data(), hp.data(), B, D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      const size_t o = size_t(b * 3 * D + d);
      const double r = sig(gi[o] + gh[o]);
      const double z = sig(gi[o + size_t(D)] + gh[o + size_t(D)]);
      const double n = std::tanh(gi[o + size_t(2 * D)] + r * gh[o + size_t(2 * D)]);
      REQUIRE(hn[size_t(b * D + d)] == Approx((1 - z) * n + z * hp[size_t(b * D + d)]).epsilon(1e-13));
      REQUIRE(gates[o] == Approx(r).epsilon(1e-14));
      REQUIRE(gates[o + size_t(D)] == Approx(z).epsilon(1e-14));
      REQUIRE(gates[o + size_t(2 * D)] == Approx(n).epsilon(1e-14));
    }
  auto f = [&] {
    be->gru_cell_forward(hn.data(), gates.data(), gi.data(), gh.data(), hp.data(), B, D);
    return dot(hn, Rw);
  };
  std::vector<double> dgi(gi.size(), 9.0), dgh(gh.size(), 9.0), dhp(hp.size(), 9.0);  // overwritten
  be->gru_cell_backward(dgi.data(), dgh.data(), dhp.data(), Rw.data(), gates.data(), gh.data(), hp.data(), B, D);
  check_gradient("gru d_gi", gi, dgi, f);
  check_gradient("gru d_gh", gh, dgh, f);
  check_gradient("gru d_hprev", hp, dhp, f);
}

TEST_CASE("a 3-step GRU from linear and gru_cell ops backpropagates through time", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t B = 2, I = 3, D = 4, G = 3 * D, T = 3;
  auto x = random_vec(size_t(T * B * I), 140), h0 = random_vec(size_t(B * D), 141);
  auto Wih = random_vec(size_t(G * I), 142, 0.5), Whh = random_vec(size_t(G * D), 143, 0.5);
  auto bih = random_vec(size_t(G), 144, 0.3), bhh = random_vec(size_t(G), 145, 0.3);
  auto Rw = random_vec(size_t(T * B * D), 146);  // the loss weighs every step's hidden state
  std::vector<double> h(size_t((T + 1) * B * D)), gi(size_t(T * B * G)), gh(size_t(T * B * G)), gates(size_t(T * B * G));
  auto forward = [&] {
    std::copy(h0.begin(), h0.end(), h.begin());
    for (int64_t t = 0; t < T; ++t) {
      be->linear_forward(gi.data() + t * B * G, x.data() + t * B * I, Wih.data(), bih.data(), B, I, G);
      be->linear_forward(gh.data() + t * B * G, h.data() + t * B * D, Whh.data(), bhh.data(), B, D, G);
      be->gru_cell_forward(h.data() + (t + 1) * B * D, gates.data() + t * B * G, gi.data() + t * B * G,
                           gh.data() + t * B * G, h.data() + t * B * D, B, D);
    }
    double s = 0;
    for (int64_t i = 0; i < T * B * D; ++i) s += h[size_t(B * D + i)] * Rw[size_t(i)];
    return s;
  };
  forward();
  std::vector<double> dx(x.size()), dh0(h0.size()), dWih(Wih.size(), 0.0), dWhh(Whh.size(), 0.0);
  std::vector<double> dbih(bih.size(), 0.0), dbhh(bhh.size(), 0.0);
  std::vector<double> dh(size_t(B * D), 0.0), dgi(size_t(B * G)), dgh(size_t(B * G)), dhp(size_t(B * D));
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t i = 0; i < B * D; ++i) dh[size_t(i)] += Rw[size_t(t * B * D + i)];
    be->gru_cell_backward(dgi.data(), dgh.data(), dhp.data(), dh.data(), gates.data() + t * B * G,
                          gh.data() + t * B * G, h.data() + t * B * D, B, D);
    be->linear_backward(dx.data() + t * B * I, dWih.data(), dbih.data(), dgi.data(), x.data() + t * B * I,
                        Wih.data(), B, I, G, false);
    be->linear_backward(dhp.data(), dWhh.data(), dbhh.data(), dgh.data(), h.data() + t * B * D, Whh.data(), B, D,
                        G, true);
    dh = dhp;
  }
  dh0 = dh;
  check_gradient("gru W_ih", Wih, dWih, forward);
  check_gradient("gru W_hh", Whh, dWhh, forward);
  check_gradient("gru b_ih", bih, dbih, forward);
  check_gradient("gru b_hh", bhh, dbhh, forward);
  check_gradient("gru x", x, dx, forward);
  check_gradient("gru h0", h0, dh0, forward);
}

TEST_CASE("concat_cols joins rows and split_cols_add scatters the gradient back", "[cpu]") {
  auto be = make_cpu_backend<double>();
  const int64_t M = 3, Da = 2, Db = 4;
  auto a = random_vec(size_t(M * Da), 150), b = random_vec(size_t(M * Db), 151);
  std::vector<double> out(size_t(M * (Da + Db)));
  be->concat_cols(out.data(), a.data(), b.data(), M, Da, Db);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t d = 0; d < Da; ++d) REQUIRE(out[size_t(m * (Da + Db) + d)] == a[size_t(m * Da + d)]);
    for (int64_t d = 0; d < Db; ++d) REQUIRE(out[size_t(m * (Da + Db) + Da + d)] == b[size_t(m * Db + d)]);
  }
  std::vector<double> da(a.size(), 1.0), db(b.size(), 2.0);
  be->split_cols_add(da.data(), db.data(), out.data(), M, Da, Db);
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(da[i] == 1.0 + a[i]);
  for (size_t i = 0; i < b.size(); ++i) REQUIRE(db[i] == 2.0 + b[i]);
  be->split_cols_add(nullptr, db.data(), out.data(), M, Da, Db);  // a null side is skipped
  for (size_t i = 0; i < b.size(); ++i) REQUIRE(db[i] == 2.0 + 2 * b[i]);
}
