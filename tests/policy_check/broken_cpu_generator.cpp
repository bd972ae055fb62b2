// A Generator policy that meets the memory's requirements but lacks a member of its rule that the
// CPU backend calls (backward): a step must name it (see complete.cpp for the whole set).
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

[[maybe_unused]] float step(protomem::PrototypeMemory<float, protomem::cpu, protomem::CosFace,
                                                      GeneratorWithoutBackward>& memory,
                            protomem::MatrixView<const float> e, protomem::LabelView y,
                            protomem::MatrixView<float> g) {
  return memory.step(e, y, g);
}

}  // namespace
