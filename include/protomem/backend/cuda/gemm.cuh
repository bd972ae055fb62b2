// Row-major matrix products through cuBLAS (which is column-major): a row-major matrix is the
// column-major view of its transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T by
// swapping the operands. Accumulation and the output are always fp32.
#pragma once

#include <climits>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <protomem/backend/cuda/check.cuh>
#include <protomem/backend/cuda/resources.cuh>
#include <protomem/error.hpp>
#include <protomem/view.hpp>

namespace protomem::detail {

/// A row-major operand: `data` of `type` with leading dimension `ld` (row stride), used as it is
/// stored or `transposed`.
struct GemmOperand {
  const void* data;
  cudaDataType_t type;
  index_t ld;
  bool transposed;
};

inline GemmOperand operand(const void* data, cudaDataType_t type, index_t ld, bool transposed) {
  GemmOperand result;
  result.data = data;
  result.type = type;
  result.ld = ld;
  result.transposed = transposed;
  return result;
}

inline int gemm_dim(index_t value, const char* what) {
  if (value < 0 || value > INT_MAX) {
    fail("a matrix dimension of the CUDA step (", what, " = ", value,
         ") exceeds cuBLAS's int range");
  }
  return static_cast<int>(value);
}

/// C (m x n, row-major, leading dimension ldc, fp32) = alpha * op(A) (m x k) * op(B) (k x n) + beta
/// * C.
inline void gemm_row_major(cublasHandle_t handle, index_t m, index_t n, index_t k, float alpha,
                           GemmOperand a, GemmOperand b, float beta, float* c, index_t ldc,
                           cublasComputeType_t compute, const char* what) {
  if (m == 0 || n == 0) return;
  cublas_check(cublasGemmEx(handle, b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
                            a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N, gemm_dim(n, what),
                            gemm_dim(m, what), gemm_dim(k, what), &alpha, b.data, b.type,
                            gemm_dim(b.ld, what), a.data, a.type, gemm_dim(a.ld, what), &beta, c,
                            CUDA_R_32F, gemm_dim(ldc, what), compute, CUBLAS_GEMM_DEFAULT),
               what);
}

/// cuBLAS's input type and compute type of the memory-sized products in `precision`.
inline cudaDataType_t gemm_input_type(GemmPrecision precision) {
  switch (precision) {
    case GemmPrecision::bf16: return CUDA_R_16BF;
    case GemmPrecision::fp16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}
inline cublasComputeType_t gemm_compute_type(GemmPrecision precision) {
  return precision == GemmPrecision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}
inline bool is_16bit(GemmPrecision precision) {
  return precision == GemmPrecision::bf16 || precision == GemmPrecision::fp16;
}

}  // namespace protomem::detail
