// The fused user representation adapter (reference-spec 3.2) on the GPU: see kernels/fused_user.cuh
// and Backend::user_adapter_forward/backward (include/ada/backend.hpp); the CPU backend's composition
// of the primitive ops (src/core/fused_user.cpp) is the specification.
//
// Design. One CTA of kCta = 128 threads owns a tile of kRows = 8 batch rows and keeps all of
// that tile's activations in shared memory; the weights are streamed through shared memory in
// chunks of input features (the next chunk is prefetched into registers while the current
// one is multiplied, so the L2 latency overlaps the FMAs; 16 to 64 features per chunk: see kc_for). A product out[R, O] = in[R, I] W^T (or
// in W) maps thread (cg = tid % 64, rg = tid / 64) to rows rg*4 .. rg*4+3 and the CT columns
// cg + 64 j (CT = ceil(O / 64) <= 6): 4 x CT FP32 accumulators in registers, the weight chunk read
// conflict-free (consecutive columns per warp), the activations broadcast (as float4 along k when
// the row stride is a multiple of 4, i.e. D % 4 == 0; the sum order is k = 0, 1, ... either way). Products over several
// row blocks (the GRU input projection of several steps) reuse each weight chunk for all of them.
//   forward kernel: the input projections users[s] W_ih^T + b_ih for up to G steps at a time (G as
//     shared memory allows: all t at D = 64), then per step h W_hh^T + b_hh (skipped at s = 0, where
//     h_0 = 0 and gh = b_hh) and the gate math, then [v; h_t] -> W1 -> relu -> W2, and per row (one
//     warp) dropout with the counter RNG (element (b, d) of the [B, D] tensor, as dropout_forward),
//     the residual and LayerNorm by warp reductions. It writes out and the saved tensors.
//   backward kernel: LayerNorm backward (warp per row), dropout mask, d a1r = d a2 W2, relu', d z =
//     d a1 W1 (d v = residual + d z[:, :D]), then the GRU steps in reverse: gate backward, d h_prev =
//     d h z + d gh W_hh (not at s = 0: h_0 is a constant), and d users[s] += d gi W_ih for up to G
//     steps at a time (one pass over W_ih for the group, as the forward's input projections). It leaves d a2,
//     d a1 and every step's d gi, d gh in `work`.
//   weight gradients: reductions over the B (or t B) rows, done by cuBLAS GEMMs on the saved
//     activations (dW2 += d a2^T a1r; dW1 += d a1^T z, z = [v | h_t] written by the kernel;
//     dW_hh += d gh^T h over steps 1..t-1 in one GEMM (h_0 = 0 adds nothing); dW_ih += d gi^T users
//     over all steps in one GEMM): a per-tile partial sum plus a reduction would read the same data
//     and cuBLAS already runs these [O, rows] x [rows, I] shapes near peak. The bias and LayerNorm
//     parameter gradients are column sums: partial sums over chunks of 256 rows, then the chunks
//     summed in order by the last CTA to finish (one launch, deterministic).
//   Global loads in the forward's elementwise loops are batched (batched_for: a thread issues the
//   loads of several iterations before the first store), so a tile pays one memory latency per
//   batch, not one per iteration; the bias of a product is loaded with its first weight chunk. In
//   the backward, batched the same way, they took the kernel from 192 registers (sm_90) to 255 with
//   spills and it ran slower (117 -> 124 us at B = 1024, D = 64, t = 4 on an H100); so (since
//   2026-11-29, not yet run on a GPU) the backward copies what its elementwise loops read (a1r, v,
//   h_t, and the gates, gh's n part and h_prev of the last P steps, as shared memory allows) into
//   shared memory by cp.async at its start, and each group's d users rows during the group's
//   product: no registers held, one wait where there were about 28 dependent global loads per
//   thread at t = 1 (a loop that stores to global memory cannot have its next load hoisted above the
//   store). The buffers' offsets are kernel parameters: computed in the kernel, they were registers
//   live across the products and took DB = 128 to 255 registers with spills. ptxas (CUDA 13): sm_90
//   194 and 252 registers (DB = 64, 128), no spills; sm_80 255 and 254, 16 bytes spilled at DB = 64.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "ada/backend.hpp"
#include "ada/check.hpp"
#include "ada/gru_cell.hpp"
#include "ada/rng.hpp"
#include "kernels/cuda_util.cuh"
#include "kernels/fused_user.cuh"
#include "kernels/phase_clock.cuh"
#include "kernels/warp_mma.cuh"

