// The sharded heads over narrow storage: float32 over cpu_bf16 and cpu_fp16 (sharded_head.hpp).
#include "sharded_head.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_sharded_head_narrow(const void* group, Storage storage,
                                                  const Config& config, const Policies& policies) {
  if (storage == Storage::bfloat16) return make_sharded<float, cpu_bf16>(group, config, policies);
  return make_sharded<float, cpu_fp16>(group, config, policies);
}

}  // namespace python
}  // namespace protomem
