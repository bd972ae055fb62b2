// protomem::ShardedPrototypeMemory - the name a memory over several processes had before
// PrototypeMemory took a communicator (memory.hpp: "One memory for one process or many"). Kept so
// that code written against it compiles unchanged: it IS a PrototypeMemory built with `comm`,
// plus the communicator typed as given and gather_records()'s record type as its record_type.
//
//   protomem::MpiCommunicator comm;
//   protomem::PrototypeMemory<float> memory(comm, config, protomem::ArcFace(64, 0.5));  // today
//   protomem::ShardedPrototypeMemory<float, protomem::MpiCommunicator> same(comm, config, ...);
#pragma once

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#include <type_traits>
#include <utility>

#include <protomem/comm/communicator.hpp>
#include <protomem/memory.hpp>

namespace protomem {

/// A PrototypeMemory<Scalar, Device> over the ranks of a `Comm` (comm/communicator.hpp).
template <class Scalar, class Comm = SingleProcess, class Device = cpu>
class ShardedPrototypeMemory : public PrototypeMemory<Scalar, Device> {
  static_assert(check_communicator<Comm>());
  using Base = PrototypeMemory<Scalar, Device>;

 public:
  using communicator_type = Comm;
  /// One stored class of the logical memory, as gather_records() returns it.
  using record_type = typename Base::gathered_record_type;

  /// A collective, as PrototypeMemory(comm, config, policies...).
  template <class... P>
  ShardedPrototypeMemory(Comm& comm, const Config& config, P... policies)
      : Base(comm, config, std::move(policies)...), comm_(&comm) {}

  Comm& communicator() const { return *comm_; }

 private:
  Comm* comm_;
};

}  // namespace protomem