namespace ada {
namespace cuda {
namespace {

constexpr int kRows = 8;       // batch rows per CTA
constexpr int kCta = 128;  // threads per CTA: 64 column groups x 2 row groups of 4 rows
constexpr int kRowsPer = 4;    // rows per thread in a product
// Weight chunk: kc(CT) input features per shared-memory stage, so that a thread prefetches 24-32
// weights per chunk whatever the width; kWsFloats covers every chunk (kc x (64 CT + 2)).
__host__ __device__ constexpr int kc_for(int ct) { return ct == 1 ? 64 : ct == 2 ? 32 : ct <= 4 ? 16 : 8; }
constexpr int kWsFloats = 64 * 66;  // the largest: CT = 1 (CT = 2: 4160, 3: 3104, 4: 4128, 6: 3088)
constexpr int kMaxD = 128;
constexpr size_t kSmemBudget = 96 * 1024;  // forward: the GRU input projections of G steps fit this

static_assert(kCta == 64 * (kRows / kRowsPer), "64 column groups x row groups");

// for (i = tid; i < n; i += kCta) use(i, ld(i)), in batches of U iterations whose loads ld(i) are
// all issued before the first use: a loop that loads from global memory and stores (to global
// memory, which the compiler must assume may alias the next load, or to shared memory) would
// otherwise wait one full L2/DRAM latency per iteration. Each element's arithmetic is unchanged.
template <int U, class Ld, class Use>
__device__ __forceinline__ void batched_for(int n, Ld ld, Use use) {
  using V = decltype(ld(0));
  for (int i0 = int(threadIdx.x); i0 < n; i0 += U * kCta) {
    V val[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i0 + u * kCta < n) val[u] = ld(i0 + u * kCta);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i0 + u * kCta < n) use(i0 + u * kCta, val[u]);
  }
}

// out[rb][r][o] = bias[o] (0 without bias) + sum_k in[rb][r][k] * W(o, k) for the nrb row blocks
// rb of kRows rows, o < O, k < I, where W(o, k) = W[o * I + k] (trans = false: a linear layer's
// weight [O, I]) or W[k * O + o] (trans = true: the input gradient of a linear layer with weight
// [I, O]). out/in are shared memory (row strides ldo/ldi, block strides so/si); Ws holds
// kKc x (64 CT + 2) floats. Starts and ends with __syncthreads (callers write `in` before, read `out`
// after). Sums in the order k = 0, 1, ... after the bias.
template <int CT, bool trans>
__device__ void block_product(float* out, int ldo, int so, const float* in, int ldi, int si, int nrb,
                              const float* __restrict__ W, const float* __restrict__ bias, int O, int I,
                              float* Ws) {
  constexpr int kKc = kc_for(CT), kCols = 64 * CT, kLdw = kCols + 2, kLoads = kCols * kKc / kCta;
  static_assert(kKc * kLdw <= kWsFloats && kLoads * kCta == kCols * kKc, "weight chunk layout");
  const int tid = threadIdx.x, cg = tid & 63, r0 = (tid >> 6) * kRowsPer;
  float pre[kLoads];
  // the bias, loaded with chunk 0 (not after the barrier, where its latency would stall every thread)
  float bv[CT];
#pragma unroll
  for (int j = 0; j < CT; ++j) bv[j] = (bias && cg + 64 * j < O) ? bias[cg + 64 * j] : 0.f;
  // prefetch chunk 0
#pragma unroll
  for (int i = 0; i < kLoads; ++i) {
    const int idx = tid + i * kCta;
    const int o = trans ? idx % kCols : idx / kKc, kk = trans ? idx / kCols : idx % kKc;
    pre[i] = (o < O && kk < I) ? (trans ? W[int64_t(kk) * O + o] : W[int64_t(o) * I + kk]) : 0.f;
  }
  for (int k0 = 0; k0 < I; k0 += kKc) {
    __syncthreads();  // Ws free (previous chunk used), `in` written
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int idx = tid + i * kCta;
      const int o = trans ? idx % kCols : idx / kKc, kk = trans ? idx / kCols : idx % kKc;
      Ws[kk * kLdw + o] = pre[i];
    }
    __syncthreads();
    const int k1 = k0 + kKc;
    if (k1 < I) {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int idx = tid + i * kCta;
        const int o = trans ? idx % kCols : idx / kKc, k = k1 + (trans ? idx / kCols : idx % kKc);
        pre[i] = (o < O && k < I) ? (trans ? W[int64_t(k) * O + o] : W[int64_t(o) * I + k]) : 0.f;
      }
    }
    const int kc = min(kKc, I - k0);
    for (int rb = 0; rb < nrb; ++rb) {
      const float* a = in + rb * si + r0 * ldi + k0;
      float* y = out + rb * so + r0 * ldo;
      float acc[kRowsPer][CT];
#pragma unroll
      for (int j = 0; j < CT; ++j) {
        const int o = cg + 64 * j;
        const float init = o < O ? (k0 == 0 ? bv[j] : 0.f) : 0.f;
#pragma unroll
        for (int r = 0; r < kRowsPer; ++r) acc[r][j] = (k0 == 0 || o >= O) ? init : y[r * ldo + o];
      }
      int kk = 0;
      if ((ldi & 3) == 0)  // rows 16-byte aligned (every shared array starts at a multiple of 8 floats)
        for (; kk + 4 <= kc; kk += 4) {
          float4 a4[kRowsPer];
#pragma unroll
          for (int r = 0; r < kRowsPer; ++r) a4[r] = *reinterpret_cast<const float4*>(a + r * ldi + kk);
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            float wv[CT];
#pragma unroll
            for (int j = 0; j < CT; ++j) wv[j] = Ws[(kk + q) * kLdw + cg + 64 * j];
#pragma unroll
            for (int r = 0; r < kRowsPer; ++r) {
              const float av = q == 0 ? a4[r].x : q == 1 ? a4[r].y : q == 2 ? a4[r].z : a4[r].w;
#pragma unroll
              for (int j = 0; j < CT; ++j) acc[r][j] = fmaf(av, wv[j], acc[r][j]);
            }
          }
        }
#pragma unroll 1
      for (; kk < kc; ++kk) {  // the tail (and rows not 16-byte aligned: D % 4 != 0)
        float wv[CT], av[kRowsPer];
#pragma unroll
        for (int j = 0; j < CT; ++j) wv[j] = Ws[kk * kLdw + cg + 64 * j];
#pragma unroll
        for (int r = 0; r < kRowsPer; ++r) av[r] = a[r * ldi + kk];
#pragma unroll
        for (int r = 0; r < kRowsPer; ++r)
#pragma unroll
          for (int j = 0; j < CT; ++j) acc[r][j] = fmaf(av[r], wv[j], acc[r][j]);
      }
#pragma unroll
      for (int j = 0; j < CT; ++j) {
        const int o = cg + 64 * j;
        if (o < O)
#pragma unroll
          for (int r = 0; r < kRowsPer; ++r) y[r * ldo + o] = acc[r][j];
      }
    }
  }
  __syncthreads();
}

