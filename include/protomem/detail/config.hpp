// Macros shared by every layer: host/device annotation for code that the CUDA backend also runs.
#pragma once

#if defined(__CUDACC__)
#define PROTOMEM_HOST_DEVICE __host__ __device__
#else
#define PROTOMEM_HOST_DEVICE
#endif
