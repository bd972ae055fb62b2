// A Refresh policy whose refresh() may throw: the backends call it while they write the memory, so
// PrototypeMemory must reject it and say why (see complete.cpp for the whole set).
#include <protomem/memory.hpp>

namespace {

struct RefreshThatMayThrow {
  static constexpr const char* name = "broken";
  template <class T>
  PROTOMEM_HOST_DEVICE void refresh(const T*, T*, protomem::index_t) const {}
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, RefreshThatMayThrow{});
}

}  // namespace
