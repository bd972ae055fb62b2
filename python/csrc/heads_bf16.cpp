// The heads of one Scalar x Device, float32 arithmetic over bf16 storage (protomem::cpu_bf16):
// the single-process PrototypeHead and the ShardedPrototypeHead over a torch.distributed group
// (head_impl.hpp, sharded_head.hpp). Both in one translation unit: their backend compiles once.
#include "sharded_head.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_head_bf16(const void* group, const Config& config,
                                        const Policies& policies) {
  if (group == nullptr) {
    return make_single<protomem::torch::PrototypeHead<float, cpu_bf16>>(config, policies);
  }
  return make_sharded<float, cpu_bf16>(group, config, policies);
}

}  // namespace python
}  // namespace protomem
