// The CPU backend: the specification every other backend is tested against.
// Matrix products go to OpenBLAS; everything else is plain loops, parallel over rows with OpenMP
// where rows are independent. Reductions across rows (parameter gradients of LayerNorm, biases,
// embedding tables) run serially in row order so results do not depend on the thread count.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/eval.hpp"
#include "ada/gru_cell.hpp"
#include "ada/rng.hpp"
#include "src/core/vec_exp.hpp"

namespace ada {

int64_t AttentionShape::prob_size() const {
  int64_t keys = 0;
  for (int64_t s = 0; s < layout.num_seqs; ++s) keys += seq_prob_count(s);
  return keys * heads;
}

namespace {

// exp for the SiLU and the softmaxes: for float the vectorisable src/core/vec_exp.hpp (under 1 ulp,
// like glibc's expf, but a loop over it runs 8 lanes at a time instead of a libm call per element);
// for double (the gradient checks) std::exp.
template <class T>
inline T exp_of(T x) {
  if constexpr (std::is_same_v<T, float>)
    return vec_exp(x);
  else
    return std::exp(x);
}

inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K,
                      float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                      float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta,
              C, int(ldc));
}
inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K,
                      double alpha, const double* A, int64_t lda, const double* B, int64_t ldb,
                      double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta,
              C, int(ldc));
}

// Calls f(i0, m, u) for consecutive chunks [i0, i0 + m) of [0, n), u[j] = the uniform float of
// (seed, stream, i0 + j); one Philox block serves four consecutive elements. Each thread draws a
// chunk's words at once (random_u32_fill's vectorised Philox) and hands f whole arrays, so that f's
// loop vectorises. The values do not depend on the thread count.
template <class F>
void for_each_uniform(int64_t n, uint64_t seed, uint64_t stream, F f) {
  constexpr int64_t kChunk = 1024;  // a multiple of 4: chunks start on a Philox block
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    uint32_t words[kChunk];
    float u[kChunk];
    const int64_t i0 = c * kChunk, m = std::min(kChunk, n - i0);
    random_u32_fill(seed, stream, uint64_t(i0), uint64_t(m), words);
    for (int64_t j = 0; j < m; ++j) u[j] = u32_to_unit_float(words[j]);
    f(i0, m, static_cast<const float*>(u));
  }
}

// <a, b> with 8 independent partial sums: a single running sum is a chain of dependent adds that the
// compiler may not reorder (no -ffast-math), which made the context attention's 64-wide dot products
// latency-bound. The order is fixed, so results stay deterministic.
template <class T>
inline T dot_product(const T* a, const T* b, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Per-thread work arrays of the CPU attention, grown to the longest sequence a thread meets.
template <class T>
struct AttentionScratch {
  std::vector<T> qd, dod, kd, vd, dkd, dvd, S, mask, dp, acc;
  std::vector<uint32_t> words;
  std::vector<T> keep;  // [nk][H], 1 or 0
  // keep[j][h] = 1 when the dropout draw of probability (h, j) of a query whose nk * H probabilities
  // start at global index pbase (stored [h][j]) keeps it (u >= p), else 0.
  void draw_keep(uint64_t seed, uint64_t stream, int64_t pbase, int64_t nk, int H, float p) {
    random_u32_fill(seed, stream, uint64_t(pbase), uint64_t(H * nk), words.data());
    for (int h = 0; h < H; ++h)
      for (int64_t j = 0; j < nk; ++j)
        keep[size_t(j * H + h)] = u32_to_unit_float(words[size_t(h * nk + j)]) >= p ? T(1) : T(0);
  }
  void prepare(int64_t n, int H, int hd, bool dropout, bool backward) {
    const size_t W = size_t(H) * size_t(hd), nn = size_t(n);
    qd.resize(W);
    kd.resize(nn * W);
    vd.resize(nn * W);
    S.resize(nn * size_t(H));
    acc.resize(3 * size_t(H) + W);
    if (backward) {
      dod.resize(W);
      dkd.resize(nn * W);
      dvd.resize(nn * W);
      mask.resize(nn * size_t(H));
      dp.resize(nn * size_t(H));
    }
    if (dropout) {
      words.resize(nn * size_t(H));
      keep.resize(nn * size_t(H));
    }
  }
};

// rows [n][H * hd] (head-major, as the projections write them) -> [n][hd][H], and back (+=).
template <class T>
void to_key_d_head(T* dst, const T* src, int64_t n, int H, int hd) {
  for (int64_t j = 0; j < n; ++j)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < hd; ++d) dst[(j * hd + d) * H + h] = src[(j * H + h) * hd + d];
}
template <class T>
void add_from_key_d_head(T* dst, const T* src, int64_t n, int H, int hd) {
  for (int64_t j = 0; j < n; ++j)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < hd; ++d) dst[(j * H + h) * hd + d] += src[(j * hd + d) * H + h];
}

// Per-sequence offsets into the probability buffer (heads * keys per query, queries in order).
std::vector<int64_t> prob_offsets(const AttentionShape& sh) {
  const auto& L = sh.layout;
  std::vector<int64_t> off(size_t(L.num_seqs) + 1, 0);
  for (int64_t s = 0; s < L.num_seqs; ++s) off[s + 1] = off[s] + int64_t(sh.heads) * sh.seq_prob_count(s);
  return off;
}

