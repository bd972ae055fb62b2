// float64 heads, every margin, without mining (see head_impl.hpp).
#include "head_impl.hpp"

PROTOMEM_PY_INSTANCE(double, NoMargin, false)
PROTOMEM_PY_INSTANCE(double, CosFace, false)
PROTOMEM_PY_INSTANCE(double, ArcFace, false)
PROTOMEM_PY_INSTANCE(double, CombinedMargin, false)