// CT for O outputs at D <= DB: the instantiations DB = 64 and 128.
template <int DB>
struct Cts {
  static constexpr int k1 = DB / 64, k2 = 2 * DB / 64, k3 = 3 * DB / 64;
};

struct FwdArgs {
  float* out;
  UserAdapterSaved<float> sv;
  const float* users;
  const float* v;
  UserAdapterTensors<const float*> w;
  int64_t B;
  int D, t, G;
  float p, keep_scale, eps;
  uint64_t seed, stream;
};

template <int DB>
size_t fwd_smem_floats(int D, int G) {
  return size_t(kWsFloats) + size_t(kRows) * 10 * D + size_t(G) * kRows * 4 * D;
}

template <int DB>
__global__ void __launch_bounds__(kCta) k_user_fwd(FwdArgs A) {
  extern __shared__ float sm[];
  const int D = A.D, t = A.t, G = A.G, tid = threadIdx.x;
  const int64_t B = A.B, b0 = int64_t(blockIdx.x) * kRows;
  const int nr = int(min(int64_t(kRows), B - b0));
  const int RD = kRows * D;
  float* Ws = sm;
  float* V = Ws + kWsFloats;
  float* H = V + RD;
  float* GH = H + RD;       // [R, 3D]
  float* Z = GH + 3 * RD;   // [R, 2D]
  float* A1 = Z + 2 * RD;   // [R, 2D]
  float* A2 = A1 + 2 * RD;  // [R, D]
  float* X = A2 + RD;       // [G, R, D]
  float* GI = X + G * RD;   // [G, R, 3D]
  const int nrd = nr * D;  // the tile's live elements (rows b0 .. b0+nr-1 of a [B, D] tensor)
  batched_for<4>(
    RD, [&](int i) { return i < nrd ? A.v[b0 * D + i] : 0.f; },
    [&](int i, float x) {
      V[i] = x;
      H[i] = 0.f;
      if (i < nrd) A.sv.hs[b0 * D + i] = 0.f;
    });
  for (int s = 0; s < t; ++s) {
    const int gs = s % G;
    if (gs == 0) {  // input projections of steps s .. s+G-1
      const int ng = min(G, t - s);
      batched_for<8>(
        ng * RD,
        [&](int i) {
          const int g = i / RD, j = i % RD;
          return j < nrd ? A.users[(int64_t(s + g) * B + b0) * D + j] : 0.f;
        },
        [&](int i, float x) { X[i] = x; });
      block_product<Cts<DB>::k3, false>(GI, 3 * D, 3 * RD, X, D, RD, ng, A.w.w_ih, A.w.b_ih, 3 * D, D, Ws);
    }
    if (s == 0) {
      batched_for<4>(
        3 * RD, [&](int i) { return A.w.b_hh[i % (3 * D)]; }, [&](int i, float x) { GH[i] = x; });
      __syncthreads();
    } else {
      block_product<Cts<DB>::k3, false>(GH, 3 * D, 0, H, D, 0, 1, A.w.w_hh, A.w.b_hh, 3 * D, D, Ws);
    }
    const float* gi = GI + gs * 3 * RD;
    float* gates = A.sv.gates + int64_t(s) * B * 3 * D;
    float* ghs = A.sv.gh + int64_t(s) * B * 3 * D;
    float* hn = A.sv.hs + int64_t(s + 1) * B * D;
    for (int i = tid; i < RD; i += kCta) {
      const int r = i / D, d = i % D;
      const float* h3 = GH + r * 3 * D;
      const GruGates<float> o = gru_cell_gates(gi + r * 3 * D, h3, D, d, H[i]);
      const float h = o.h;
      H[i] = h;
      if (r < nr) {
        const int64_t o3 = (b0 + r) * 3 * D;
        gates[o3 + d] = o.r;
        gates[o3 + D + d] = o.z;
        gates[o3 + 2 * D + d] = o.n;
        ghs[o3 + d] = h3[d];
        ghs[o3 + D + d] = h3[D + d];
        ghs[o3 + 2 * D + d] = h3[2 * D + d];
        hn[(b0 + r) * D + d] = h;
      }
    }
    // the next product's leading barrier orders H's update with its reads
  }
  __syncthreads();  // h_t complete
  for (int i = tid; i < 2 * RD; i += kCta) {
    const int r = i / (2 * D), c = i % (2 * D);
    Z[i] = c < D ? V[r * D + c] : H[r * D + c - D];
  }
  block_product<Cts<DB>::k2, false>(A1, 2 * D, 0, Z, 2 * D, 0, 1, A.w.w1, A.w.b1, 2 * D, 2 * D, Ws);
  for (int i = tid; i < 2 * RD; i += kCta) {
    const float x = A1[i];
    const float y = x > 0.f ? x : 0.f;
    A1[i] = y;
    if (i / (2 * D) < nr) A.sv.a1r[b0 * 2 * D + i] = y;
  }
  block_product<Cts<DB>::k1, false>(A2, D, 0, A1, 2 * D, 0, 1, A.w.w2, A.w.b2, D, 2 * D, Ws);
  // dropout + residual + LayerNorm: one warp per row
  const int lane = tid & 31;
  constexpr int kQ = kMaxD / 32;
  float lw[kQ], lb[kQ];  // loaded once, before the rows (the row loop's stores to out would order them)
#pragma unroll
  for (int q = 0; q < kQ; ++q) {
    const int d = lane + 32 * q;
    lw[q] = d < D ? A.w.ln_w[d] : 0.f;
    lb[q] = d < D ? A.w.ln_b[d] : 0.f;
  }
  for (int r = tid >> 5; r < nr; r += kCta / 32) {
    const int64_t row = b0 + r;
    float* x = A2 + r * D;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) {
      float a = x[d];
      if (A.p > 0.f) {
        const float u = u32_to_unit_float(random_u32(A.seed, A.stream, uint64_t(row * D + d)));
        a = u >= A.p ? a * A.keep_scale : 0.f;
      }
      a += V[r * D + d];
      x[d] = a;
      A.sv.r2[row * D + d] = a;
      s += a;
    }
    const float mu = warp_sum(s) / float(D);
    float q = 0.f;
    for (int d = lane; d < D; d += 32) {
      const float dd = x[d] - mu;
      q += dd * dd;
    }
    const float var = warp_sum(q) / float(D);
    const float rs = 1.0f / sqrtf(var + A.eps);
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int d = lane + 32 * q;
      if (d >= D) break;
      A.out[row * D + d] = (x[d] - mu) * rs * lw[q] + lb[q];
    }
    if (lane == 0) {
      A.sv.mean[row] = mu;
      A.sv.rstd[row] = rs;
    }
  }
}

