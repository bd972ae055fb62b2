// main() of the CUDA tests: where no CUDA device is usable the test reports "skipped" (exit code
// 77, CTest's SKIP_RETURN_CODE for these tests) instead of passing without having run anything.
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cstdio>

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no usable CUDA device (%s)\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
    return 77;
  }
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, 0) == cudaSuccess) {
    std::printf("CUDA device 0: %s (sm_%d%d)\n", properties.name, properties.major,
                properties.minor);
  }
  const int failed = Catch::Session().run(argc, argv);
  return failed == 77 ? 78 : failed;  // never report failures as "skipped"
}
