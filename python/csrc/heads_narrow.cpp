// The heads of one process over narrow storage: float32 arithmetic over bf16 (cpu_bf16) or fp16
// (cpu_fp16) prototypes (head_impl.hpp).
#include "head_impl.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_head_narrow(Storage storage, const Config& config,
                                          const Policies& policies) {
  if (storage == Storage::bfloat16) {
    return make_single<protomem::torch::PrototypeHead<float, cpu_bf16>>(config, policies);
  }
  return make_single<protomem::torch::PrototypeHead<float, cpu_fp16>>(config, policies);
}

}  // namespace python
}  // namespace protomem
