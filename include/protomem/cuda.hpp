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

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#if !defined(__CUDACC__)
#error "protomem/cuda.hpp contains CUDA kernels: include it from a .cu file compiled by nvcc"
#endif

#include <algorithm>
#include <sstream>
#include <string>

#include <protomem/backend/cuda/backend.cuh>
#include <protomem/backend/cuda/resources.cuh>
#include <protomem/policies/any.hpp>

namespace protomem {
namespace backend {

/// The CUDA backend as PrototypeMemory<Scalar, cuda> holds it: the seam's forward() and write()
/// take the memory's policy holders (policies/any.hpp) and switch, once per call, to the kernels
/// compiled for the built-in policies; a user-written Margin, Generator or Refresh is a
/// protomem::Error saying so (user-written policies run on protomem::cpu). Queue, Mining and Aging
/// run on the host for every backend, so any policy of theirs works here too.
template <class Scalar>
class CudaMemoryBackend : public CudaBackend<Scalar> {
 public:
  using CudaBackend<Scalar>::CudaBackend;

  StepOutput<Scalar> forward(const StepInput<Scalar>& in, const AnyMargin& margin,
                             const AnyGenerator& generator) {
    return detail::BuiltinGenerators::visit(generator, "protomem::cuda", [&](const auto& g) {
      using G = std::decay_t<decltype(g)>;
      return detail::BuiltinMargins::visit(margin, "protomem::cuda", [&](const auto& m) {
        return this->template forward_rule<std::decay_t<decltype(m)>, G::gradient,
                                           G::leave_one_out>(in, m);
      });
    });
  }

  void write(const std::vector<SlotWrite>& writes, const AnyRefresh& refresh) {
    detail::BuiltinRefreshes::visit(refresh, "protomem::cuda", [&](const auto& r) {
      this->CudaBackend<Scalar>::write(writes, r);
    });
  }
};

}  // namespace backend

namespace detail {
template <class Scalar>
struct BackendFor<Scalar, cuda> {
  using type = backend::CudaMemoryBackend<Scalar>;
};
}  // namespace detail
}  // namespace protomem

#include <protomem/memory.hpp>

namespace protomem {
/// Bytes of workspace a step of `memory` with at most `rows` samples and `classes` distinct classes
/// needs: the first phase of CUB's two-phase idiom. Allocate that much device memory (e.g. from a
/// caching allocator), set CudaResources::workspace / workspace_bytes, and the step uses it.
/// Under an Aging policy that looks at ages this includes a log-weight per slot and room for every
/// slot to be excluded (expired).
inline std::size_t workspace_size(const PrototypeMemory<float, cuda>& memory, index_t rows,
                                  index_t classes) {
  const index_t k = std::max(memory.config().similar_k, memory.mining().similar_k());
  return memory.backend().workspace_size(rows, classes, memory.config().workspace_bytes, k,
                                         memory.generator().holds<LeaveOneOut>(),
                                         memory.aging().by_age());
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
