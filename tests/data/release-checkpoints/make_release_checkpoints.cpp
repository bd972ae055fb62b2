// Writes the release checkpoints of this folder with the RELEASE'S OWN headers (README.md says
// which release and how); it uses that release's API (policies as template parameters), so it is
// not built with this tree. For each memory: `saved_after` steps, the checkpoint `<name>.ckpt`,
// then `continued` more steps whose loss and gradient sum go to `<name>.expected` (hex floats,
// one step a line) and whose final state is `<name>.final.ckpt`.
#include <protomem/memory.hpp>

#include <cstdio>
#include <fstream>
#include <string>

#include "stream.hpp"

template <class Memory>
void record(Memory& memory, const std::string& name) {
  using Scalar = typename Memory::scalar_type;
  auto run = [&](int t, std::FILE* out) {
    const release_stream::Batch b = release_stream::batch(t);
    const auto rows = static_cast<protomem::index_t>(b.labels.size());
    std::vector<Scalar> e(b.embeddings.begin(), b.embeddings.end()), g(e.size());
    const Scalar loss = memory.step(
        protomem::matrix_view<const Scalar>(e.data(), rows, release_stream::dim),
        protomem::label_view(b.labels.data(), rows),
        protomem::matrix_view(g.data(), rows, release_stream::dim));
    double sum = 0;
    for (Scalar v : g) sum += static_cast<double>(v);
    if (out) std::fprintf(out, "%a %a\n", static_cast<double>(loss), sum);
  };
  for (int t = 0; t < release_stream::saved_after; ++t) run(t, nullptr);
  memory.save(name + ".ckpt");
  std::FILE* out = std::fopen((name + ".expected").c_str(), "w");
  for (int t = 0; t < release_stream::continued; ++t) run(release_stream::saved_after + t, out);
  std::fclose(out);
  memory.save(name + ".final.ckpt");
}

int main() {
  protomem::Config config;
  config.capacity = release_stream::capacity;
  config.dim = release_stream::dim;
  config.threads = 1;
  {  // The release's defaults (CosFace, ExemplarMean, Replace, LRW, NoMining, NoAging), float.
    protomem::PrototypeMemory<float> memory(config, protomem::CosFace(16, 0.3));
    record(memory, "v2-defaults-float");
  }
  {  // A policy of every family other than the default, double.
    protomem::PrototypeMemory<double, protomem::cpu, protomem::ArcFace, protomem::LeaveOneOut,
                              protomem::Momentum, protomem::FirstInFirstOut,
                              protomem::DoppelgangerMining, protomem::AgeDecay>
        memory(config, protomem::ArcFace(16, 0.4), {}, protomem::Momentum(0.25), {},
               protomem::DoppelgangerMining(3, 32), protomem::AgeDecay(4.0, 9));
    record(memory, "v2-policies-double");
  }
  return 0;
}
