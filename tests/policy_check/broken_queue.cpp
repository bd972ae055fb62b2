// A Queue policy without refresh_renews: PrototypeMemory must name the missing member (see
// complete.cpp for the whole set).
#include <protomem/memory.hpp>

namespace {

struct QueueWithoutOrder {
  static constexpr const char* name = "broken";
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, QueueWithoutOrder{});
}

}  // namespace
