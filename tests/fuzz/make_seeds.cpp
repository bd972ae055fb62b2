// Writes the fuzz targets' seed corpus from real saved state: checkpoints of memories of the
// targets' configurations after a few steps (empty, partly filled, full and evicting), sampler
// states at several positions, and data set lists. Each checkpoint and sampler seed is written
// twice, behind mode byte 0 (checksum as saved) and 1 (the target recomputes the checksum).
//
//   fuzz_make_seeds <corpus directory>      (writes <dir>/<target>/seed-*)
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <protomem/data/dataset_index.hpp>
#include <protomem/memory.hpp>
#include <protomem/data/sampler.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

void write(const fs::path& file, const std::string& bytes) {
  fs::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

void write_both_modes(const fs::path& dir, const std::string& name, const std::string& bytes) {
  write(dir / (name + "-m0"), std::string(1, '\0') + bytes);
  write(dir / (name + "-m1"), std::string(1, '\1') + bytes);
}

// Steps of 3 classes x 2 exemplars (dim 4) with labels drawn from `classes` labels.
template <class Memory>
void feed(Memory& memory, int steps, int classes, std::uint64_t seed) {
  std::uint64_t state = seed;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
  };
  for (int s = 0; s < steps; ++s) {
    std::vector<protomem::label_t> labels;
    while (labels.size() < 6) {
      const auto l = static_cast<protomem::label_t>(next() % static_cast<std::uint64_t>(classes));
      bool taken = false;
      for (auto x : labels) taken = taken || x == l;
      if (!taken) labels.insert(labels.end(), {l, l});
    }
    std::vector<float> e(24), g(24);
    for (float& v : e) v = static_cast<float>(next() % 1000) / 500.0f - 1.0f + 0.01f;
    memory.step(protomem::matrix_view<const float>(e.data(), 6, 4),
                protomem::label_view(labels.data(), 6),
                protomem::matrix_view<float>(g.data(), 6, 4));
  }
}

template <class Memory>
std::string bytes_of(const Memory& memory) {
  std::ostringstream out;
  memory.save(out);
  return out.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds <corpus directory>\n");
    return 2;
  }
  const fs::path root(argv[1]);
  {
    using Memory = protomem::PrototypeMemory<float>;
    for (int steps : {0, 1, 3, 12}) {
      Memory memory({8, 4}, protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
                    protomem::Momentum(0.3));
      feed(memory, steps, 20, 11 + static_cast<std::uint64_t>(steps));
      write_both_modes(root / "fuzz_checkpoint", "seed-steps" + std::to_string(steps),
                       bytes_of(memory));
    }
  }
  {
    using Memory = protomem::PrototypeMemory<float>;
    for (int steps : {0, 2, 12}) {
      Memory memory({8, 4}, protomem::CosFace(), protomem::ExemplarMean(), protomem::Replace(),
                    protomem::LeastRecentlyWritten(), protomem::DoppelgangerMining(3, 6));
      feed(memory, steps, 12, 29 + static_cast<std::uint64_t>(steps));
      write_both_modes(root / "fuzz_checkpoint_mining", "seed-steps" + std::to_string(steps),
                       bytes_of(memory));
    }
  }
  {
    // The data set of fuzz_sampler_state.cpp.
    std::vector<protomem::label_t> labels;
    for (protomem::label_t i = 0; i < 37; ++i) labels.push_back((i * 7) % 10 + (i % 3) * 100);
    const auto index = protomem::DatasetIndex::from_labels(labels);
    for (std::uint64_t batches : {0, 1, 9}) {
      protomem::IterateAndSample sampler(index, {4, 2, 7 + batches, 0.25});
      for (std::uint64_t b = 0; b < batches; ++b) sampler.next();
      std::ostringstream out;
      sampler.save(out);
      write_both_modes(root / "fuzz_sampler_state", "seed-batches" + std::to_string(batches),
                       out.str());
    }
  }
  {
    const fs::path dir = root / "fuzz_dataset_list";
    write(dir / "seed-plain", "a/0001.jpg 0\na/0002.jpg 0\nb/0001.jpg 1\nc/x.png 7\n");
    write(dir / "seed-comments-crlf",
          "# images\r\n\r\n  dir with space/img 1.jpg\t3\r\n   # indented comment\r\nz 3\r\n");
    write(dir / "seed-errors", "only-one-field\nx -1\ny 12a\nw 99999999999999999999\n");
  }
  std::printf("seeds written under %s\n", root.c_str());
  return 0;
}