struct BwdArgs {
  float* d_v;
  float* d_users;
  float* d_a2;   // work [B, D]
  float* d_a1;   // work [B, 2D]
  float* d_gi;   // work [t, B, 3D]
  float* d_gh;   // work [t, B, 3D]
  float* z;      // work [B, 2D]: [v | h_t], the input of W1 (one GEMM for dW1)
  unsigned* counter;  // work: k_colsum's ticket, zeroed here
  const float* v;
  const float* d_out;
  UserAdapterSaved<float> sv;
  UserAdapterTensors<const float*> w;
  int64_t B;
  int D, t, G, P;  // P: the last steps (t - 1 down to t - P) whose operands are prefetched
  // Where the prefetched operands go in shared memory (float offsets; kernel parameters, not
  // registers held across the products: computed in the kernel they took DB = 128 to 255 registers
  // with spills), and whether every source row is 16-byte aligned (cp.async; else plain copies).
  int off_du, off_a1r, off_v, off_ht, off_step;
  bool vec;
  unsigned long long* prof;  // the phase clock's sums (the kClock instantiation), else null
  float p, keep_scale;
  uint64_t seed, stream;
};

// G: the steps whose d users products share one pass over W_ih (4 R D floats each, and R D for
// their prefetched d users rows); P: the steps whose operands are prefetched at the start (gates,
// gh's n part, h_prev: 5 R D each); 4 R D: a1r, v and h_t, prefetched at the start too.
size_t bwd_smem_floats(int D, int G, int P) {
  return size_t(kWsFloats) + size_t(kRows) * 15 * D + size_t(G + P) * kRows * 5 * D;
}
constexpr size_t kBwdSmemBudget = 160 * 1024;  // backward: the d users products of G steps fit this

// Rows b0 .. b0 + kRows - 1 of a row-major global array (src points at row b0; row stride ld
// floats), columns c0 .. c0 + cols - 1, into dst [kRows][cols] in shared memory, rows >= nr zero:
// by cp.async in 16-byte pieces when `vec` (cols, c0 and ld multiples of 4, src 16-byte aligned),
// else element by element. The caller commits the group, waits for it and meets at a barrier before
// any thread reads dst (the pieces of a row are other threads').
__device__ __forceinline__ void prefetch_rows(float* dst, const float* src, int64_t ld, int c0, int cols, int nr,
                                              bool vec) {
  if (vec) {
    const int pieces = kRows * cols / 4;
    for (int c = threadIdx.x; c < pieces; c += kCta) {
      const int r = 4 * c / cols, x = 4 * c % cols;
      ptx::cp_async16(dst + r * cols + x, r < nr ? src + r * ld + c0 + x : src, r < nr ? 16 : 0);
    }
  } else {
    for (int i = threadIdx.x; i < kRows * cols; i += kCta) {
      const int r = i / cols, x = i % cols;
      dst[i] = r < nr ? src[r * ld + c0 + x] : 0.f;
    }
  }
}


// The backward's phase clock ("user_adapter_backward", kernels/phase_clock.cuh), per CTA of kRows
// rows: the LayerNorm backward and the mask (with the prefetches issued), the W2 product and relu',
// the W1 product and d v, the GRU steps with their d users products; the slowest CTA (128 CTAs at
// B = 1024 run in one wave: the kernel's time; the rest of the op is cuBLAS and k_colsum).
enum UserBwdSlot { kUbLn = 1, kUbW2, kUbW1, kUbSteps, kUbMaxCta };

