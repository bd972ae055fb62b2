// Device tags: the second template parameter of PrototypeMemory says where the prototypes live and
// where a step runs. Each backend specialises detail::BackendFor for its tag.
#pragma once

namespace protomem {

/// Host memory; numerics on Eigen (include/protomem/backend/cpu/).
struct cpu {};

/// NVIDIA GPU memory; numerics on CUB, cuBLAS and Thrust (include/protomem/backend/cuda/).
struct cuda {};

namespace detail {
/// Maps (Scalar, Device) to the backend class that stores prototypes and runs the numerics.
template <class Scalar, class Device>
struct BackendFor;
}  // namespace detail

}  // namespace protomem
