// protomem on NVIDIA GPUs: include this header (instead of, or after, protomem/memory.hpp) from a
// CUDA translation unit (.cu, compiled by nvcc) and link protomem::cuda.
//
//   protomem::CudaResources resources;
//   resources.stream = stream;                                  // the caller's stream
//   protomem::PrototypeMemory<float, protomem::cuda> memory(resources, {1 << 20, 512});
//   float loss = memory.step(protomem::matrix_view<const float>(d_embeddings, B, 512),
//                            protomem::label_view(host_labels, B),          // labels: host memory
//                            protomem::matrix_view(d_gradient, B, 512));    // device memory
//
// The memory, its policies, checkpoints and bookkeeping are those of memory.hpp; only where the
// prototypes live and where the numerics run differ (backend/cuda/backend.cuh, docs/cuda.md).
// Embeddings and the gradient are device pointers; labels stay on the host (the slot map is there).
// A step synchronises the host once, at the end of forward() (it returns the loss and must throw
// for invalid input before the memory changes); commit() does not.
#pragma once

#if !defined(__CUDACC__)
#error "protomem/cuda.hpp contains CUDA kernels: include it from a .cu file compiled by nvcc"
#endif

#include <algorithm>
#include <sstream>
#include <string>

#include <protomem/backend/cuda/backend.cuh>
#include <protomem/backend/cuda/resources.cuh>
#include <protomem/memory.hpp>

namespace protomem {

/// Bytes of workspace a step of `memory` with at most `rows` samples and `classes` distinct classes
/// needs: the first phase of CUB's two-phase idiom. Allocate that much device memory (e.g. from a
/// caching allocator), set CudaResources::workspace / workspace_bytes, and the step uses it.
/// Under an Aging policy that looks at ages this includes a log-weight per slot and room for every
/// slot to be excluded (expired).
template <class Margin, class Generator, class Refresh, class Queue, class Mining, class Aging>
std::size_t workspace_size(
    const PrototypeMemory<float, cuda, Margin, Generator, Refresh, Queue, Mining, Aging>& memory,
    index_t rows, index_t classes) {
  const index_t k = std::max(memory.config().similar_k, memory.mining().similar_k());
  return memory.backend().workspace_size(rows, classes, memory.config().workspace_bytes, k,
                                         Generator::leave_one_out, Aging::by_age);
}

/// Copies the committed state (prototypes, labels, queue order, ages, counters and policy
/// parameters) of one memory into another of the same scalar type, dimension and policies, on any
/// device: GPU to CPU, CPU to GPU, GPU to GPU (FAISS's copyTo / copyFrom). Goes through the
/// checkpoint format, so the target checks everything a load() checks and is left untouched if
/// anything does not match. A pending forward of `from` is not part of the state.
template <class From, class To>
void copy_state(const From& from, To& to) {
  std::stringstream bytes(std::ios::in | std::ios::out | std::ios::binary);
  from.save(bytes);
  bytes.seekg(0);
  to.load(bytes, "the state copied from another memory");
}

}  // namespace protomem
