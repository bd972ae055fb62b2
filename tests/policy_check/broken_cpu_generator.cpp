// A Generator policy that meets the memory's requirements but lacks a member of its rule that the
// CPU backend calls (backward): constructing a memory with it must name it (see complete.cpp).
#include <protomem/memory.hpp>

namespace {

using protomem::index_t;

struct GeneratorWithoutBackward {
  static constexpr const char* name = "broken";
  static constexpr index_t min_exemplars = 1;
  PROTOMEM_HOST_DEVICE static constexpr bool constant_target(index_t n) { return n == 1; }
  template <class Rows>
  void targets(Rows&) const {}
  template <class Rows>
  auto target_cosine(const Rows& r, index_t i) const {
    return r.batch_cos(i, r.batch.class_of[static_cast<std::size_t>(i)]);
  }
  template <class Rows, class T>
  void route_target(Rows& r, index_t i, index_t y, T g) const {
    r.batch_grad(i, y) = g;
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing it to the constructor builds its holder, which checks the family's requirements.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, GeneratorWithoutBackward{});
}

}  // namespace
