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

static_assert(sizeof(protomem::PrototypeMemory<float, protomem::cpu, protomem::CosFace,
                                               GeneratorWithoutMinExemplars>) > 0);

}  // namespace
