// Host emulation of CUDA device code (tools/cuda-emu/README.md). Force-included (-include) into the
// sources that tools/cuda-emu/rewrite.py generated from kernels/*.cu: the CUDA keywords become plain
// C++, threadIdx/blockIdx/... read the emulator's current fiber, and every block's threads run as
// fibers on one OS thread so that __syncthreads, warp shuffles and shared-memory atomics behave as
// on a GPU (threads really interleave at barriers; between barriers a thread runs alone).
#pragma once
#define ADA_CUDA_EMU 1  // kernels/warp_mma.cuh picks the emulator's cp.async and mma.sync below
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
// Static __shared__ declarations are rewritten by rewrite.py (one copy per block set); none should
// be left. Their contents are not reset between blocks: like a GPU's, undefined at block start.
#define __shared__ static
#define __constant__ static
#define __align__(n) alignas(n)
// rewrite.py replaces __launch_bounds__(N) on a kernel by a check at the kernel's entry; any left
// over (non-kernel use) is dropped.
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

typedef struct CUstream_st* cudaStream_t;

// Vector types with CUDA's sizes and alignments (a misaligned float4 load through a cast pointer is
// a fault on a GPU; under --sanitize UBSan's alignment check reports it).
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace emu {
namespace detail {
extern const uint3* cur_tid;  // the running fiber's threadIdx
extern uint3 cur_bidx, cur_bdim, cur_gdim;
}  // namespace detail
inline const uint3& tidx() { return *detail::cur_tid; }
inline const uint3& bidx() { return detail::cur_bidx; }
inline const uint3& bdim() { return detail::cur_bdim; }
inline const uint3& gdim() { return detail::cur_gdim; }
void* dyn_smem();
// Static __shared__ declarations have one copy per block set (rewrite.py): --racecheck runs
// neighbouring blocks as concurrent sets of threads (emu_runtime.cpp), which must not share them.
constexpr int kBlockSets = 2;
int block_set();  // the running block's set
// __threadfence under --racecheck: orders what each thread did before its fence before what any
// thread does after a later one (in the emulator's order), the ordering a fence gives together
// with an atomic that a later block reads (the "last block" pattern); otherwise nothing.
void threadfence();
void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
// The lanes of the warp meet (checked like __syncwarp) without ordering their memory accesses: the
// convergence of a warp-collective operation (wmma), which, unlike __syncwarp, is no memory barrier.
void warp_converge(const char* file, int line);
// yields until the warp arrived; like a shuffle (or mma.sync) on a GPU, orders no memory accesses
void warp_put(const void* v, size_t n, unsigned mask, const char* file, int line);
void warp_get(void* v, size_t n, int lane);    // the partner lane's deposit
void check_launch_bounds(long max_threads, const char* kernel, const char* file, int line);
// cp.async (global -> the block's dynamic shared memory, 4, 8 or 16 bytes, the last n - src_n
// zero-filled): the copy is only recorded; it lands at the cp_async_wait that covers its group, or
// when the thread exits. A thread that reads the destination before that sees the old bytes (0xff
// on a fresh block), as a GPU may show it.
void cp_async(void* dst, const void* src, size_t n, size_t src_n);
void cp_async_commit();                // closes the group of the copies issued since the last commit
void cp_async_wait(int pending);       // lands every committed group but the newest `pending`

struct LaunchSite {
  const char* kernel;
  const char* file;
  int line;
};
// A pointer-typed kernel argument (after conversion to the kernel's parameter type) and its
// position (0-based) in the argument list.
struct PtrArg {
  int index;
  const void* p;
};
// Runs body for every thread of every block; returns a cudaError_t value (0: ran). A rejected
// launch (bad configuration, too much shared memory) does not run and sets the last error. A launch
// that passes the configuration checks then checks its pointer arguments (ptrs[0..n_ptrs)): each must
// be null or point into a live device allocation (one past its end included), else the run aborts
// (a host pointer or a pointer into freed device memory is an illegal memory access on a GPU).
int launch(const LaunchSite& site, const void* func, dim3 g, dim3 b, size_t smem, cudaStream_t s,
           const std::function<void()>& body, const PtrArg* ptrs = nullptr, int n_ptrs = 0);

template <class T>
constexpr bool is_data_pointer_v = std::is_pointer_v<T> && !std::is_function_v<std::remove_pointer_t<T>>;
template <class Tuple, size_t... I>
int collect_pointer_args(const Tuple& t, PtrArg* out, std::index_sequence<I...>) {
  int n = 0;
  auto note = [&](int i, const auto& v) {
    if constexpr (is_data_pointer_v<std::decay_t<decltype(v)>>) out[n++] = PtrArg{i, (const void*)(v)};
  };
  (note(int(I), std::get<I>(t)), ...);
  return n;
}

// What rewrite.py puts in place of kernel<<<g, b, smem, stream>>>(args...): the arguments are
// converted to the kernel's parameter types at launch (by value, as CUDA copies them).
struct Launcher {
  LaunchSite site;
  dim3 g, b;
  size_t smem;
  cudaStream_t stream;
  Launcher(const char* kernel, const char* file, int line, dim3 g_, dim3 b_, size_t s = 0, cudaStream_t st = nullptr)
      : site{kernel, file, line}, g(g_), b(b_), smem(s), stream(st) {}
  template <class... P, class... A>
  void run(void (*f)(P...), A&&... a) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launch: wrong number of arguments");
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    PtrArg ptrs[sizeof...(P) + 1];
    const int n_ptrs = collect_pointer_args(args, ptrs, std::index_sequence_for<P...>{});
    launch(site, reinterpret_cast<const void*>(f), g, b, smem, stream, [f, &args]() { std::apply(f, args); }, ptrs,
           n_ptrs);
  }
};