// Direct real DFT tables for the learnable filter: cos/sin of 2*pi*k*n/K for k in [0, K/2],
// n in [0, K), with k*n reduced mod K first (angles stay in [0, 2 pi), computed in double). `coef[k]` is
// the irfft weight of bin k: 1 for DC and (even K) Nyquist, 2 for the others (Hermitian pair).
template <class T>
struct DftTables {
  int64_t K = 0, Kf = 0;
  std::vector<T> cos_t, sin_t, coef;  // [Kf, K], [Kf, K], [Kf]
  explicit DftTables(int64_t k) : K(k), Kf(k / 2 + 1) {
    cos_t.resize(size_t(Kf * K));
    sin_t.resize(size_t(Kf * K));
    coef.resize(size_t(Kf));
    const double two_pi = 6.283185307179586476925286766559;
    for (int64_t f = 0; f < Kf; ++f) {
      coef[f] = (f == 0 || 2 * f == K) ? T(1) : T(2);
      for (int64_t n = 0; n < K; ++n) {
        const double ang = two_pi * double((f * n) % K) / double(K);
        cos_t[f * K + n] = T(std::cos(ang));
        sin_t[f * K + n] = T(std::sin(ang));
      }
      // DC and Nyquist are exactly real
      if (f == 0 || 2 * f == K)
        for (int64_t n = 0; n < K; ++n) sin_t[f * K + n] = T(0);
    }
  }
};

// Forward rfft (ortho) of one [K, D] block: Fr/Fi [Kf, D].
//   Fr[f] = s * sum_n x[n] cos(2 pi f n / K),  Fi[f] = -s * sum_n x[n] sin(2 pi f n / K),  s = 1/sqrt(K)
template <class T>
void rfft_block(T* Fr, T* Fi, const T* x, const DftTables<T>& tb, int64_t D) {
  const int64_t K = tb.K, Kf = tb.Kf;
  const T s = T(1) / std::sqrt(T(K));
  for (int64_t f = 0; f < Kf; ++f) {
    T* fr = Fr + f * D;
    T* fi = Fi + f * D;
    for (int64_t d = 0; d < D; ++d) fr[d] = fi[d] = T(0);
    for (int64_t n = 0; n < K; ++n) {
      const T c = tb.cos_t[f * K + n], sn = tb.sin_t[f * K + n];
      const T* xn = x + n * D;
      for (int64_t d = 0; d < D; ++d) {
        fr[d] += c * xn[d];
        fi[d] -= sn * xn[d];
      }
    }
    for (int64_t d = 0; d < D; ++d) {
      fr[d] *= s;
      fi[d] *= s;
    }
  }
}

// Inverse real DFT (ortho, n = K) of one half spectrum Gr/Gi [Kf, D] into y [K, D]:
//   y[n] = s * sum_f coef[f] * (Gr[f] cos(2 pi f n / K) - Gi[f] sin(2 pi f n / K))
// (sin is 0 at DC/Nyquist, so their imaginary parts drop out, as in torch.fft.irfft). The same
// sum is the adjoint of rfft_block up to the coef weights, which the backward uses.
template <class T>
void irfft_block(T* y, const T* Gr, const T* Gi, const DftTables<T>& tb, int64_t D) {
  const int64_t K = tb.K, Kf = tb.Kf;
  const T s = T(1) / std::sqrt(T(K));
  for (int64_t n = 0; n < K; ++n) {
    T* yn = y + n * D;
    for (int64_t d = 0; d < D; ++d) yn[d] = T(0);
    for (int64_t f = 0; f < Kf; ++f) {
      const T c = tb.coef[f] * tb.cos_t[f * K + n] * s, sn = tb.coef[f] * tb.sin_t[f * K + n] * s;
      const T* gr = Gr + f * D;
      const T* gi = Gi + f * D;
      for (int64_t d = 0; d < D; ++d) yn[d] += c * gr[d] - sn * gi[d];
    }
  }
}

// Blocks per chunk in the filter backward's dW reduction: each chunk sums its blocks serially
// into a private partial, the partials are then added in chunk order. Fixed (not per thread), so
// dW does not depend on the thread count.
constexpr int64_t kFilterChunk = 32;

