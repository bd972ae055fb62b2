// The deterministic batches behind the release checkpoints (README.md beside this file): the same
// embeddings and labels for the release that wrote a checkpoint and the build that continues it.
// Plain C++ with no protomem types, so that both sides compile it unchanged.
#pragma once

#include <cstdint>
#include <vector>

namespace release_stream {

constexpr std::int64_t dim = 8;
constexpr std::int64_t capacity = 24;
constexpr int saved_after = 12;  // steps before the checkpoint
constexpr int continued = 8;     // steps after it, recorded

struct Batch {
  std::vector<double> embeddings;  // rows x dim
  std::vector<std::int64_t> labels;
};

// A 64-bit LCG: the same numbers on every platform and compiler.
inline double uniform(std::uint64_t& state) {
  state = state * 6364136223846793005ULL + 1442695040888963407ULL;
  return static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0) - 0.5;
}

// Step t: 5 classes of 3 exemplars out of 40 identities, each exemplar its identity's fixed centre
// plus noise; class 5t mod 40, ... so classes return and the memory of 24 slots evicts.
inline Batch batch(int t) {
  Batch b;
  std::uint64_t noise = 0x9E3779B97F4A7C15ULL ^ static_cast<std::uint64_t>(t);
  for (int c = 0; c < 5; ++c) {
    const std::int64_t label = (5 * t + 7 * c) % 40;
    std::uint64_t centre = 0xD1B54A32D192ED03ULL + static_cast<std::uint64_t>(label);
    std::vector<double> mean(dim);
    for (double& v : mean) v = 2.0 * uniform(centre);
    for (int k = 0; k < 3; ++k) {
      b.labels.push_back(label);
      for (std::int64_t j = 0; j < dim; ++j) b.embeddings.push_back(mean[j] + uniform(noise));
    }
  }
  return b;
}

}  // namespace release_stream
