// The sharded heads over protomem::cpu: float32 and float64 (sharded_head.hpp).
#include "sharded_head.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_sharded_head_cpu(const void* group, bool double_precision,
                                               const Config& config, const Policies& policies) {
  if (double_precision) return make_sharded<double, cpu>(group, config, policies);
  return make_sharded<float, cpu>(group, config, policies);
}

}  // namespace python
}  // namespace protomem
