// The heads of one Scalar x Device, float64 over protomem::cpu: the single-process
// PrototypeHead and the ShardedPrototypeHead over a torch.distributed group (head_impl.hpp,
// sharded_head.hpp). Both in one translation unit, so that their backend compiles once.
#include "sharded_head.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_head_double(const void* group, const Config& config,
                                          const Policies& policies) {
  if (group == nullptr) {
    return make_single<protomem::torch::PrototypeHead<double, cpu>>(config, policies);
  }
  return make_sharded<double, cpu>(group, config, policies);
}

}  // namespace python
}  // namespace protomem
