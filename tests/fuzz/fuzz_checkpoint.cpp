// Fuzz target: the checkpoint loader of a memory without a mining policy (ArcFace margin, Momentum
// refresh and the default AgeDecay(8): three policies carry state). See checkpoint_target.hpp.
#include "checkpoint_target.hpp"

namespace {
using Memory = protomem::PrototypeMemory<float>;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz_support::fuzz_checkpoint(data, size, [] {
    return Memory(fuzz_support::config(), protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
                  protomem::Momentum(0.3));
  });
  return 0;
}
