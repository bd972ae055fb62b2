// A downstream program: one step of the prototype memory through the public entry point only.
#include <protomem/memory.hpp>

#include <cstdint>
#include <iostream>
#include <vector>

int main() {
  const protomem::index_t dim = 4, batch = 4;
  // Policies are constructor objects (any order; omitted families take their defaults).
  protomem::PrototypeMemory<float> memory(protomem::Config{/*capacity=*/16, /*dim=*/dim},
                                          protomem::ArcFace(64.0, 0.5), protomem::AgeDecay(8.0));
  std::vector<float> embeddings = {1, 0, 0, 0, 0.9f, 0.1f, 0, 0, 0, 1, 0, 0, 0, 0.8f, 0.2f, 0};
  std::vector<std::int64_t> labels = {7, 7, 3, 3};
  std::vector<float> gradient(batch * dim);
  float loss = memory.step(protomem::matrix_view(embeddings.data(), batch, dim),
                           protomem::label_view(labels.data(), batch),
                           protomem::matrix_view(gradient.data(), batch, dim));
  std::cout << "loss " << loss << " size " << memory.size() << "\n";
  const bool policies = memory.margin().holds<protomem::ArcFace>() &&
                        memory.aging().holds<protomem::AgeDecay>();
  return (memory.size() == 2 && loss >= 0 && policies) ? 0 : 1;
}
