// float32 heads with NoMargin and CosFace (see head_impl.hpp; split for parallel compilation).
#include "head_impl.hpp"

PROTOMEM_PY_INSTANCE(float, NoMargin, true)
PROTOMEM_PY_INSTANCE(float, CosFace, true)