template <class T>
class CpuBackend final : public Backend<T> {
 public:
  const char* name() const override { return "cpu"; }

  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, const T* B,
            T beta, T* C) override {
    if (M == 0 || N == 0) return;
    blas_gemm(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              ta ? M : K, B, tb ? K : N, beta, C, N);
  }

  void linear_forward(T* out, const T* in, const T* W, const T* b, int64_t M, int64_t I,
                      int64_t O) override {
    if (M == 0) return;
    if (b) {
#pragma omp parallel for schedule(static)
      for (int64_t m = 0; m < M; ++m) std::memcpy(out + m * O, b, sizeof(T) * O);
    }
    gemm(false, true, M, O, I, T(1), in, W, b ? T(1) : T(0), out);
  }

  void linear_backward(T* din, T* dW, T* db, const T* dout, const T* in, const T* W, int64_t M,
                       int64_t I, int64_t O, bool accumulate) override {
    if (M == 0) return;
    if (din) gemm(false, false, M, I, O, T(1), dout, W, accumulate ? T(1) : T(0), din);
    if (dW) gemm(true, false, O, I, M, T(1), dout, in, T(1), dW);
    if (db) {
      for (int64_t m = 0; m < M; ++m)
        for (int64_t o = 0; o < O; ++o) db[o] += dout[m * O + o];
    }
  }

  void layernorm_forward(T* out, T* mean, T* rstd, const T* in, const T* w, const T* b, int64_t M,
                         int64_t C, T eps) override {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const T* x = in + m * C;
      T mu = 0;
      for (int64_t c = 0; c < C; ++c) mu += x[c];
      mu /= T(C);
      T var = 0;
      for (int64_t c = 0; c < C; ++c) var += (x[c] - mu) * (x[c] - mu);
      var /= T(C);
      const T rs = T(1) / std::sqrt(var + eps);
      T* y = out + m * C;
      for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - mu) * rs * w[c] + b[c];
      if (mean) mean[m] = mu;
      if (rstd) rstd[m] = rs;
    }
  }

  void layernorm_backward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w,
                          const T* mean, const T* rstd, int64_t M, int64_t C) override {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const T* x = in + m * C;
      const T* dy = dout + m * C;
      const T mu = mean[m], rs = rstd[m];
      T dnorm_mean = 0, dnorm_norm_mean = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T xhat = (x[c] - mu) * rs;
        const T dn = w[c] * dy[c];
        dnorm_mean += dn;
        dnorm_norm_mean += dn * xhat;
      }
      dnorm_mean /= T(C);
      dnorm_norm_mean /= T(C);
      T* dx = din + m * C;
      for (int64_t c = 0; c < C; ++c) {
        const T xhat = (x[c] - mu) * rs;
        dx[c] = (w[c] * dy[c] - dnorm_mean - xhat * dnorm_norm_mean) * rs;
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      const T* x = in + m * C;
      const T* dy = dout + m * C;
      for (int64_t c = 0; c < C; ++c) {
        dw[c] += (x[c] - mean[m]) * rstd[m] * dy[c];
        db[c] += dy[c];
      }
    }
  }

  void embedding_forward(T* out, const int32_t* ids, const T* table, const int32_t* pos,
                         const T* pos_table, int64_t M, int64_t D) override {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const T* e = table + int64_t(ids[m]) * D;
      T* y = out + m * D;
      if (pos_table) {
        const T* p = pos_table + int64_t(pos[m]) * D;
        for (int64_t d = 0; d < D; ++d) y[d] = e[d] + p[d];
      } else {
        std::memcpy(y, e, sizeof(T) * D);
      }
    }
  }

  void embedding_backward(T* dtable, T* dpos_table, const T* dout, const int32_t* ids,
                          const int32_t* pos, int64_t M, int64_t D) override {
    for (int64_t m = 0; m < M; ++m) {
      const T* g = dout + m * D;
      if (dtable && ids[m] != 0) {
        T* e = dtable + int64_t(ids[m]) * D;
        for (int64_t d = 0; d < D; ++d) e[d] += g[d];
      }
      if (dpos_table) {
        T* p = dpos_table + int64_t(pos[m]) * D;
        for (int64_t d = 0; d < D; ++d) p[d] += g[d];
      }
    }
  }

  static T act(T x, Activation a) {
    if (a == Activation::kRelu) return x > T(0) ? x : T(0);
    if (a == Activation::kSilu) return x / (T(1) + exp_of(-x));
    return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
  }
  static T act_grad(T x, Activation a) {
    if (a == Activation::kRelu) return x > T(0) ? T(1) : T(0);  // 0 at x <= 0, as PyTorch
    if (a == Activation::kSilu) {
      const T s = T(1) / (T(1) + exp_of(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
    const T pdf = std::exp(T(-0.5) * x * x) * T(0.39894228040143267794);
    return cdf + x * pdf;
  }

  // One loop per activation (a loop that tests `a` per element is not vectorised; the SiLU's is)
  template <Activation A>
  static void activation_forward_loop(T* out, const T* in, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = act(in[i], A);
  }
  template <Activation A>
  static void activation_backward_loop(T* din, const T* dout, const T* in, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) din[i] = dout[i] * act_grad(in[i], A);
  }
  void activation_forward(T* out, const T* in, int64_t n, Activation a) override {
    switch (a) {
      case Activation::kSilu: return activation_forward_loop<Activation::kSilu>(out, in, n);
      case Activation::kGelu: return activation_forward_loop<Activation::kGelu>(out, in, n);
      case Activation::kRelu: return activation_forward_loop<Activation::kRelu>(out, in, n);
    }
    ADA_CHECK(false, "activation_forward: unknown activation " << int(a));
  }
  void activation_backward(T* din, const T* dout, const T* in, int64_t n, Activation a) override {
    switch (a) {
      case Activation::kSilu: return activation_backward_loop<Activation::kSilu>(din, dout, in, n);
      case Activation::kGelu: return activation_backward_loop<Activation::kGelu>(din, dout, in, n);
      case Activation::kRelu: return activation_backward_loop<Activation::kRelu>(din, dout, in, n);
    }
    ADA_CHECK(false, "activation_backward: unknown activation " << int(a));
  }

  void dropout_forward(T* out, const T* in, int64_t n, float p, uint64_t seed,
                       uint64_t stream) override {
    if (p <= 0.0f) {
      if (out != in) std::memcpy(out, in, sizeof(T) * n);
      return;
    }
    const T keep_scale = T(1) / (T(1) - T(p));
    for_each_uniform(n, seed, stream, [out, in, keep_scale, p](int64_t i0, int64_t m, const float* u) {
      // locals, not the closure's members: stores through o could alias those, which kept the loop
      // scalar and branching (the mask is random: a mispredicted branch per 3 elements)
      T* o = out + i0;
      const T* x = in + i0;
      const T scale = keep_scale;
      const float q = p;
      for (int64_t j = 0; j < m; ++j) {
        const T kept = x[j] * scale;
        o[j] = u[j] >= q ? kept : T(0);
      }
    });
  }
  void dropout_backward(T* din, const T* dout, int64_t n, float p, uint64_t seed,
                        uint64_t stream) override {
    dropout_forward(din, dout, n, p, seed, stream);
  }

  void add_inplace(T* y, const T* x, int64_t n) override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void gather_last(T* out, const T* in, const JaggedLayout& L, int64_t D) override {
    for (int64_t s = 0; s < L.num_seqs; ++s)
      std::memcpy(out + s * D, in + (L.tok_offsets[s + 1] - 1) * D, sizeof(T) * D);
  }
  void scatter_last_add(T* din, const T* dout, const JaggedLayout& L, int64_t D) override {
    for (int64_t s = 0; s < L.num_seqs; ++s) {
      T* y = din + (L.tok_offsets[s + 1] - 1) * D;
      for (int64_t d = 0; d < D; ++d) y[d] += dout[s * D + d];
    }
  }

  // Thread mapping: one sequence per iteration (its keys are private to it, so dk/dv need no
  // atomics and the result is independent of the thread count). Inside a sequence the heads are the
  // innermost, vectorised, dimension: keys and values are first transposed to [key][d][head] (the
  // model has many heads of few dims: 16 of 4), so every score, softmax, value and gradient loop runs
  // over contiguous heads while summing over d and over keys in the order of the plain definition.
  // The probabilities keep their storage order ([query][head][key], Backend::attention_forward).
  void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                         const AttentionShape& sh) override {
    const auto& L = sh.layout;
    const int H = sh.heads, hd = sh.head_dim;
    const int64_t W = int64_t(H) * hd;
    const T scale = T(1) / std::sqrt(T(hd));
    const std::vector<int64_t> poff = prob_offsets(sh);
    const float p = sh.dropout;
    const T keep_scale = p > 0 ? T(1) / (T(1) - T(p)) : T(1);
#pragma omp parallel
    {
      AttentionScratch<T> sc;
#pragma omp for schedule(dynamic, 8)
      for (int64_t s = 0; s < L.num_seqs; ++s) {
        const int64_t t0 = L.tok_offsets[s], n = L.tok_offsets[s + 1] - t0;
        const T mask_add = L.all_masked[s] ? T(-10000) : T(0);
        const int64_t i_begin = sh.last_only ? n - 1 : 0;
        int64_t pbase = poff[s];
        sc.prepare(n, H, hd, p > 0, false);
        to_key_d_head(sc.kd.data(), k + t0 * W, n, H, hd);
        to_key_d_head(sc.vd.data(), v + t0 * W, n, H, hd);
        for (int64_t i = i_begin; i < n; ++i) {
          const int64_t qrow = sh.last_only ? s : t0 + i;
          const int64_t nk = L.all_masked[s] ? n : i + 1;
          to_key_d_head(sc.qd.data(), q + qrow * W, 1, H, hd);
          T* S = sc.S.data();  // [nk][H]
          T* mx = sc.acc.data();
          for (int h = 0; h < H; ++h) mx[h] = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j < nk; ++j) {
            const T* kj = sc.kd.data() + j * W;
            T* Sj = S + j * H;
            for (int h = 0; h < H; ++h) Sj[h] = 0;
            for (int d = 0; d < hd; ++d)
              for (int h = 0; h < H; ++h) Sj[h] += sc.qd[size_t(d * H + h)] * kj[d * H + h];
            for (int h = 0; h < H; ++h) {
              Sj[h] = Sj[h] * scale + mask_add;
              mx[h] = std::max(mx[h], Sj[h]);
            }
          }
          T* sum = sc.acc.data() + H;
          for (int h = 0; h < H; ++h) sum[h] = 0;
          for (int64_t j = 0; j < nk; ++j) {
            T* Sj = S + j * H;
            for (int h = 0; h < H; ++h) {
              Sj[h] = exp_of(Sj[h] - mx[h]);
              sum[h] += Sj[h];
            }
          }
          T* inv = sc.acc.data() + 2 * H;
          for (int h = 0; h < H; ++h) inv[h] = T(1) / sum[h];
          // the probabilities, stored per head; dropout on them, masked by the global probability index
          if (p > 0) sc.draw_keep(sh.seed, sh.stream, pbase, nk, H, p);
          T* outd = sc.acc.data() + 3 * H;  // [hd][H]
          for (int64_t c = 0; c < W; ++c) outd[c] = 0;
          for (int64_t j = 0; j < nk; ++j) {
            T* Sj = S + j * H;
            for (int h = 0; h < H; ++h) {
              Sj[h] *= inv[h];
              probs[pbase + h * nk + j] = Sj[h];
            }
            if (p > 0) {
              const T* keep = sc.keep.data() + j * H;
              for (int h = 0; h < H; ++h) {
                const T kept = Sj[h] * keep_scale;
                Sj[h] = keep[h] != T(0) ? kept : T(0);
              }
            }
            const T* vj = sc.vd.data() + j * W;
            for (int d = 0; d < hd; ++d)
              for (int h = 0; h < H; ++h) outd[d * H + h] += Sj[h] * vj[d * H + h];
          }
          T* oq = out + qrow * W;
          for (int h = 0; h < H; ++h)
            for (int d = 0; d < hd; ++d) oq[h * hd + d] = outd[d * H + h];
          pbase += int64_t(H) * nk;
        }
      }
    }
  }

  void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q,
                          const T* k, const T* v, const AttentionShape& sh) override {
    const auto& L = sh.layout;
    const int H = sh.heads, hd = sh.head_dim;
    const int64_t W = int64_t(H) * hd;
    const T scale = T(1) / std::sqrt(T(hd));
    const std::vector<int64_t> poff = prob_offsets(sh);
    const float p = sh.dropout;
    const T keep_scale = p > 0 ? T(1) / (T(1) - T(p)) : T(1);
#pragma omp parallel
    {
      AttentionScratch<T> sc;
#pragma omp for schedule(dynamic, 8)
      for (int64_t s = 0; s < L.num_seqs; ++s) {
        const int64_t t0 = L.tok_offsets[s], n = L.tok_offsets[s + 1] - t0;
        const int64_t i_begin = sh.last_only ? n - 1 : 0;
        int64_t pbase = poff[s];
        sc.prepare(n, H, hd, p > 0, true);
        to_key_d_head(sc.kd.data(), k + t0 * W, n, H, hd);
        to_key_d_head(sc.vd.data(), v + t0 * W, n, H, hd);
        std::fill(sc.dkd.begin(), sc.dkd.end(), T(0));
        std::fill(sc.dvd.begin(), sc.dvd.end(), T(0));
        for (int64_t i = i_begin; i < n; ++i) {
          const int64_t qrow = sh.last_only ? s : t0 + i;
          const int64_t nk = L.all_masked[s] ? n : i + 1;
          to_key_d_head(sc.qd.data(), q + qrow * W, 1, H, hd);
          T* dod = sc.dod.data();  // dout as [hd][H]
          to_key_d_head(dod, dout + qrow * W, 1, H, hd);
          if (p > 0) sc.draw_keep(sh.seed, sh.stream, pbase, nk, H, p);
          T* P = sc.S.data();     // [nk][H] probabilities
          T* M = sc.mask.data();  // [nk][H] dropout factor (0, or 1/(1-p); 1 without dropout)
          T* dp = sc.dp.data();   // [nk][H]
          T* dot_sum = sc.acc.data();
          for (int h = 0; h < H; ++h) dot_sum[h] = 0;
          for (int64_t j = 0; j < nk; ++j) {
            T* Pj = P + j * H;
            T* Mj = M + j * H;
            T* dpj = dp + j * H;
            for (int h = 0; h < H; ++h) Pj[h] = probs[pbase + h * nk + j];
            if (p > 0) {
              const T* keep = sc.keep.data() + j * H;
              for (int h = 0; h < H; ++h) Mj[h] = keep[h] != T(0) ? keep_scale : T(0);
            } else
              for (int h = 0; h < H; ++h) Mj[h] = T(1);
            const T* vj = sc.vd.data() + j * W;
            T* dvj = sc.dvd.data() + j * W;
            for (int h = 0; h < H; ++h) dpj[h] = 0;
            for (int d = 0; d < hd; ++d)
              for (int h = 0; h < H; ++h) {
                dpj[h] += dod[d * H + h] * vj[d * H + h];
                dvj[d * H + h] += Pj[h] * Mj[h] * dod[d * H + h];
              }
            for (int h = 0; h < H; ++h) {
              dpj[h] *= Mj[h];
              dot_sum[h] += Pj[h] * dpj[h];
            }
          }
          T* dqd = sc.acc.data() + H;  // [hd][H]
          for (int64_t c = 0; c < W; ++c) dqd[c] = 0;
          for (int64_t j = 0; j < nk; ++j) {
            const T* Pj = P + j * H;
            T* ds = dp + j * H;  // ds overwrites dp
            for (int h = 0; h < H; ++h) ds[h] = Pj[h] * (ds[h] - dot_sum[h]) * scale;
            const T* kj = sc.kd.data() + j * W;
            T* dkj = sc.dkd.data() + j * W;
            for (int d = 0; d < hd; ++d)
              for (int h = 0; h < H; ++h) {
                dqd[d * H + h] += ds[h] * kj[d * H + h];
                dkj[d * H + h] += ds[h] * sc.qd[size_t(d * H + h)];
              }
          }
          T* dqq = dq + qrow * W;
          for (int h = 0; h < H; ++h)
            for (int d = 0; d < hd; ++d) dqq[h * hd + d] = dqd[d * H + h];
          pbase += int64_t(H) * nk;
        }
        add_from_key_d_head(dk + t0 * W, sc.dkd.data(), n, H, hd);
        add_from_key_d_head(dv + t0 * W, sc.dvd.data(), n, H, hd);
      }
    }
  }


  double sampled_bce(T* logits, T* du, T* dtable, T* dbias, const T* u, const T* table,
                     const T* bias, const int32_t* items, int64_t B, int64_t C, int64_t D,
                     double weight) override {
    double loss = 0;
    const T gscale = T(weight / double(B * C));
#pragma omp parallel for schedule(static) reduction(+ : loss)
    for (int64_t b = 0; b < B; ++b) {
      const T* ub = u + b * D;
      double row = 0;
      for (int64_t c = 0; c < C; ++c) {
        const int32_t j = items[b * C + c];
        const T* e = table + int64_t(j) * D;
        T s = bias ? bias[j] : T(0);
        for (int64_t d = 0; d < D; ++d) s += ub[d] * e[d];
        logits[b * C + c] = s;
        // nn.BCELoss on sigmoid: logs clamped at -100 (so a saturated sigmoid costs 100)
        const T pr = T(1) / (T(1) + std::exp(-s));
        const T y = c == 0 ? T(1) : T(0);
        const T lp = std::max(std::log(pr), T(-100));
        const T l1p = std::max(std::log(T(1) - pr), T(-100));
        row -= double(y * lp + (T(1) - y) * l1p);
      }
      loss += row;
    }
    loss = loss * weight / double(B * C);
    if (!du) return loss;
    // d loss / d logit = (p - y) * p(1-p) / max(p(1-p), 1e-12): PyTorch's BCELoss backward times the
    // sigmoid's; it equals p - y except when the sigmoid saturates in floating point, where it is 0.
    for (int64_t i = 0; i < B * C; ++i) {
      const T pr = T(1) / (T(1) + std::exp(-logits[i]));
      const T y = (i % C) == 0 ? T(1) : T(0);
      const T q = pr * (T(1) - pr);
      const T g = q >= T(1e-12) ? (pr - y) : (pr - y) * q / T(1e-12);
      logits[i] = g * gscale;  // logits now hold d loss / d logit
    }
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      T* dub = du + b * D;
      for (int64_t d = 0; d < D; ++d) dub[d] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T g = logits[b * C + c];
        const T* e = table + int64_t(items[b * C + c]) * D;
        for (int64_t d = 0; d < D; ++d) dub[d] += g * e[d];
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      const T* ub = u + b * D;
      for (int64_t c = 0; c < C; ++c) {
        const int32_t j = items[b * C + c];
        const T g = logits[b * C + c];
        if (dbias) dbias[j] += g;
        if (dtable && j != 0) {
          T* e = dtable + int64_t(j) * D;
          for (int64_t d = 0; d < D; ++d) e[d] += g * ub[d];
        }
      }
    }
    return loss;
  }

  // ---- Ada-Retrieval adapter ops ----

  // Learnable filter: per block r, F = rfft(in[r]) (ortho), G = F * W (complex), out[r] =
  // irfft(G, n=K) (ortho), all by direct DFT with exact tables: O(R K (K/2+1) D), fine for the
  // reference's K = 20. Thread mapping: one block per iteration (blocks are independent).
  void filter_forward(T* out, const T* in, const T* W, int64_t R, int64_t K, int64_t D) override {
    ADA_CHECK(K >= 1 && D >= 0 && R >= 0, "filter_forward: bad sizes R=" << R << " K=" << K << " D=" << D);
    if (R == 0 || D == 0) return;
    const DftTables<T> tb(K);
    const int64_t Kf = tb.Kf;
#pragma omp parallel
    {
      std::vector<T> Fr(size_t(Kf * D)), Fi(size_t(Kf * D));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < R; ++r) {
        rfft_block(Fr.data(), Fi.data(), in + r * K * D, tb, D);
        for (int64_t i = 0; i < Kf * D; ++i) {  // G = F * W, in place
          const T wr = W[2 * i], wi = W[2 * i + 1];
          const T fr = Fr[size_t(i)], fi = Fi[size_t(i)];
          Fr[size_t(i)] = fr * wr - fi * wi;
          Fi[size_t(i)] = fr * wi + fi * wr;
        }
        irfft_block(out + r * K * D, Fr.data(), Fi.data(), tb, D);
      }
    }
  }

  // Backward, per block: dG = adjoint of irfft applied to dout, i.e.
  //   dGr[f] = s coef[f] sum_n dout[n] cos,  dGi[f] = -s coef[f] sum_n dout[n] sin
  // (= coef * rfft_block(dout)); dW += (dGr Fr + dGi Fi, dGi Fr - dGr Fi);
  // dF = dG * conj(W); din = adjoint of rfft = irfft_block with coef 1 applied to dF.
  // Thread mapping: fixed chunks of kFilterChunk blocks per iteration; each chunk's dW partial is
  // private, and partials are summed in chunk order afterwards (deterministic for any thread count).
  void filter_backward(T* din, T* dW, const T* dout, const T* in, const T* W, int64_t R, int64_t K,
                       int64_t D) override {
    ADA_CHECK(K >= 1 && D >= 0 && R >= 0, "filter_backward: bad sizes R=" << R << " K=" << K << " D=" << D);
    if (R == 0 || D == 0) return;
    const DftTables<T> tb(K);
    DftTables<T> tb_adj(K);  // rfft's adjoint: irfft_block with every coef 1
    std::fill(tb_adj.coef.begin(), tb_adj.coef.end(), T(1));
    const int64_t Kf = tb.Kf, WN = Kf * D * 2;
    const int64_t chunks = (R + kFilterChunk - 1) / kFilterChunk;
    std::vector<T> partial(size_t(chunks * WN), T(0));
#pragma omp parallel
    {
      std::vector<T> Fr(size_t(Kf * D)), Fi(size_t(Kf * D)), Gr(size_t(Kf * D)), Gi(size_t(Kf * D));
#pragma omp for schedule(static)
      for (int64_t ch = 0; ch < chunks; ++ch) {
        T* dWp = partial.data() + ch * WN;
        const int64_t r_end = std::min(R, (ch + 1) * kFilterChunk);
        for (int64_t r = ch * kFilterChunk; r < r_end; ++r) {
          rfft_block(Fr.data(), Fi.data(), in + r * K * D, tb, D);
          rfft_block(Gr.data(), Gi.data(), dout + r * K * D, tb, D);
          for (int64_t f = 0; f < Kf; ++f) {
            for (int64_t d = 0; d < D; ++d) {
              const int64_t i = f * D + d;
              const T dgr = Gr[size_t(i)] * tb.coef[f], dgi = Gi[size_t(i)] * tb.coef[f];
              const T fr = Fr[size_t(i)], fi = Fi[size_t(i)];
              const T wr = W[2 * i], wi = W[2 * i + 1];
              dWp[2 * i] += dgr * fr + dgi * fi;
              dWp[2 * i + 1] += dgi * fr - dgr * fi;
              Gr[size_t(i)] = dgr * wr + dgi * wi;  // dF = dG * conj(W)
              Gi[size_t(i)] = dgi * wr - dgr * wi;
            }
          }
          irfft_block(din + r * K * D, Gr.data(), Gi.data(), tb_adj, D);
        }
      }
    }
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const T* p = partial.data() + ch * WN;
      for (int64_t i = 0; i < WN; ++i) dW[i] += p[i];
    }
  }

  // Context attention: per row b, for each query x of the row, p = softmax(C[b] x / sqrt(D)) over
  // the Nc context rows and out = sum_j p_j C[b, j]. Thread mapping: one row b per iteration (its
  // queries and its context block are private to it). Nc >= 1.
  void context_attention_forward(T* out, T* probs, const T* X, const T* C, const int64_t* q_offsets,
                                 int64_t B, int64_t Nc, int64_t D) override {
    ADA_CHECK(Nc >= 1, "context_attention_forward: needs at least one context row, Nc=" << Nc);
    const T scale = T(1) / std::sqrt(T(D));
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t b = 0; b < B; ++b) {
      const T* Cb = C + b * Nc * D;
      for (int64_t q = q_offsets[b]; q < q_offsets[b + 1]; ++q) {
        const T* x = X + q * D;
        T* p = probs + q * Nc;
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < Nc; ++j) {
          p[j] = dot_product(x, Cb + j * D, D) * scale;
          mx = std::max(mx, p[j]);
        }
        T sum = 0;
        for (int64_t j = 0; j < Nc; ++j) {
          p[j] = exp_of(p[j] - mx);
          sum += p[j];
        }
        const T inv = T(1) / sum;
        for (int64_t j = 0; j < Nc; ++j) p[j] *= inv;
        T* o = out + q * D;
        for (int64_t d = 0; d < D; ++d) o[d] = 0;
        for (int64_t j = 0; j < Nc; ++j) {
          const T* c = Cb + j * D;
          for (int64_t d = 0; d < D; ++d) o[d] += p[j] * c[d];
        }
      }
    }
  }

  // Backward: dp_j = <dout, C_j>, dC_j += p_j dout, ds_j = p_j (dp_j - sum_k p_k dp_k) / sqrt(D),
  // dX = sum_j ds_j C_j, dC_j += ds_j x. Same thread mapping as forward; dC[b] is accumulated by
  // row b's queries in order, so the result is deterministic.
  void context_attention_backward(T* dX, T* dC, const T* dout, const T* probs, const T* X,
                                  const T* C, const int64_t* q_offsets, int64_t B, int64_t Nc,
                                  int64_t D) override {
    ADA_CHECK(Nc >= 1, "context_attention_backward: needs at least one context row, Nc=" << Nc);
    const T scale = T(1) / std::sqrt(T(D));
#pragma omp parallel
    {
      std::vector<T> dp(static_cast<size_t>(Nc));
#pragma omp for schedule(dynamic, 4)
      for (int64_t b = 0; b < B; ++b) {
        const T* Cb = C + b * Nc * D;
        T* dCb = dC + b * Nc * D;
        for (int64_t q = q_offsets[b]; q < q_offsets[b + 1]; ++q) {
          const T* x = X + q * D;
          const T* g = dout + q * D;
          const T* p = probs + q * Nc;
          T dot_sum = 0;
          for (int64_t j = 0; j < Nc; ++j) {
            const T* c = Cb + j * D;
            T* dc = dCb + j * D;
            const T acc = dot_product(g, c, D);
            for (int64_t d = 0; d < D; ++d) dc[d] += p[j] * g[d];
            dp[size_t(j)] = acc;
            dot_sum += p[j] * acc;
          }
          T* dx = dX + q * D;
          for (int64_t d = 0; d < D; ++d) dx[d] = 0;
          for (int64_t j = 0; j < Nc; ++j) {
            const T ds = p[j] * (dp[size_t(j)] - dot_sum) * scale;
            const T* c = Cb + j * D;
            T* dc = dCb + j * D;
            for (int64_t d = 0; d < D; ++d) {
              dx[d] += ds * c[d];
              dc[d] += ds * x[d];
            }
          }
        }
      }
    }
  }

  // GRU cell (nn.GRU, gates r, z, n; the math of ada/gru_cell.hpp, shared with the CUDA kernels):
  // elementwise per (b, d). Thread mapping: one batch row per iteration.
  void gru_cell_forward(T* h_new, T* gates, const T* gi, const T* gh, const T* h_prev, int64_t B,
                        int64_t D) override {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      T* g = gates + b * 3 * D;
      for (int64_t d = 0; d < D; ++d) {
        const GruGates<T> o =
            gru_cell_gates(gi + b * 3 * D, gh + b * 3 * D, D, d, h_prev[b * D + d]);
        g[d] = o.r;
        g[D + d] = o.z;
        g[2 * D + d] = o.n;
        h_new[b * D + d] = o.h;
      }
    }
  }

  // Backward (gru_cell_grads); d_hprev gets the direct path only. Same thread mapping.
  void gru_cell_backward(T* d_gi, T* d_gh, T* d_hprev, const T* d_hnew, const T* gates,
                         const T* gh, const T* h_prev, int64_t B, int64_t D) override {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const T* g = gates + b * 3 * D;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = b * D + d;
        const GruGrads<T> o = gru_cell_grads(g[d], g[D + d], g[2 * D + d],
                                             gh[b * 3 * D + 2 * D + d], h_prev[i], d_hnew[i]);
        d_hprev[i] = o.h_prev;
        gru_store_grads(d_gi + b * 3 * D, d_gh + b * 3 * D, D, d, o);
      }
    }
  }

  // Column concatenation and its backward; one row per iteration.
  void concat_cols(T* out, const T* a, const T* b, int64_t M, int64_t Da, int64_t Db) override {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      T* o = out + m * (Da + Db);
      std::memcpy(o, a + m * Da, sizeof(T) * size_t(Da));
      std::memcpy(o + Da, b + m * Db, sizeof(T) * size_t(Db));
    }
  }
  void split_cols_add(T* da, T* db, const T* dout, int64_t M, int64_t Da, int64_t Db) override {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const T* g = dout + m * (Da + Db);
      if (da)
        for (int64_t d = 0; d < Da; ++d) da[m * Da + d] += g[d];
      if (db)
        for (int64_t d = 0; d < Db; ++d) db[m * Db + d] += g[Da + d];
    }
  }

  double sum_squares(const T* x, int64_t n) override {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
    return s;
  }
  void scale(T* x, int64_t n, T s) override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
  }

  void topk(ItemId* out_ids, const T* U, int64_t B, const T* table, const T* bias, int64_t N, int64_t D, int k,
            const Ragged& exclude, float* out_scores) override {
    std::vector<float> own;
    if (!out_scores) own.resize(size_t(B) * size_t(std::max(k, 0)));
    float* scores_out = out_scores ? out_scores : own.data();
    if constexpr (std::is_same_v<T, float>) {
      topk_excluding(U, B, table, bias, N, D, k, exclude, nullptr, out_ids, scores_out);
    } else {
      const std::vector<float> uf(U, U + B * D), ef(table, table + N * D);
      std::vector<float> bf;
      if (bias) bf.assign(bias, bias + N);
      topk_excluding(uf.data(), B, ef.data(), bias ? bf.data() : nullptr, N, D, k, exclude, nullptr, out_ids,
                     scores_out);
    }
  }

  void adam_update(T* param, T* m, T* v, const T* grad, int64_t n, double lr, double beta1,
                   double beta2, double eps, int64_t step) override {
    const double bc1 = 1.0 - std::pow(beta1, double(step));
    const double bc2 = 1.0 - std::pow(beta2, double(step));
    const T step_size = T(lr / bc1);
    const T bc2_sqrt = T(std::sqrt(bc2));
    const T b1 = T(beta1), b2 = T(beta2), e = T(eps);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T g = grad[i];
      m[i] = b1 * m[i] + (T(1) - b1) * g;
      v[i] = b2 * v[i] + (T(1) - b2) * g * g;
      const T denom = std::sqrt(v[i]) / bc2_sqrt + e;
      param[i] -= step_size * m[i] / denom;
    }
  }
};

}  // namespace

template <class T>
std::unique_ptr<Backend<T>> make_cpu_backend() {
  return std::make_unique<CpuBackend<T>>();
}
template std::unique_ptr<Backend<float>> make_cpu_backend<float>();
template std::unique_ptr<Backend<double>> make_cpu_backend<double>();

}  // namespace ada
