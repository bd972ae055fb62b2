// An Aging policy whose log_weight() may throw: PrototypeMemory must name the requirement (see
// complete.cpp for the whole set).
#include <cstdint>
#include <protomem/memory.hpp>

namespace {

struct ThrowingAging {
  static constexpr const char* name = "broken";
  static constexpr bool by_age = true;
  double log_weight(std::uint64_t) const { return 0.0; }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, ThrowingAging{});
}

}  // namespace
