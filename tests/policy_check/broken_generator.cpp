// A Generator policy without min_exemplars: PrototypeMemory must name the missing member (see
// complete.cpp for the whole set).
#include <protomem/memory.hpp>

namespace {

struct GeneratorWithoutMinExemplars {
  static constexpr const char* name = "broken";
  PROTOMEM_HOST_DEVICE static constexpr bool constant_target(protomem::index_t n) { return n == 1; }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, GeneratorWithoutMinExemplars{});
}

}  // namespace
