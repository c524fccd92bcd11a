// cuBLAS for the host emulator: a reference SGEMM (column-major, double accumulation) in place of
// cuBLAS. It checks that the backend calls GEMM with the right shapes, transposes and leading
// dimensions; it says nothing about cuBLAS itself (its kernels, TF32 modes, rounding).
#pragma once
#include "cuda_runtime.h"

typedef int cublasStatus_t;
typedef struct cublasContext* cublasHandle_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
enum cublasPointerMode_t { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 };

inline const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE (emulator)";
}
inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  static int dummy;
  *h = reinterpret_cast<cublasHandle_t>(&dummy);
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetPointerMode(cublasHandle_t, cublasPointerMode_t m) {
  return m == CUBLAS_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
// C = alpha op(A) op(B) + beta C, column-major, with cuBLAS's argument checks.
inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const float* alpha, const float* A, int lda, const float* B, int ldb,
                                  const float* beta, float* C, int ldc) {
  const int rows_a = ta == CUBLAS_OP_N ? m : k, rows_b = tb == CUBLAS_OP_N ? k : n;
  if (m < 0 || n < 0 || k < 0 || lda < (rows_a > 1 ? rows_a : 1) || ldb < (rows_b > 1 ? rows_b : 1) ||
      ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  // The pointers a GPU would dereference: alpha and beta on the host (CUBLAS_POINTER_MODE_HOST, the
  // only mode emulated), A, B and C in device memory over the whole extent the call reads or writes
  // (a host pointer or one into freed device memory is an illegal address on a GPU).
  emu::check_host_pointer("cublasSgemm", "alpha", alpha);
  emu::check_host_pointer("cublasSgemm", "beta", beta);
  if (m > 0 && n > 0) {
    auto extent = [](int rows, int cols, int ld) { return (size_t(ld) * size_t(cols - 1) + size_t(rows)) * sizeof(float); };
    if (k > 0) {
      emu::check_device_range("cublasSgemm", "A", A, extent(rows_a, ta == CUBLAS_OP_N ? k : m, lda));
      emu::check_device_range("cublasSgemm", "B", B, extent(rows_b, tb == CUBLAS_OP_N ? n : k, ldb));
    }
    emu::check_device_range("cublasSgemm", "C", C, extent(m, n, ldc));
  }
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double s = 0;
      for (int p = 0; p < k; ++p) {
        const float a = ta == CUBLAS_OP_N ? A[i + size_t(p) * lda] : A[p + size_t(i) * lda];
        const float b = tb == CUBLAS_OP_N ? B[p + size_t(j) * ldb] : B[j + size_t(p) * ldb];
        s += double(a) * b;
      }
      float& c = C[i + size_t(j) * ldc];
      c = float(*alpha * s + (*beta == 0 ? 0.0 : double(*beta) * c));
    }
  return CUBLAS_STATUS_SUCCESS;
}
