// examples/minimal.cpp on the GPU: the same memory, policies and batches, with the prototypes in
// GPU memory and the step on the caller's CUDA stream. Embeddings and gradient live on the device
// (a trainer passes its encoder's output tensor); labels stay on the host.
#include <cstdint>
#include <cstdio>
#include <protomem/cuda.hpp>
#include <random>
#include <vector>

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;  // CTest's SKIP_RETURN_CODE for this example
  }
  constexpr protomem::index_t dim = 64, classes_per_batch = 32, exemplars = 4;
  constexpr protomem::index_t batch = classes_per_batch * exemplars;

  cudaStream_t stream = nullptr;
  cudaStreamCreate(&stream);
  protomem::CudaResources resources;
  resources.stream = stream;  // the caller's stream; the memory never owns it

  protomem::Config config;
  config.capacity = 1024;
  config.dim = dim;
  protomem::PrototypeMemory<float, protomem::cuda> memory(resources, config,
                                                          protomem::CosFace(/*s=*/32.0, /*m=*/0.3));

  float *d_embeddings = nullptr, *d_gradient = nullptr;
  cudaMalloc(&d_embeddings, batch * dim * sizeof(float));
  cudaMalloc(&d_gradient, batch * dim * sizeof(float));

  std::mt19937_64 rng(7);
  std::normal_distribution<float> noise(0.0f, 0.4f);
  std::vector<float> embeddings(batch * dim);
  std::vector<std::int64_t> labels(batch);
  int status = 0;
  try {
    for (int step = 0; step < 100; ++step) {
      for (protomem::index_t c = 0; c < classes_per_batch; ++c) {
        const std::int64_t identity = (step * classes_per_batch + c) % 100000;
        std::mt19937_64 identity_rng(static_cast<std::uint64_t>(identity));
        std::normal_distribution<float> centre;
        std::vector<float> mean(dim);
        for (float& v : mean) v = centre(identity_rng);
        for (protomem::index_t k = 0; k < exemplars; ++k) {
          const protomem::index_t i = c * exemplars + k;
          labels[i] = identity;
          for (protomem::index_t j = 0; j < dim; ++j)
            embeddings[i * dim + j] = mean[j] + noise(rng);
        }
      }
      // (A trainer's encoder writes d_embeddings on the same stream.)
      cudaMemcpyAsync(d_embeddings, embeddings.data(), embeddings.size() * sizeof(float),
                      cudaMemcpyHostToDevice, stream);
      const float loss = memory.step(protomem::matrix_view<const float>(d_embeddings, batch, dim),
                                     protomem::label_view(labels.data(), batch),
                                     protomem::matrix_view(d_gradient, batch, dim));
      if (step % 20 == 0 || step == 99) {
        std::printf("step %3d  loss %8.4f  stored %4lld  evictions %6llu\n", step, loss,
                    static_cast<long long>(memory.size()),
                    static_cast<unsigned long long>(memory.stats().evictions));
      }
    }
    status = memory.size() == config.capacity ? 0 : 1;
  } catch (const protomem::Error& e) {
    std::printf("%s\n", e.what());
    status = 1;
  }
  cudaFree(d_embeddings);
  cudaFree(d_gradient);
  cudaStreamDestroy(stream);
  return status;
}
