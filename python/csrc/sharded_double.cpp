// double heads sharded over a torch.distributed process group (see sharded_head.hpp).
#include "sharded_head.hpp"

namespace protomem {
namespace python {

std::unique_ptr<AnyHead> make_sharded_head_double(const void* group, const Config& config,
                                                 const Policies& p) {
  return make_sharded_head_for<double>(
      *static_cast<const c10::intrusive_ptr<c10d::ProcessGroup>*>(group), config, p);
}

}  // namespace python
}  // namespace protomem