template <int DB, bool kClock>
__global__ void __launch_bounds__(kCta) k_user_bwd(BwdArgs A) {
  extern __shared__ float sm[];
  PhaseClock<kClock> clk(A.prof);
  const int D = A.D, t = A.t, G = A.G, tid = threadIdx.x, lane = tid & 31;
  const int64_t B = A.B, b0 = int64_t(blockIdx.x) * kRows;
  const int nr = int(min(int64_t(kRows), B - b0));
  const int RD = kRows * D;
  float* Ws = sm;
  float* DR = Ws + kWsFloats;                     // [R, D]  d r2, then d v
  float* DA2 = DR + RD;                           // [R, D]
  float* DA1 = DA2 + RD;                          // [R, 2D]
  float* DZ = DA1 + 2 * RD;                       // [R, 2D]
  float* DH = DZ + 2 * RD;                        // [R, D]
  float* DGH = DH + RD;                           // [R, 3D]
  float* P = DGH + 3 * RD;                        // [R, D]
  float* DGI = P + RD;                            // [G, R, 3D]: d gi of the group's steps
  float* PA = DGI + G * 3 * RD;                   // [G, R, D]: their d gi W_ih
  // Operands read from global memory in the loops below, prefetched by cp.async (no registers held,
  // no wait per loop iteration: the loops store to global memory, so their loads could not be
  // hoisted, and batching them in registers spilled, see the header):
  const bool vec = A.vec;
  prefetch_rows(sm + A.off_a1r, A.sv.a1r + b0 * 2 * D, 2 * D, 0, 2 * D, nr, vec);
  prefetch_rows(sm + A.off_v, A.v + b0 * D, D, 0, D, nr, vec);
  prefetch_rows(sm + A.off_ht, A.sv.hs + (int64_t(t) * B + b0) * D, D, 0, D, nr, vec);
  for (int j = 0; j < A.P; ++j) {
    const int64_t s = t - 1 - j;
    float* xs = sm + A.off_step + j * 5 * RD;
    prefetch_rows(xs, A.sv.gates + (s * B + b0) * 3 * D, 3 * D, 0, 3 * D, nr, vec);
    prefetch_rows(xs + 3 * RD, A.sv.gh + (s * B + b0) * 3 * D, 3 * D, 2 * D, D, nr, vec);
    prefetch_rows(xs + 4 * RD, A.sv.hs + (s * B + b0) * D, D, 0, D, nr, vec);
  }
  ptx::cp_async_commit();
  if (blockIdx.x == 0 && tid == 0) *A.counter = 0u;  // k_colsum runs after this kernel
  // LayerNorm backward (warp per row) and the dropout mask; rows beyond B are zeros
  for (int r = tid >> 5; r < kRows; r += kCta / 32) {
    if (r >= nr) {
      for (int d = lane; d < D; d += 32) DR[r * D + d] = DA2[r * D + d] = 0.f;
      continue;
    }
    const int64_t row = b0 + r;
    const float* x = A.sv.r2 + row * D;
    const float* dy = A.d_out + row * D;
    // every load of the row first (one latency, not one per dependent step)
    constexpr int kQ = kMaxD / 32;
    float xv[kQ], dyv[kQ], lw[kQ];
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int d = lane + 32 * q;
      xv[q] = d < D ? x[d] : 0.f;
      dyv[q] = d < D ? dy[d] : 0.f;
      lw[q] = d < D ? A.w.ln_w[d] : 0.f;
    }
    const float mu = A.sv.mean[row], rs = A.sv.rstd[row];
    float a = 0.f, bs = 0.f;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      if (lane + 32 * q >= D) break;
      const float xhat = (xv[q] - mu) * rs;
      const float dn = lw[q] * dyv[q];
      a += dn;
      bs += dn * xhat;
    }
    const float dnm = warp_sum(a) / float(D), dnnm = warp_sum(bs) / float(D);
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int d = lane + 32 * q;
      if (d >= D) break;
      const float xhat = (xv[q] - mu) * rs;
      const float dx = (lw[q] * dyv[q] - dnm - xhat * dnnm) * rs;
      DR[r * D + d] = dx;
      float g = dx;
      if (A.p > 0.f) {
        const float u = u32_to_unit_float(random_u32(A.seed, A.stream, uint64_t(row * D + d)));
        g = u >= A.p ? dx * A.keep_scale : 0.f;
      }
      DA2[r * D + d] = g;
      A.d_a2[row * D + d] = g;
    }
  }
  clk.lap(kUbLn);
  // d a1r = d a2 W2 (W2 [D, 2D]); relu'. The elementwise loops from here on read what was
  // prefetched (waited for here, visible after the product's first barrier).
  ptx::cp_async_wait<0>();
  block_product<Cts<DB>::k2, true>(DA1, 2 * D, 0, DA2, D, 0, 1, A.w.w2, nullptr, 2 * D, D, Ws);
  for (int i = tid; i < 2 * RD; i += kCta) {
    const int r = i / (2 * D);
    if (r < nr) {
      const float g = DA1[i] * (sm[A.off_a1r + i] > 0.f ? 1.f : 0.f);
      DA1[i] = g;
      A.d_a1[b0 * 2 * D + i] = g;
    } else {
      DA1[i] = 0.f;
    }
  }
  clk.lap(kUbW2);
  // d z = d a1 W1 (W1 [2D, 2D]); d v = d r2 + d z[:, :D], d h = d z[:, D:]
  block_product<Cts<DB>::k2, true>(DZ, 2 * D, 0, DA1, 2 * D, 0, 1, A.w.w1, nullptr, 2 * D, 2 * D, Ws);
  for (int i = tid; i < RD; i += kCta) {
    const int r = i / D, d = i % D;
    DH[i] = DZ[r * 2 * D + D + d];
    if (r < nr) {
      A.d_v[b0 * D + i] = DR[i] + DZ[r * 2 * D + d];
      const int64_t zo = (b0 + r) * 2 * D;
      A.z[zo + d] = sm[A.off_v + i];
      A.z[zo + D + d] = sm[A.off_ht + i];
    }
  }
  clk.lap(kUbW1);
  // the steps in reverse, in groups of G: slot j of a group is step s_top - j
  int slot = 0, s_top = t - 1;
  for (int s = t - 1; s >= 0; --s) {
    // step s's operands: prefetched (rows of the CTA, [R, 3D], [R, D], [R, D]) for the last P
    // steps, else the global rows (gh's n part at column 2D of rows of 3D)
    const bool pre = s >= t - A.P;
    const float* xs = sm + A.off_step + (t - 1 - s) * 5 * RD;
    const float* gates = pre ? xs : A.sv.gates + (int64_t(s) * B + b0) * 3 * D;
    const float* ghn = pre ? xs + 3 * RD : A.sv.gh + (int64_t(s) * B + b0) * 3 * D + 2 * D;
    const int ghs = pre ? D : 3 * D;  // ghn's row stride
    const float* hp = pre ? xs + 4 * RD : A.sv.hs + (int64_t(s) * B + b0) * D;
    float* dgi = A.d_gi + int64_t(s) * B * 3 * D;
    float* dgh = A.d_gh + int64_t(s) * B * 3 * D;
    __syncthreads();  // DH written by every thread; DGI/DGH free
    for (int i = tid; i < RD; i += kCta) {
      const int r = i / D, d = i % D;
      float* gi3 = DGI + slot * 3 * RD + r * 3 * D;
      float* gh3 = DGH + r * 3 * D;
      if (r >= nr) {
        gi3[d] = gi3[D + d] = gi3[2 * D + d] = 0.f;
        gh3[d] = gh3[D + d] = gh3[2 * D + d] = 0.f;
        DH[i] = 0.f;
        continue;
      }
      const int64_t o3 = (b0 + r) * 3 * D;
      const int l3 = r * 3 * D;
      const GruGrads<float> o = gru_cell_grads(gates[l3 + d], gates[l3 + D + d], gates[l3 + 2 * D + d],
                                               ghn[r * ghs + d], hp[i], DH[i]);
      DH[i] = o.h_prev;
      gru_store_grads(gi3, gh3, D, d, o);
      gru_store_grads(dgi + o3, dgh + o3, D, d, o);
    }
    if (s > 0) {  // d h_{s} = d h_{s+1} z + d gh W_hh  (W_hh [3D, D])
      block_product<Cts<DB>::k1, true>(P, D, 0, DGH, 3 * D, 0, 1, A.w.w_hh, nullptr, D, 3 * D, Ws);
      for (int i = tid; i < RD; i += kCta) DH[i] = P[i] + DH[i];
    }
    // d users[s] += d gi W_ih  (W_ih [3D, D]) for the group's steps at once (their d users rows
    // prefetched during the product)
    if (++slot == G || s == 0) {
      for (int j = 0; j < slot; ++j)
        prefetch_rows(sm + A.off_du + j * RD, A.d_users + (int64_t(s_top - j) * B + b0) * D, D, 0, D, nr, vec);
      ptx::cp_async_commit();
      block_product<Cts<DB>::k1, true>(PA, D, RD, DGI, 3 * D, 3 * RD, slot, A.w.w_ih, nullptr, D, 3 * D, Ws);
      ptx::cp_async_wait<0>();
      __syncthreads();  // every thread's pieces of the d users rows
      for (int i = tid; i < slot * RD; i += kCta) {
        const int j = i / RD, e = i % RD;
        if (e / D < nr) {
          float* du = A.d_users + (int64_t(s_top - j) * B + b0) * D;
          du[e] = PA[i] + sm[A.off_du + i];
        }
      }
      slot = 0;
      s_top = s - 1;
    }
  }
  clk.lap(kUbSteps);
  clk.max_since_start(kUbMaxCta);
  clk.unit();
}

