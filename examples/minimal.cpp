// The smallest complete use of protomem: a memory of prototypes as the classifier of a CosFace
// softmax, fed by batches of K exemplars per class. A real trainer hands its encoder's output to
// step() and back-propagates the gradient it writes; here a fixed "encoder" makes the embeddings.
#include <protomem/memory.hpp>

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  constexpr protomem::index_t dim = 64, classes_per_batch = 32, exemplars = 4;
  constexpr protomem::index_t batch = classes_per_batch * exemplars;

  protomem::Config config;
  config.capacity = 1024;  // M slots, whatever the number of identities
  config.dim = dim;
  protomem::PrototypeMemory<float> memory(config, protomem::CosFace(/*s=*/32.0, /*m=*/0.3));

  std::mt19937_64 rng(7);
  std::normal_distribution<float> noise(0.0f, 1.5f);  // intra-class variation
  std::vector<float> embeddings(batch * dim), gradient(batch * dim);
  std::vector<std::int64_t> labels(batch);

  for (int step = 0; step < 100; ++step) {
    // Batch: 32 identities (out of 100,000) with 4 exemplars each, as an identity sampler gives.
    for (protomem::index_t c = 0; c < classes_per_batch; ++c) {
      const std::int64_t identity = (step * classes_per_batch + c) % 100000;
      std::mt19937_64 identity_rng(static_cast<std::uint64_t>(identity));
      std::normal_distribution<float> centre;
      std::vector<float> mean(dim);
      for (float& v : mean) v = centre(identity_rng);
      for (protomem::index_t k = 0; k < exemplars; ++k) {
        const protomem::index_t i = c * exemplars + k;
        labels[i] = identity;
        for (protomem::index_t j = 0; j < dim; ++j) embeddings[i * dim + j] = mean[j] + noise(rng);
      }
    }
    const float loss = memory.step(protomem::matrix_view<const float>(embeddings.data(), batch, dim),
                                   protomem::label_view(labels.data(), batch),
                                   protomem::matrix_view(gradient.data(), batch, dim));
    if (step % 20 == 0 || step == 99) {
      std::printf("step %3d  loss %8.4f  stored %4lld  evictions %6llu\n", step, loss,
                  static_cast<long long>(memory.size()),
                  static_cast<unsigned long long>(memory.stats().evictions));
    }
  }
  return memory.size() == config.capacity ? 0 : 1;
}
