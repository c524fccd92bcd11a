// Warp-level TF32 tensor-core products (mma.sync m16n8k8) and asynchronous global -> shared copies
// (cp.async), sm_80 and later: inline PTX on a GPU, the emulator's versions under tools/cuda-emu
// (which defines ADA_CUDA_EMU and models both: the mma's fragment layout and TF32 reading, and
// copies that land only at the wait that covers them).
#pragma once

#include <cstdint>

namespace ada {
namespace cuda {
namespace ptx {

// D (16 x 8, FP32) += A (16 x 8) B (8 x 8) on tensor cores, warp-collective (all 32 lanes, converged).
// With g = lane / 4, t = lane % 4: a[r] = A[g + 8 (r % 2)][t + 4 (r / 2)], b[r] = B[t + 4 r][g],
// d[r] = D[g + 8 (r / 2)][2 t + r % 2]. Operands are FP32 bit patterns read as TF32 (10 stored
// mantissa bits): round them first (cvt.rna, to_tf32) where the error matters; otherwise the
// hardware's reading of the low 13 bits is off by less than 2^-10 of the value either way.
#ifdef ADA_CUDA_EMU
#define ADA_MMA_TF32(d, a, b) ::emu::mma_m16n8k8_tf32(d, a, b, __FILE__, __LINE__)
#else
#define ADA_MMA_TF32(d, a, b) ::ada::cuda::ptx::mma_tf32(d, a, b)
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// 16 bytes from global memory to shared memory, asynchronously; only the first src_bytes (0 or 16)
// are read, the rest of the 16 are zero-filled. Both addresses 16-byte aligned; dst in the block's
// dynamic shared memory. Visible to the issuing thread after the cp_async_wait that covers its
// group, to the others after a barrier that follows it.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
#ifdef ADA_CUDA_EMU
  ::emu::cp_async(dst, src, 16, size_t(src_bytes));
#else
  const unsigned s = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
#endif
}

// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef ADA_CUDA_EMU
  ::emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `Pending` of the committed groups (the newest) are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
#ifdef ADA_CUDA_EMU
  ::emu::cp_async_wait(Pending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#endif
}

}  // namespace ptx
}  // namespace cuda
}  // namespace ada