// ---- column sums: dst[c] += sum over rows of src[row, c] (or of LayerNorm's xhat * dy) ----------

constexpr int kSegs = 6, kChunkRows = 256;

struct ColSeg {
  float* dst;          // [cols], +=
  const float* src;    // [rows, cols]
  const float* x;      // LayerNorm segment: its input (r2), mean, rstd; else null
  const float* mean;
  const float* rstd;
  int64_t rows;
  int cols;
  int64_t part;        // offset of this segment's partials [chunks, cols]
};
struct ColSegs {
  ColSeg s[kSegs];
  int n;
};

// grid (column blocks of 32, row chunks, segments), block (32, 8). The last CTA to finish (ticket
// on `counter`, which k_user_bwd zeroed) then sums every segment's chunks in order, as a second
// launch would (one launch fewer on the stream's timeline; the same sums in the same order).
__global__ void k_colsum(ColSegs S, float* partial, unsigned* counter) {
  __shared__ float red[8][33];
  __shared__ bool last;
  const ColSeg& g = S.s[blockIdx.z];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * 32 + tx;
  const int64_t r0 = int64_t(blockIdx.y) * kChunkRows;
  const bool live = c < g.cols && r0 < g.rows;
  float acc = 0.f;
  if (live) {
    const int64_t r1 = min(g.rows, r0 + kChunkRows);
    for (int64_t r = r0 + ty; r < r1; r += 8) {
      float v = g.src[r * g.cols + c];
      if (g.x) v *= (g.x[r * g.cols + c] - g.mean[r]) * g.rstd[r];
      acc += v;
    }
  }
  red[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && live) {
    float s = 0.f;
    for (int k = 0; k < 8; ++k) s += red[k][tx];
    partial[g.part + blockIdx.y * g.cols + c] = s;
  }
  __threadfence();  // this CTA's partials visible device-wide before its ticket
  __syncthreads();
  if (tx == 0 && ty == 0) {
    const unsigned total = gridDim.x * gridDim.y * gridDim.z;
    last = atomicAdd(counter, 1u) == total - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const volatile float* vp = partial;  // written by other CTAs: read from L2, not a stale L1 line
  for (int n = 0; n < S.n; ++n) {
    const ColSeg& h = S.s[n];
    const int64_t chunks = (h.rows + kChunkRows - 1) / kChunkRows;
    for (int c2 = ty * 32 + tx; c2 < h.cols; c2 += 256) {
      float s = 0.f;
      for (int64_t k = 0; k < chunks; ++k) s += vp[h.part + k * h.cols + c2];
      h.dst[c2] += s;
    }
  }
  // an atomic, as the other CTAs' tickets: a plain store would race with them (no fence orders their
  // atomicAdd before it)
  if (tx == 0 && ty == 0) atomicExch(counter, 0u);
}

// Row-major C[M, N] (ldc) += A^T B with A [K, M] (lda), B [K, N] (ldb), all row-major: the
// column-major C^T = B^T A^T (as CudaBackend::gemm(true, false, ...)).
void gemm_tn_acc(cublasHandle_t blas, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float* C, int64_t ldc) {
  if (M == 0 || N == 0 || K == 0) return;
  ADA_CHECK(K < (int64_t(1) << 31) && M < (int64_t(1) << 31) && N < (int64_t(1) << 31),
            "cuda user adapter: GEMM sizes beyond int range");
  const float one = 1.f;
  ADA_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, int(N), int(M), int(K), &one, B, int(ldb),
                               A, int(lda), &one, C, int(ldc)));
}

