// What a CUDA PrototypeMemory borrows from its caller, FAISS-style: the stream its work runs on,
// a cuBLAS handle, a workspace, and how its two large GEMMs compute. Nothing here is owned by the
// memory; a null handle or workspace asks the memory to make (and own) its own.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace protomem {

/// Inputs and arithmetic of the two memory-sized products (logits B x D x M and the weighted sum of
/// prototypes B x M x D). Accumulation is fp32 in every mode; the small batch-sized products are
/// always fp32.
enum class GemmPrecision {
  fp32,  ///< fp32 inputs, fp32 arithmetic (no tensor cores); the CPU backend's numbers (default)
  tf32,  ///< fp32 inputs rounded to TF32 on tensor cores
  bf16,  ///< bf16 inputs (a bf16 copy of the memory, M x D x 2 bytes more), fp32 accumulation
  fp16,  ///< fp16 inputs (an fp16 copy of the memory), fp32 accumulation
};

inline const char* to_string(GemmPrecision precision) {
  switch (precision) {
    case GemmPrecision::fp32: return "fp32";
    case GemmPrecision::tf32: return "tf32";
    case GemmPrecision::bf16: return "bf16";
    case GemmPrecision::fp16: return "fp16";
  }
  return "?";
}

/// Resources of protomem::PrototypeMemory<float, protomem::cuda, ...>.
///
/// Requires: `stream` and `cublas` (when given) stay valid while the memory uses them; `workspace`
/// (when given) is device memory of `workspace_bytes` bytes on the memory's device, not used by
/// anything else until the step that uses it has finished on `stream`.
/// Guarantees: every kernel, copy and GEMM of a step is issued on `stream`; the cuBLAS handle's
/// stream, pointer mode and math mode are restored after each use.
struct CudaResources {
  /// Caller-owned stream for all of the memory's work; nullptr is the legacy default stream.
  cudaStream_t stream = nullptr;
  /// Caller-owned cuBLAS handle; nullptr: the memory creates one and owns it.
  cublasHandle_t cublas = nullptr;
  /// Caller-owned scratch for one step (CUB's two-phase idiom: ask
  /// protomem::workspace_size(memory, rows, classes), allocate, pass it here). When it is null or
  /// too small the memory uses its own buffer, grown with cudaMallocAsync on `stream`.
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  /// How the two memory-sized GEMMs compute.
  GemmPrecision precision = GemmPrecision::fp32;
  /// At most this many stored prototypes per tile of the memory pass; 0 (default): no cap beyond
  /// Config::workspace_bytes, whose B x T x 4-byte logit tile sets the width. Wider tiles make
  /// fewer, larger GEMMs, which the GPU runs faster (docs/cuda.md measures it).
  std::int64_t tile_columns = 0;
};

}  // namespace protomem
