// A Margin policy without target(): PrototypeMemory must say which member is missing, and that
// protomem::cuda needs it PROTOMEM_HOST_DEVICE (see complete.cpp for the whole set).
#include <protomem/memory.hpp>

namespace {

struct MarginWithoutTarget {
  static constexpr const char* name = "broken";
  double scale() const { return 16.0; }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T) const {
    return T(1);
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, MarginWithoutTarget{});
}

}  // namespace
