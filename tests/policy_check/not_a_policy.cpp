// A type of no policy family given to the constructor: one message saying what each family is
// recognised by, and no misleading errors from a family it is not.
#include <protomem/memory.hpp>

namespace {

struct NotAPolicy {
  static constexpr const char* name = "not_a_policy";
};

[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> memory(config, NotAPolicy{});
}

}  // namespace
