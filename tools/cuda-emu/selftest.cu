// The emulator's self-test of its pointer checks (tools/cuda-emu/README.md), run by
// `scripts/cuda-emu --selftest`: rewritten by rewrite.py like kernels/*.cu, then run once per case.
//   selftest ok          correct uses (device, managed, null and one-past-the-end pointers; the
//                        emulated mma.sync layout and cp.async): exits 0
//   selftest CASE        one deliberate mistake: the emulator must abort with the expected fault, which
//                        scripts/cuda-emu checks in the output (list: `selftest --list`, CASE<TAB>text)
//   selftest warp_ahead  prints "warp_ahead N": 0 when warps advance through warp operations in step
//                        (EMU_SCHEDULE forward, reverse, random), 1 when one runs ahead (warps)
//   selftest race_shared | race_after_barrier | race_after_syncwarp | race_blocks | race_global |
//            race_warp | race_shuffle | no_race
//                        under --racecheck: the race_* cases race (ThreadSanitizer must report them),
//                        no_race orders the same kinds of accesses, and blocks through a fence and a
//                        ticket (it must report nothing; prints "no_race 1 2 126 10")
#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/warp_mma.cuh"

__global__ void k_axpy(float* y, const float* x, int n, float a) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) y[i] += a * x[i];
}

// Two warps, no __syncthreads between the write and the read: warp 0 writes `flag` after its second
// warp operation, warp 1 reads it after its first. In step, warp 1 reads before warp 0 writes
// (0); a warp 0 that runs ahead has written it (1). On a GPU either can happen: a race.
__global__ void k_warp_ahead(int* out) {
  __shared__ int flag[1];
  if (threadIdx.x == 0) flag[0] = 0;
  __syncthreads();
  __syncwarp();
  if (threadIdx.x < 32) {
    __syncwarp();
    if (threadIdx.x == 0) flag[0] = 1;
  } else if (threadIdx.x == 32) {
    out[0] = flag[0];
  }
  __syncthreads();
}

// One warp: D = C + A B through the mma.sync helper of kernels/warp_mma.cuh, each lane loading and
// storing its fragments by the layout documented there (A 16 x 8, B 8 x 8, C and D 16 x 8, row-major).
__global__ void k_mma(const float* A, const float* B, const float* C, float* D) {
  const int g = int(threadIdx.x) / 4, t = int(threadIdx.x) % 4;
  uint32_t a[4], b[2];
  float d[4];
  for (int r = 0; r < 4; ++r) {
    std::memcpy(&a[r], &A[(g + 8 * (r % 2)) * 8 + t + 4 * (r / 2)], 4);
    d[r] = C[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2];
  }
  for (int r = 0; r < 2; ++r) std::memcpy(&b[r], &B[(t + 4 * r) * 8 + g], 4);
  ADA_MMA_TF32(d, a, b);
  for (int r = 0; r < 4; ++r) D[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2] = d[r];
}

// cp.async: thread 0 copies 16 bytes and zero-fills 16 more; what it reads before and after its
// wait, and what thread 1 reads after the barrier that follows, go to out[0], out[1..8], out[9].
__global__ void k_cp_async(const float* src, float* out) {
  extern __shared__ __align__(16) float sm[];
  if (threadIdx.x == 0) {
    ada::cuda::ptx::cp_async16(sm, src, 16);
    ada::cuda::ptx::cp_async16(sm + 4, src, 0);
    ada::cuda::ptx::cp_async_commit();
    out[0] = sm[0];
    ada::cuda::ptx::cp_async_wait<0>();
    for (int i = 0; i < 8; ++i) out[1 + i] = sm[i];
  }
  __syncthreads();
  if (threadIdx.x == 1) out[9] = sm[3];
}

