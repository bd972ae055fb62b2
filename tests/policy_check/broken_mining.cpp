// A Mining policy without clear(): PrototypeMemory must name the missing member (see complete.cpp
// for the whole set).
#include <protomem/memory.hpp>

namespace {

using protomem::index_t;
using protomem::label_t;
using protomem::Span;

struct MiningWithoutClear {
  static constexpr const char* name = "broken";
  index_t similar_k() const { return 0; }
  template <class T>
  void record(Span<const label_t>, Span<const label_t>, Span<const T>, index_t) noexcept {}
  Span<const label_t> doppelgangers(label_t) const { return {}; }
  Span<const float> cosines(label_t) const { return {}; }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, MiningWithoutClear{});
}

}  // namespace