// Raises kernel k's dynamic shared memory limit to `bytes` once per (kernel, device, size): the
// attribute call is host time on every launch otherwise (and with an idle stream, GPU idle time).
template <class Kern>
void set_smem(Kern k, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  int dev = 0;
  ADA_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> done;  // the largest limit set so far
  std::lock_guard<std::mutex> lock(mu);
  size_t& cur = done[{reinterpret_cast<const void*>(k), dev}];
  if (bytes <= cur) return;
  ADA_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  cur = bytes;
}

}  // namespace

// Also that the backward fits the device with one step per d users pass (at D = 128: 96.5 KB), else
// the backend composes the primitive ops, both directions.
bool user_fused_supported(const UserAdapterShape& sh) {
  return sh.D >= 1 && sh.D <= kMaxD && sh.t >= 1 && sh.B >= 0 && sh.B <= int64_t(kRows) * 0x7fffffff &&
         sizeof(float) * bwd_smem_floats(int(sh.D), 1, 0) <= smem_optin_bytes();
}

void user_fused_forward(cudaStream_t stream, float* out, const UserAdapterSaved<float>& sv,
                        const float* users, const float* v, const UserAdapterTensors<const float*>& w,
                        const UserAdapterShape& sh) {
  ADA_CHECK(user_fused_supported(sh), "cuda user adapter: unsupported shape D=" << sh.D << " t=" << sh.t);
  if (sh.B == 0) return;
  FwdArgs a;
  a.out = out;
  a.sv = sv;
  a.users = users;
  a.v = v;
  a.w = w;
  a.B = sh.B;
  a.D = int(sh.D);
  a.t = sh.t;
  a.p = sh.p;
  a.keep_scale = sh.p > 0 ? 1.0f / (1.0f - sh.p) : 1.0f;  // the CPU's T(1) / (T(1) - T(p))
  a.eps = float(sh.eps);
  a.seed = sh.seed;
  a.stream = sh.stream;
  const unsigned grid = unsigned((sh.B + kRows - 1) / kRows);
  const bool big = sh.D > 64;
  // G: the steps whose input projections share one pass over W_ih (as many as the budget allows)
  const size_t fixed = big ? fwd_smem_floats<128>(a.D, 0) : fwd_smem_floats<64>(a.D, 0);
  const size_t per = size_t(kRows) * 4 * size_t(a.D);
  const int64_t room = (int64_t(kSmemBudget / sizeof(float)) - int64_t(fixed)) / int64_t(per);
  a.G = int(std::max<int64_t>(1, std::min<int64_t>(sh.t, room)));
  const size_t bytes = sizeof(float) * (fixed + per * size_t(a.G));
  if (big) {
    set_smem(k_user_fwd<128>, bytes);
    k_user_fwd<128><<<grid, kCta, bytes, stream>>>(a);
  } else {
    set_smem(k_user_fwd<64>, bytes);
    k_user_fwd<64><<<grid, kCta, bytes, stream>>>(a);
  }
  ADA_CUDA_LAUNCHED();
}