// --racecheck (ThreadSanitizer): races that must be reported, and ordered accesses that must not.
// Threads 0 and 1 write one shared word between the same two barriers.
__global__ void k_race_shared(int* out) {
  __shared__ int w[1];
  if (threadIdx.x < 2) w[0] = int(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = w[0];
}
// Thread 33 (warp 1) reads the global word thread 0 (warp 0) writes, with no barrier between.
__global__ void k_race_global(int* data) {
  if (threadIdx.x == 0) data[0] = 1;
  if (threadIdx.x == 33) data[1] = data[0];
}
// Thread 0 writes a shared word and thread 1 reads it between two later barriers (Warp: two
// __syncwarp): a thread that runs on to the second barrier first must not order its accesses before
// the others' through it.
template <bool Warp>
__device__ void write_read_between_syncs(int* out) {
  __shared__ int w[1];
  if (threadIdx.x == 0) w[0] = 0;
  if (Warp) __syncwarp(); else __syncthreads();
  if (threadIdx.x == 0) w[0] = 1;
  if (threadIdx.x == 1) out[0] = w[0];
  if (Warp) __syncwarp(); else __syncthreads();
}
__global__ void k_race_after_barrier(int* out) { write_read_between_syncs<false>(out); }
__global__ void k_race_after_syncwarp(int* out) { write_read_between_syncs<true>(out); }
// Two blocks write one global word (on a GPU they may run at once, in either order): of a 2 x 2
// grid, blocks (0, 0) and (0, 1), two apart in launch order.
__global__ void k_race_blocks(int* data) {
  if (threadIdx.x == 0 && blockIdx.x == 0) data[0] = int(blockIdx.y);
}
// Lane 1 reads the shared word lane 0 wrote, with only a shuffle between: a shuffle orders no memory.
__global__ void k_race_shuffle(int* out) {
  __shared__ int w[1];
  if (threadIdx.x == 0) w[0] = 7;
  const int v = __shfl_sync(0xffffffffu, int(threadIdx.x), 0);
  if (threadIdx.x == 1) out[0] = w[0] + v;
}
// The same kinds of accesses, ordered: a barrier, a __syncwarp within a warp, atomics from every
// thread, each thread's own word (and a shuffle among them); two blocks, so the second reuses the
// first's shared memory.
__global__ void k_no_race(int* data) {
  __shared__ int w[2], own[64];
  __shared__ unsigned count;
  if (threadIdx.x == 0) {
    w[0] = 1;
    count = 0;
  }
  __syncthreads();
  atomicAdd(&count, 1u);
  int* out = data + blockIdx.x * 4;
  if (threadIdx.x == 1) out[0] = w[0];  // written before the barrier
  __syncthreads();
  if (threadIdx.x == 32) w[1] = 2;
  __syncwarp();
  if (threadIdx.x == 33) out[1] = w[1];  // the same warp, after a __syncwarp
  const int mine = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
  own[threadIdx.x] = mine;  // each thread its own word
  __syncthreads();
  if (threadIdx.x == 2) out[2] = int(count) + own[63];  // 64 + 62
}

// Blocks ordered through memory: each writes its partial, fences and takes a ticket; the last
// block sums the partials (data[0..3]; ticket data[4], sum data[5]) and resets the ticket by an atomic.
__global__ void k_last_block(int* data) {
  __shared__ bool last;
  if (threadIdx.x == 0) data[blockIdx.x] = int(blockIdx.x) + 1;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&data[4], 1) == int(gridDim.x) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) sum += data[b];
    data[5] = sum;
    atomicExch(&data[4], 0);
  }
}

