// The heads of one process over protomem::cpu: float32 and float64 (head_impl.hpp).
#include "head_impl.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_head_cpu(bool double_precision, const Config& config,
                                       const Policies& policies) {
  if (double_precision) {
    return make_single<protomem::torch::PrototypeHead<double>>(config, policies);
  }
  return make_single<protomem::torch::PrototypeHead<float>>(config, policies);
}

}  // namespace python
}  // namespace protomem
