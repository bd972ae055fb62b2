// Device tags: the second template parameter of PrototypeMemory says where the prototypes live and
// where a step runs. Each backend specialises detail::BackendFor for its tag.
#pragma once

#include <protomem/detail/language.hpp>

namespace protomem {

/// Host memory; numerics on Eigen (include/protomem/backend/cpu/).
struct cpu {};

/// Host memory with narrow storage: each prototype value is kept as bfloat16 (cpu_bf16) or IEEE
/// half (cpu_fp16), half the bytes of float, and decoded to float tile by tile inside the step,
/// which computes in float. Only for PrototypeMemory<float, ...>. prototype() and iteration then
/// yield decoded copies (std::vector<float>) instead of views. Error and speed:
/// docs/performance.md; numerics in include/protomem/backend/cpu/storage.hpp.
struct cpu_bf16 {};
struct cpu_fp16 {};

/// NVIDIA GPU memory; numerics on CUB, cuBLAS and Thrust (include/protomem/backend/cuda/).
struct cuda {};

namespace detail {
/// Maps (Scalar, Device) to the backend class that stores prototypes and runs the numerics.
template <class Scalar, class Device>
struct BackendFor;
}  // namespace detail

}  // namespace protomem