namespace {

constexpr int kN = 64;

struct Case {
  const char* name;
  const char* expect;  // a substring of the fault
};
const Case kCases[] = {
    {"host_arg", "argument #2 is a host pointer"},
    {"stack_arg", "argument #1 is a host pointer"},
    {"freed_arg", "argument #2 points into freed memory"},
    {"memcpy_h2d_host_dst", "cudaMemcpy(HostToDevice): the destination is a host pointer"},
    {"memcpy_h2d_device_src", "cudaMemcpy(HostToDevice): the source is device memory"},
    {"memcpy_swapped", "cudaMemcpy(DeviceToHost): the source is a host pointer"},
    {"memcpy_d2d_host_src", "cudaMemcpy(DeviceToDevice): the source is a host pointer"},
    {"memcpy_overrun", "runs past the end of its device allocation"},
    {"memcpy_freed", "cudaMemcpy(DeviceToHost): the source points into freed device memory"},
    {"memset_host", "cudaMemset: the destination is a host pointer"},
    {"double_free", "double free"},
    {"free_interior", "not the start of a live device allocation"},
    {"sgemm_host_a", "cublasSgemm: A is a host pointer"},
    {"sgemm_freed_c", "cublasSgemm: C points into freed device memory"},
    {"sgemm_device_alpha", "cublasSgemm: alpha is device memory"},
};

#define CHECK(x)                                                         \
  do {                                                                   \
    if (!(x)) {                                                          \
      std::fprintf(stderr, "selftest: check failed at line %d: %s\n", __LINE__, #x); \
      return 1;                                                          \
    }                                                                    \
  } while (0)

float* dev(int n = kN) {
  float* p = nullptr;
  cudaMalloc(&p, sizeof(float) * size_t(n));
  return p;
}

int ok_case() {
  std::vector<float> hx(kN), hy(kN, 1.0f), out(kN);
  for (int i = 0; i < kN; ++i) hx[size_t(i)] = float(i);
  float *x = dev(), *y = dev();
  CHECK(cudaMemcpy(x, hx.data(), sizeof(float) * kN, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpyAsync(y, hy.data(), sizeof(float) * kN, cudaMemcpyHostToDevice, nullptr) == cudaSuccess);
  k_axpy<<<2, 32>>>(y, x, kN, 2.0f);
  k_axpy<<<1, 32>>>(y + kN, x + kN, 0, 1.0f);  // one past the end, nothing accessed: allowed
  k_axpy<<<1, 32>>>(y, nullptr, 0, 1.0f);      // null: allowed
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaMemcpy(out.data(), y, sizeof(float) * kN, cudaMemcpyDeviceToHost) == cudaSuccess);
  for (int i = 0; i < kN; ++i) CHECK(out[size_t(i)] == 1.0f + 2.0f * float(i));
  CHECK(cudaMemcpy(x, y, sizeof(float) * kN, cudaMemcpyDeviceToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(x, hx.data(), 0, cudaMemcpyHostToDevice) == cudaSuccess);  // empty copy
  // Managed memory: written by the host, read by a kernel, a valid H2D source.
  float* m = nullptr;
  CHECK(cudaMallocManaged(&m, sizeof(float) * kN) == cudaSuccess);
  for (int i = 0; i < kN; ++i) m[i] = 1.0f;
  k_axpy<<<2, 32>>>(m, x, kN, 1.0f);
  CHECK(m[3] == 1.0f + 7.0f);
  CHECK(cudaMemcpy(y, m, sizeof(float) * kN, cudaMemcpyHostToDevice) == cudaSuccess);
  // cuBLAS: device A, B, C, host alpha and beta.
  cublasHandle_t h;
  CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  const float one = 1.0f, zero = 0.0f;
  float* c = dev(16);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 16, &one, x, 4, y, 16, &zero, c, 4) == CUBLAS_STATUS_SUCCESS);
  cublasDestroy(h);
  // Freed memory is poisoned (0xff bytes) and stays reserved in the quarantine.
  CHECK(cudaFree(x) == cudaSuccess);
#if !defined(__SANITIZE_ADDRESS__)  // under AddressSanitizer it is also poisoned for reads
  unsigned char b[4];
  std::memcpy(b, x, 4);
  CHECK(b[0] == 0xff && b[3] == 0xff);
#endif
  CHECK(cudaFree(y) == cudaSuccess && cudaFree(m) == cudaSuccess && cudaFree(c) == cudaSuccess);
  CHECK(cudaFree(nullptr) == cudaSuccess);
  // mma.sync: the fragment layout against a plain product (small integers: every sum exact), and
  // the operands read as TF32 by truncation (1 + 2^-11 is read as 1).
  {
    std::vector<float> hA(128), hB(64), hC(128), hD(128);
    for (int i = 0; i < 128; ++i) hA[size_t(i)] = float(i % 7 - 3);
    for (int i = 0; i < 64; ++i) hB[size_t(i)] = float(i % 5 - 2);
    for (int i = 0; i < 128; ++i) hC[size_t(i)] = float(i) * 0.5f;
    hA[0] = 1.0f + std::ldexp(1.0f, -11);
    float *dA = dev(128), *dB = dev(64), *dC = dev(128), *dD = dev(128);
    CHECK(cudaMemcpy(dA, hA.data(), 512, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(dB, hB.data(), 256, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(dC, hC.data(), 512, cudaMemcpyHostToDevice) == cudaSuccess);
    k_mma<<<1, 32>>>(dA, dB, dC, dD);
    CHECK(cudaMemcpy(hD.data(), dD, 512, cudaMemcpyDeviceToHost) == cudaSuccess);
    hA[0] = 1.0f;
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j) {
        float want = hC[size_t(i * 8 + j)];
        for (int k = 0; k < 8; ++k) want += hA[size_t(i * 8 + k)] * hB[size_t(k * 8 + j)];
        CHECK(hD[size_t(i * 8 + j)] == want);
      }
    CHECK(cudaFree(dA) == cudaSuccess && cudaFree(dB) == cudaSuccess && cudaFree(dC) == cudaSuccess &&
          cudaFree(dD) == cudaSuccess);
  }
  // cp.async: nothing lands before the wait (the fresh block's 0xff bytes read as NaN), then 16
  // bytes copied and 16 zero-filled, seen by another thread after a barrier.
  {
    const float hs[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    float ho[10];
    float *ds = dev(4), *dout = dev(10);
    CHECK(cudaMemcpy(ds, hs, 16, cudaMemcpyHostToDevice) == cudaSuccess);
    k_cp_async<<<1, 32, 64>>>(ds, dout);
    CHECK(cudaMemcpy(ho, dout, 40, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(std::isnan(ho[0]));
    for (int i = 0; i < 4; ++i) CHECK(ho[1 + i] == hs[i] && ho[5 + i] == 0.0f);
    CHECK(ho[9] == 4.0f);
    CHECK(cudaFree(ds) == cudaSuccess && cudaFree(dout) == cudaSuccess);
  }
  std::printf("selftest ok: correct uses pass\n");
  return 0;
}

// Each returns only if the emulator failed to catch the mistake.
void bad_case(const std::string& c) {
  std::vector<float> h(kN, 1.0f);
  float* x = dev();
  float* y = dev();
  cublasHandle_t bh;
  cublasCreate(&bh);
  const float one = 1.0f;
  if (c == "host_arg") k_axpy<<<1, 32>>>(y, h.data(), kN, 1.0f);
  if (c == "stack_arg") {
    float local[kN] = {};
    k_axpy<<<1, 32>>>(local, x, kN, 1.0f);
  }
  if (c == "freed_arg") {
    cudaFree(x);
    k_axpy<<<1, 32>>>(y, x + 3, kN - 3, 1.0f);
  }
  if (c == "memcpy_h2d_host_dst") cudaMemcpy(h.data(), h.data() + 1, 4, cudaMemcpyHostToDevice);
  if (c == "memcpy_h2d_device_src") cudaMemcpy(x, y, 4, cudaMemcpyHostToDevice);
  if (c == "memcpy_swapped") cudaMemcpy(x, h.data(), sizeof(float) * kN, cudaMemcpyDeviceToHost);
  if (c == "memcpy_d2d_host_src") cudaMemcpyAsync(x, h.data(), 4, cudaMemcpyDeviceToDevice, nullptr);
  if (c == "memcpy_overrun") cudaMemcpy(x, h.data(), sizeof(float) * (kN + 1), cudaMemcpyHostToDevice);
  if (c == "memcpy_freed") {
    cudaFree(y);
    cudaMemcpy(h.data(), y, 4, cudaMemcpyDeviceToHost);
  }
  if (c == "memset_host") cudaMemset(h.data(), 0, 4);
  if (c == "double_free") {
    cudaFree(x);
    cudaFree(x);
  }
  if (c == "free_interior") cudaFree(x + 1);
  if (c == "sgemm_host_a") cublasSgemm(bh, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, h.data(), 4, x, 4, &one, y, 4);
  if (c == "sgemm_freed_c") {
    cudaFree(y);
    cublasSgemm(bh, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, x, 4, x, 4, &one, y, 4);
  }
  if (c == "sgemm_device_alpha") {
    cudaMemcpy(y, h.data(), 4, cudaMemcpyHostToDevice);
    cublasSgemm(bh, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, y, x, 4, x, 4, &one, x + 16, 4);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string c = argc > 1 ? argv[1] : "";
  if (c == "ok") return ok_case();
  if (c == "warp_ahead") {
    int* d = nullptr;
    int h = -1;
    cudaMalloc(&d, sizeof(int));
    k_warp_ahead<<<1, 64>>>(d);
    cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(d);
    std::printf("warp_ahead %d\n", h);
    return 0;
  }
  if (c == "race_shared" || c == "race_after_barrier" || c == "race_after_syncwarp" || c == "race_blocks" ||
      c == "race_global" || c == "race_warp" || c == "race_shuffle" || c == "no_race") {  // for --racecheck
    int* d = nullptr;
    std::vector<int> h(16, -1);
    cudaMalloc(&d, 16 * sizeof(int));
    cudaMemset(d, 0, 16 * sizeof(int));
    if (c == "race_shared") k_race_shared<<<1, 64>>>(d);
    if (c == "race_after_barrier") k_race_after_barrier<<<1, 64>>>(d);
    if (c == "race_after_syncwarp") k_race_after_syncwarp<<<1, 32>>>(d);
    if (c == "race_blocks") k_race_blocks<<<dim3(2, 2), 32>>>(d);
    if (c == "race_global") k_race_global<<<1, 64>>>(d);
    if (c == "race_warp") k_warp_ahead<<<1, 64>>>(d);
    if (c == "race_shuffle") k_race_shuffle<<<1, 32>>>(d);
    if (c == "no_race") {
      k_no_race<<<2, 64>>>(d);
      k_last_block<<<4, 32>>>(d + 8);
    }
    cudaMemcpy(h.data(), d, 16 * sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(d);
    std::printf("%s %d %d %d %d\n", c.c_str(), h[0], h[1], h[2], h[13]);
    return 0;
  }
  if (c == "--list") {
    for (const Case& k : kCases) std::printf("%s\t%s\n", k.name, k.expect);
    return 0;
  }
  bool known = false;
  for (const Case& k : kCases) known = known || c == k.name;
  if (!known) {
    std::fprintf(stderr, "selftest: unknown case '%s' (ok, --list, or a case of the list)\n", c.c_str());
    return 2;
  }
  bad_case(c);
  std::printf("selftest: case %s ran to the end: the emulator did NOT catch the mistake\n", c.c_str());
  return 1;
}
