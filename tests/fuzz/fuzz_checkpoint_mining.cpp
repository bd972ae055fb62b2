// Fuzz target: the checkpoint loader of a memory with DoppelgangerMining (k = 3, a table of 6
// rows), whose state is a variable-length table. See checkpoint_target.hpp.
#include "checkpoint_target.hpp"

namespace {
using Memory = protomem::PrototypeMemory<float>;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz_support::fuzz_checkpoint(data, size, [] {
    return Memory(fuzz_support::config(), protomem::CosFace(), protomem::ExemplarMean(),
                  protomem::Replace(), protomem::LeastRecentlyWritten(),
                  protomem::DoppelgangerMining(/*k=*/3, /*table_capacity=*/6));
  });
  return 0;
}
