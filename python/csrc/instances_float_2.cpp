// float32 heads with ArcFace and CombinedMargin (see head_impl.hpp; split for parallel
// compilation).
#include "head_impl.hpp"

PROTOMEM_PY_INSTANCE(float, ArcFace, true)
PROTOMEM_PY_INSTANCE(float, CombinedMargin, true)
