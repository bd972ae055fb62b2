// Error checks for the CUDA backend: every CUDA runtime and cuBLAS status becomes a protomem::Error
// that names the call, so a failure reads like every other error of the library.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <protomem/error.hpp>

namespace protomem::detail {

inline void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    fail("CUDA error in ", what, ": ", cudaGetErrorName(status), " (", cudaGetErrorString(status),
         ")");
  }
}

inline void cublas_check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail("cuBLAS error in ", what, ": ", cublasGetStatusName(status), " (",
         cublasGetStatusString(status), ")");
  }
}

/// Checks that the last kernel launch was accepted (launch errors surface here, faults at the next
/// synchronisation).
inline void cuda_check_launch(const char* kernel) { cuda_check(cudaGetLastError(), kernel); }

}  // namespace protomem::detail
