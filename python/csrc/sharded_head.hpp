// The head over a torch.distributed process group: protomem::torch::PrototypeHead given a
// protomem::C10dCommunicator (protomem/comm/c10d.hpp), as AnyHead (head_impl.hpp) - the same
// HeadImpl as the one-process head. Included by heads_*.cpp, one translation unit per
// Scalar x Device.
//
// Requires: the process group's collectives take CPU tensors (Gloo); every process builds the head
// with the same configuration and policies (checked). Guarantees: as PrototypeMemory's given a
// communicator -
// loss and gradients equal the single-process head's on the concatenated batch; bad input on one
// process raises the same protomem.Error, naming the rank, in every process, with nothing changed.
#pragma once

#include <protomem/comm/c10d.hpp>

#include "head_impl.hpp"

namespace protomem {
namespace python {

template <class Scalar, class Device>
std::unique_ptr<AnyHead> make_sharded(const void* group, const Config& config,
                                      const Policies& policies) {
  using Head = protomem::torch::PrototypeHead<Scalar, Device>;
  const c10::intrusive_ptr<c10d::ProcessGroup> g =
      *static_cast<const c10::intrusive_ptr<c10d::ProcessGroup>*>(group);
  auto make = [g](const Config& c, const Policies& p) {
    return Head(C10dCommunicator(g), c, p);
  };
  return std::make_unique<HeadImpl<Head>>(make, config, policies);
}

}  // namespace python
}  // namespace protomem