// Device math the sources use that the host library lacks under the same name.
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) > C(b) ? C(a) : C(b);
}
}  // namespace emu
using emu::max;
using emu::min;

#define threadIdx (::emu::tidx())
#define blockIdx (::emu::bidx())
#define blockDim (::emu::bdim())
#define gridDim (::emu::gdim())
constexpr int warpSize = 32;

// Barriers carry their source line: threads of a block waiting at different __syncthreads()
// statements (divergent barrier) are reported and abort the run.
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(::emu::detail_mask(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, o, ...) ::emu::shfl_xor(mask, v, o, __FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...) ::emu::shfl_idx(mask, v, src, __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) ::emu::shfl_down(mask, v, d, __FILE__, __LINE__)

namespace emu {
inline unsigned detail_mask(unsigned m = 0xffffffffu) { return m; }
inline unsigned lane_id() { return unsigned((tidx().x + bdim().x * (tidx().y + bdim().y * tidx().z)) % 32u); }
template <class T>
T shfl_xor(unsigned mask, T v, int o, const char* file, int line) {
  static_assert(sizeof(T) <= 16, "shuffle of a type over 16 bytes");
  warp_put(&v, sizeof(T), mask, file, line);
  T r;
  warp_get(&r, sizeof(T), int(lane_id() ^ unsigned(o)));
  return r;
}
template <class T>
T shfl_idx(unsigned mask, T v, int src, const char* file, int line) {
  warp_put(&v, sizeof(T), mask, file, line);
  T r;
  warp_get(&r, sizeof(T), src & 31);
  return r;
}
template <class T>
T shfl_down(unsigned mask, T v, unsigned d, const char* file, int line) {
  warp_put(&v, sizeof(T), mask, file, line);
  const unsigned l = lane_id() + d;
  if (l >= 32) return v;
  T r;
  warp_get(&r, sizeof(T), int(l));
  return r;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, warp-collective. PTX's fragment layout, with
// g = lane / 4 and t = lane % 4: a[r] = A[g + 8 (r % 2)][t + 4 (r / 2)] (A 16 x 8), b[r] = B[t + 4 r][g]
// (B 8 x 8), d[r] = D[g + 8 (r / 2)][2 t + r % 2] (D 16 x 8, accumulated in place). The operands are
// FP32 bit patterns; the tensor core reads TF32 from them, here by clearing the low 13 mantissa bits
// (truncation: of the readings a GPU may make, rounding or truncating, the one further off, so
// error bounds must allow for it). The products of TF32 values are exact in FP32 and are added to
// d in k order, rounding each sum (the hardware's order and rounding differ within that error).
inline float tf32_truncate(uint32_t u) {
  if ((u & 0x7f800000u) != 0x7f800000u) u &= 0xffffe000u;  // inf and NaN stay as they are
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
                             int line) {
  float A[16][8], Bm[8][8];
  warp_put(a, sizeof a, 0xffffffffu, file, line);
  for (int l = 0; l < 32; ++l) {
    uint32_t v[4];
    warp_get(v, sizeof v, l);
    for (int r = 0; r < 4; ++r) A[l / 4 + 8 * (r % 2)][l % 4 + 4 * (r / 2)] = tf32_truncate(v[r]);
  }
  warp_put(b, sizeof b, 0xffffffffu, file, line);
  for (int l = 0; l < 32; ++l) {
    uint32_t v[2];
    warp_get(v, sizeof v, l);
    for (int r = 0; r < 2; ++r) Bm[l % 4 + 4 * r][l / 4] = tf32_truncate(v[r]);
  }
  const int g = int(lane_id()) / 4, t = int(lane_id()) % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float acc = d[r];
    for (int k = 0; k < 8; ++k) acc += A[row][k] * Bm[k][col];
    d[r] = acc;
  }
}
}  // namespace emu

// Atomics: a fiber is never preempted between barriers, so any read-modify-write would be atomic;
// they are __atomic operations (relaxed, as CUDA's) so that ThreadSanitizer (scripts/cuda-emu
// --racecheck) sees atomics, which never race with each other, and not plain accesses.
namespace emu {
template <class T, class F>
inline T atomic_rmw(T* p, F f) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T next = f(old);
  while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) next = f(old);
  return old;
}
}  // namespace emu
inline float atomicAdd(float* p, float v) { return emu::atomic_rmw(p, [v](float o) { return o + v; }); }
inline double atomicAdd(double* p, double v) { return emu::atomic_rmw(p, [v](double o) { return o + v; }); }
inline int atomicAdd(int* p, int v) {
  return emu::atomic_rmw(p, [v](int o) { return int(unsigned(o) + unsigned(v)); });
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline int atomicMax(int* p, int v) { return emu::atomic_rmw(p, [v](int o) { return v > o ? v : o; }); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  return emu::atomic_rmw(p, [v](unsigned long long o) { return v > o ? v : o; });
}
inline int atomicMin(int* p, int v) { return emu::atomic_rmw(p, [v](int o) { return v < o ? v : o; }); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline int atomicCAS(int* p, int cmp, int v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;  // the old value (written back on failure, equal to cmp on success)
}
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}

// The SM's cycle counter: here the host's steady clock in nanoseconds (monotone, so phase clocks
// give non-negative durations; their values mean nothing on the host).
inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, sizeof u); return u; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, sizeof x); return x; }
inline int __float_as_int(float x) { int u; std::memcpy(&u, &x, sizeof u); return u; }
inline float __int_as_float(int u) { float x; std::memcpy(&x, &u, sizeof x); return x; }
inline void __threadfence() { ::emu::threadfence(); }
inline void __threadfence_block() {}
