// A Queue policy whose refresh_renews may throw: PrototypeMemory must say it must be noexcept (see
// complete.cpp for the whole set).
#include <protomem/memory.hpp>

namespace {

struct QueueThatMayThrow {
  static constexpr const char* name = "broken";
  bool refresh_renews() const { return true; }  // not noexcept
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, QueueThatMayThrow{});
}

}  // namespace