void user_fused_backward(cudaStream_t stream, cublasHandle_t blas, float* d_v, float* d_users,
                         const UserAdapterTensors<float*>& g, float* work, const float* d_out,
                         const UserAdapterSaved<float>& sv, const float* users, const float* v,
                         const UserAdapterTensors<const float*>& w, const UserAdapterShape& sh) {
  ADA_CHECK(user_fused_supported(sh), "cuda user adapter: unsupported shape D=" << sh.D << " t=" << sh.t);
  const int64_t B = sh.B, D = sh.D, t = sh.t;
  if (B == 0) return;
  BwdArgs a;
  a.d_v = d_v;
  a.d_users = d_users;
  a.d_a2 = work;
  a.d_a1 = a.d_a2 + B * D;
  a.d_gi = a.d_a1 + B * 2 * D;
  a.d_gh = a.d_gi + t * B * 3 * D;
  a.z = a.d_gh + t * B * 3 * D;
  a.v = v;
  float* partial = a.z + B * 2 * D;
  // the column sums' ticket: the first of the 64 spare elements after the partials (<= 15 B D)
  a.counter = reinterpret_cast<unsigned*>(partial + B * D * 15);
  a.d_out = d_out;
  a.sv = sv;
  a.w = w;
  a.B = B;
  a.D = int(D);
  a.t = int(t);
  a.p = sh.p;
  a.keep_scale = sh.p > 0 ? 1.0f / (1.0f - sh.p) : 1.0f;
  a.seed = sh.seed;
  a.stream = sh.stream;
  const unsigned grid = unsigned((B + kRows - 1) / kRows);
  // G and then P as the budget allows (G >= 1: user_fused_supported checked that it fits)
  const size_t budget = std::min(kBwdSmemBudget, smem_optin_bytes());
  const int64_t per = int64_t(kRows) * 5 * D;
  const int64_t room = (int64_t(budget / sizeof(float)) - int64_t(bwd_smem_floats(a.D, 0, 0))) / per;
  a.G = int(std::max<int64_t>(1, std::min<int64_t>(t, room)));
  a.P = int(std::max<int64_t>(0, std::min<int64_t>(t, room - a.G)));
  const size_t bytes = sizeof(float) * bwd_smem_floats(a.D, a.G, a.P);
  // the prefetch buffers after the kernel's own arrays (kWsFloats + 11 R D + 4 G R D floats)
  const int RD = int(kRows * D);
  a.off_du = kWsFloats + 11 * RD + 4 * a.G * RD;  // [G, R, D]: the group's d users rows
  a.off_a1r = a.off_du + a.G * RD;                // [R, 2D]
  a.off_v = a.off_a1r + 2 * RD;                   // [R, D]
  a.off_ht = a.off_v + RD;                        // [R, D]
  a.off_step = a.off_ht + RD;                     // [P][5 R D]: step t - 1 - j's gates, gh n part, h_prev
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  a.vec = D % 4 == 0 && aligned(sv.a1r) && aligned(v) && aligned(sv.hs) && aligned(sv.gates) && aligned(sv.gh) &&
          aligned(d_users);
  a.prof = phase_sums(Clocked::kUserBackward);
  auto* kernel = D > 64 ? (a.prof ? k_user_bwd<128, true> : k_user_bwd<128, false>)
                        : (a.prof ? k_user_bwd<64, true> : k_user_bwd<64, false>);
  set_smem(kernel, bytes);
  kernel<<<grid, kCta, bytes, stream>>>(a);
  ADA_CUDA_LAUNCHED();
  // weight gradients (cuBLAS on blas's stream = stream)
  gemm_tn_acc(blas, D, 2 * D, B, a.d_a2, D, sv.a1r, 2 * D, g.w2, 2 * D);
  gemm_tn_acc(blas, 2 * D, 2 * D, B, a.d_a1, 2 * D, a.z, 2 * D, g.w1, 2 * D);
  gemm_tn_acc(blas, 3 * D, D, (t - 1) * B, a.d_gh + B * 3 * D, 3 * D, sv.hs + B * D, D, g.w_hh, D);
  gemm_tn_acc(blas, 3 * D, D, t * B, a.d_gi, 3 * D, users, D, g.w_ih, D);
  // bias and LayerNorm parameter gradients
  ColSegs S{};
  int64_t part = 0, max_chunks = 1;
  int max_cols = 1;
  auto add = [&](float* dst, const float* src, int64_t rows, int64_t cols, bool ln) {
    if (!dst) return;
    ColSeg& c = S.s[S.n++];
    c.dst = dst;
    c.src = src;
    c.x = ln ? sv.r2 : nullptr;
    c.mean = ln ? sv.mean : nullptr;
    c.rstd = ln ? sv.rstd : nullptr;
    c.rows = rows;
    c.cols = int(cols);
    c.part = part;
    const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
    part += chunks * cols;
    max_chunks = std::max(max_chunks, chunks);
    max_cols = std::max(max_cols, int(cols));
  };
  add(g.b2, a.d_a2, B, D, false);
  add(g.b1, a.d_a1, B, 2 * D, false);
  add(g.b_hh, a.d_gh, t * B, 3 * D, false);
  add(g.b_ih, a.d_gi, t * B, 3 * D, false);
  add(g.ln_b, d_out, B, D, false);
  add(g.ln_w, d_out, B, D, true);
  ADA_CHECK(part <= B * D * 15, "cuda user adapter: work too small for the column sums");
  if (S.n == 0) return;
  k_colsum<<<dim3(unsigned((max_cols + 31) / 32), unsigned(max_chunks), unsigned(S.n)), dim3(32, 8), 0,
             stream>>>(S, partial, a.counter);
  ADA_CUDA_LAUNCHED();
}

}  // namespace cuda
}  // namespace ada
