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

static_assert(
    sizeof(protomem::PrototypeMemory<
           float, protomem::cpu, protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
           protomem::LeastRecentlyWritten, protomem::NoMining, ThrowingAging>) > 0);

}  // namespace
