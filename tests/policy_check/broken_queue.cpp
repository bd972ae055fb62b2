// A Queue policy without on_refresh: PrototypeMemory must name the missing member (see
// complete.cpp for the whole set).
#include <protomem/memory.hpp>

namespace {

struct QueueWithoutOrder {
  static constexpr const char* name = "broken";
  void on_insert(protomem::detail::SlotQueue& order, protomem::index_t slot) const noexcept {
    order.push_back(slot);
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

static_assert(sizeof(protomem::PrototypeMemory<float, protomem::cpu, protomem::CosFace,
                                               protomem::ExemplarMean, protomem::Replace,
                                               QueueWithoutOrder>) > 0);

}  // namespace
