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
#include <vector>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/rng.hpp"

namespace ada {

int64_t AttentionShape::prob_size() const {
  int64_t keys = 0;
  for (int64_t s = 0; s < layout.num_seqs; ++s) keys += seq_prob_count(s);
  return keys * heads;
}

namespace {

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

// Calls f(i, u) for every i in [0, n) with u = the uniform float of (seed, stream, i); one Philox
// block serves four consecutive elements.
template <class F>
void for_each_uniform(int64_t n, uint64_t seed, uint64_t stream, F f) {
  const int64_t blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const Philox4 r = philox4x32_10(uint32_t(blk), uint32_t(uint64_t(blk) >> 32), uint32_t(stream),
                                    uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
    const int64_t end = std::min<int64_t>(n, blk * 4 + 4);
    for (int64_t i = blk * 4; i < end; ++i) f(i, u32_to_unit_float(r.v[i & 3]));
  }
}

// Per-sequence offsets into the probability buffer (heads * keys per query, queries in order).
std::vector<int64_t> prob_offsets(const AttentionShape& sh) {
  const auto& L = sh.layout;
  std::vector<int64_t> off(size_t(L.num_seqs) + 1, 0);
  for (int64_t s = 0; s < L.num_seqs; ++s) off[s + 1] = off[s] + int64_t(sh.heads) * sh.seq_prob_count(s);
  return off;
}

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
    if (a == Activation::kSilu) return x / (T(1) + std::exp(-x));
    return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
  }
  static T act_grad(T x, Activation a) {
    if (a == Activation::kSilu) {
      const T s = T(1) / (T(1) + std::exp(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
    const T pdf = std::exp(T(-0.5) * x * x) * T(0.39894228040143267794);
    return cdf + x * pdf;
  }

  void activation_forward(T* out, const T* in, int64_t n, Activation a) override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = act(in[i], a);
  }
  void activation_backward(T* din, const T* dout, const T* in, int64_t n, Activation a) override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) din[i] = dout[i] * act_grad(in[i], a);
  }

  void dropout_forward(T* out, const T* in, int64_t n, float p, uint64_t seed,
                       uint64_t stream) override {
    if (p <= 0.0f) {
      if (out != in) std::memcpy(out, in, sizeof(T) * n);
      return;
    }
    const T keep_scale = T(1) / (T(1) - T(p));
    for_each_uniform(n, seed, stream,
                     [&](int64_t i, float u) { out[i] = u >= p ? in[i] * keep_scale : T(0); });
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
  // atomics and the result is independent of the thread count).
  void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                         const AttentionShape& sh) override {
    const auto& L = sh.layout;
    const int H = sh.heads, hd = sh.head_dim;
    const int64_t W = int64_t(H) * hd;
    const T scale = T(1) / std::sqrt(T(hd));
    const std::vector<int64_t> poff = prob_offsets(sh);
    const float p = sh.dropout;
    const T keep_scale = p > 0 ? T(1) / (T(1) - T(p)) : T(1);
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t s = 0; s < L.num_seqs; ++s) {
      const int64_t t0 = L.tok_offsets[s], n = L.tok_offsets[s + 1] - t0;
      const T mask_add = L.all_masked[s] ? T(-10000) : T(0);
      const int64_t i_begin = sh.last_only ? n - 1 : 0;
      int64_t pbase = poff[s];
      std::vector<T> pd(static_cast<size_t>(n));
      std::vector<uint32_t> bits(static_cast<size_t>(n));
      for (int64_t i = i_begin; i < n; ++i) {
        const int64_t qrow = sh.last_only ? s : t0 + i;
        const int64_t nk = L.all_masked[s] ? n : i + 1;
        for (int h = 0; h < H; ++h) {
          const T* qh = q + qrow * W + h * hd;
          T* ph = probs + pbase + int64_t(h) * nk;
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j < nk; ++j) {
            const T* kh = k + (t0 + j) * W + h * hd;
            T dot = 0;
            for (int d = 0; d < hd; ++d) dot += qh[d] * kh[d];
            const T sc = dot * scale + mask_add;
            ph[j] = sc;
            mx = std::max(mx, sc);
          }
          T sum = 0;
          for (int64_t j = 0; j < nk; ++j) {
            ph[j] = std::exp(ph[j] - mx);
            sum += ph[j];
          }
          const T inv = T(1) / sum;
          for (int64_t j = 0; j < nk; ++j) ph[j] *= inv;
          // dropout on the probabilities, mask indexed by the global probability index
          if (p > 0) {
            random_u32_fill(sh.seed, sh.stream, uint64_t(pbase + int64_t(h) * nk), uint64_t(nk), bits.data());
            for (int64_t j = 0; j < nk; ++j)
              pd[j] = u32_to_unit_float(bits[j]) >= p ? ph[j] * keep_scale : T(0);
          } else {
            for (int64_t j = 0; j < nk; ++j) pd[j] = ph[j];
          }
          T* oh = out + qrow * W + h * hd;
          for (int d = 0; d < hd; ++d) oh[d] = 0;
          for (int64_t j = 0; j < nk; ++j) {
            const T* vh = v + (t0 + j) * W + h * hd;
            for (int d = 0; d < hd; ++d) oh[d] += pd[j] * vh[d];
          }
        }
        pbase += int64_t(H) * nk;
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
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t s = 0; s < L.num_seqs; ++s) {
      const int64_t t0 = L.tok_offsets[s], n = L.tok_offsets[s + 1] - t0;
      const int64_t i_begin = sh.last_only ? n - 1 : 0;
      int64_t pbase = poff[s];
      std::vector<T> dp(static_cast<size_t>(n));
      std::vector<uint32_t> bits(static_cast<size_t>(n));
      for (int64_t i = i_begin; i < n; ++i) {
        const int64_t qrow = sh.last_only ? s : t0 + i;
        const int64_t nk = L.all_masked[s] ? n : i + 1;
        for (int h = 0; h < H; ++h) {
          const T* ph = probs + pbase + int64_t(h) * nk;
          const T* doh = dout + qrow * W + h * hd;
          const T* qh = q + qrow * W + h * hd;
          T dot_sum = 0;
          if (p > 0)
            random_u32_fill(sh.seed, sh.stream, uint64_t(pbase + int64_t(h) * nk), uint64_t(nk), bits.data());
          for (int64_t j = 0; j < nk; ++j) {
            const T m = p > 0 ? (u32_to_unit_float(bits[j]) >= p ? keep_scale : T(0)) : T(1);
            const T* vh = v + (t0 + j) * W + h * hd;
            T* dvh = dv + (t0 + j) * W + h * hd;
            T g = 0;
            for (int d = 0; d < hd; ++d) {
              g += doh[d] * vh[d];
              dvh[d] += ph[j] * m * doh[d];
            }
            dp[j] = g * m;
            dot_sum += ph[j] * dp[j];
          }
          T* dqh = dq + qrow * W + h * hd;
          for (int d = 0; d < hd; ++d) dqh[d] = 0;
          for (int64_t j = 0; j < nk; ++j) {
            const T ds = ph[j] * (dp[j] - dot_sum) * scale;
            const T* kh = k + (t0 + j) * W + h * hd;
            T* dkh = dk + (t0 + j) * W + h * hd;
            for (int d = 0; d < hd; ++d) {
              dqh[d] += ds * kh[d];
              dkh[d] += ds * qh[d];
            }
          }
        }
        pbase += int64_t(H) * nk;
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

  double sum_squares(const T* x, int64_t n) override {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
    return s;
  }
  void scale(T* x, int64_t n, T s) override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
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
