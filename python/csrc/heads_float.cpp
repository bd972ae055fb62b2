// The heads of one Scalar x Device, float32 over protomem::cpu: the single-process
// PrototypeHead and the ShardedPrototypeHead over a torch.distributed group (head_impl.hpp,
// sharded_head.hpp). Both in one translation unit, so that their backend compiles once.
#include "sharded_head.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_head_float(const void* group, const Config& config,
                                         const Policies& policies) {
  if (group == nullptr) {
    return make_single<protomem::torch::PrototypeHead<float, cpu>>(config, policies);
  }
  return make_sharded<float, cpu>(group, config, policies);
}

}  // namespace python
}  // namespace protomem
