// A step's heap use against its workspace budget, counted by an allocation counter: this
// executable interposes malloc and friends (glibc; skipped under sanitizers, which interpose them
// themselves) and records the peak of the bytes in use during forward(). The bound checked is the
// one docs/performance.md states: peak - before <= Config::workspace_bytes + O(B (D + C)) per
// thread, far below the B x M logits a non-tiled step would hold.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <protomem/memory.hpp>

#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define PROTOMEM_TEST_COUNTS_ALLOCATIONS 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#undef PROTOMEM_TEST_COUNTS_ALLOCATIONS
#endif
#endif

#ifdef PROTOMEM_TEST_COUNTS_ALLOCATIONS
#include "support/allocation_counter.hpp"
#endif

namespace {

using protomem::index_t;
using protomem::label_t;

template <class Memory>
struct Fixture {
  Memory memory;
  std::vector<float> embeddings, gradient;
  std::vector<label_t> labels;
  index_t rows = 0, dim = 0;

  Fixture(const protomem::Config& config, index_t classes, index_t exemplars) : memory(config) {
    dim = config.dim;
    std::istringstream in(filled(config, classes * exemplars));
    memory.load(in);
    std::mt19937_64 rng(6);
    std::normal_distribution<float> normal;
    make(label_t{1} << 40, classes, exemplars, rng, normal);  // classes new to the memory
  }
  // A full memory's checkpoint, made once per (capacity, dim) with one-exemplar classes, `batch`
  // per step, under the default budget (a tiny budget would make filling slow, not different).
  static const std::string& filled(const protomem::Config& config, index_t batch) {
    static std::string checkpoint;
    static std::pair<index_t, index_t> shape{-1, -1};
    if (shape != std::pair<index_t, index_t>{config.capacity, config.dim}) {
      protomem::PrototypeMemory<float> memory({config.capacity, config.dim});
      std::mt19937_64 rng(5);
      std::normal_distribution<float> normal;
      std::vector<float> e, g;
      std::vector<label_t> y;
      for (label_t next = 0; memory.size() < memory.capacity();) {
        const index_t n = std::min<index_t>(batch, memory.capacity() - memory.size());
        e.resize(static_cast<std::size_t>(n * config.dim));
        for (float& v : e) v = normal(rng);
        g.assign(e.size(), 0.0f);
        y.resize(static_cast<std::size_t>(n));
        for (label_t& label : y) label = next++;
        memory.step(protomem::matrix_view(static_cast<const float*>(e.data()), n, config.dim),
                    protomem::label_view(y.data(), n), protomem::matrix_view(g.data(), n, config.dim));
      }
      std::ostringstream out;
      memory.save(out);
      checkpoint = out.str();
      shape = {config.capacity, config.dim};
    }
    return checkpoint;
  }
  void make(label_t first, index_t classes, index_t exemplars, std::mt19937_64& rng,
            std::normal_distribution<float>& normal) {
    rows = classes * exemplars;
    embeddings.resize(static_cast<std::size_t>(rows * dim));
    for (float& v : embeddings) v = normal(rng);
    labels.clear();
    for (index_t c = 0; c < classes; ++c) {
      for (index_t k = 0; k < exemplars; ++k) labels.push_back(first + c);
    }
    gradient.assign(embeddings.size(), 0.0f);
  }
  protomem::MatrixView<const float> view() const {
    return protomem::matrix_view(embeddings.data(), rows, dim);
  }
  protomem::MatrixView<float> grad() { return protomem::matrix_view(gradient.data(), rows, dim); }
};

}  // namespace

TEMPLATE_TEST_CASE("a step's heap use stays within the workspace budget", "[workspace]",
                   protomem::cpu, protomem::cpu_bf16) {
  const index_t capacity = 8192, dim = 32, classes = 16, exemplars = 4;
  [[maybe_unused]] const index_t B = classes * exemplars, C = classes;  // C: the counted bound only
  for (int threads : {1, 2}) {
    for (std::size_t budget : {std::size_t(B) * 4 * 8, std::size_t(96) << 10}) {
      CAPTURE(threads, budget);
      protomem::Config config{capacity, dim};
      config.workspace_bytes = budget;
      config.threads = threads;
      config.similar_k = 3;
      Fixture<protomem::PrototypeMemory<float, TestType>> f(config, classes, exemplars);

      // The step reports what it took.
      auto result =
          f.memory.forward(f.view(), protomem::label_view(f.labels.data(), f.rows), f.grad());
      f.memory.discard();
      CHECK(result.workspace_bytes <= budget);
      CHECK(result.workspace_bytes > 0);

#ifdef PROTOMEM_TEST_COUNTS_ALLOCATIONS
      // A fresh memory (no workspace kept from an earlier step) so that the count sees it all.
      protomem::PrototypeMemory<float, TestType> cold(config);
      {
        std::ostringstream out;
        f.memory.save(out);
        std::istringstream in(out.str());
        cold.load(in);
      }
      counter::start();
      result = cold.forward(f.view(), protomem::label_view(f.labels.data(), f.rows), f.grad());
      counter::on = false;
      cold.discard();
      const long long peak = counter::peak.load();
      // Per thread O(B (D + C)) of batch-sized buffers (x, fresh prototypes, the running O, batch
      // logits and gradients: fewer than 16 such), plus a small constant (heaps, OpenMP, result).
      const long long allowed = static_cast<long long>(budget) +
                                16LL * threads * B * (dim + C) * long(sizeof(float)) + (64 << 10);
      const long long full_logits = static_cast<long long>(B) * capacity * long(sizeof(float));
      INFO("peak heap growth " << peak << " bytes, allowed " << allowed << ", full logits "
                               << full_logits);
      CHECK(peak <= allowed);
      CHECK(allowed < full_logits);  // the check would catch a step holding B x M logits
#endif
    }
  }
}

#ifdef PROTOMEM_TEST_COUNTS_ALLOCATIONS
TEST_CASE("a commit that evicts allocates O(C), whatever the capacity", "[workspace]") {
  // Eviction must skip the slots this batch refreshes; the bookkeeping for that is per batch
  // class, not per slot. The same batch (half of its classes stored, half new, so that the commit
  // both refreshes and evicts) against a full memory of M = 2^10 and of M = 2^14 slots.
  const index_t dim = 2, classes = 16, exemplars = 2, rows = classes * exemplars;
  std::mt19937_64 rng(8);
  std::normal_distribution<float> normal;
  std::vector<long long> peaks;
  for (index_t capacity : {index_t{1} << 10, index_t{1} << 14}) {
    CAPTURE(capacity);
    protomem::Config config{capacity, dim};
    config.threads = 1;
    protomem::PrototypeMemory<float> memory(config);
    {  // fill: labels 0 .. M-1, one exemplar each, 1024 classes a step
      const index_t n = 1024;
      std::vector<float> e(static_cast<std::size_t>(n * dim)), g(e.size());
      std::vector<label_t> y(static_cast<std::size_t>(n));
      for (label_t next = 0; memory.size() < memory.capacity();) {
        for (float& v : e) v = normal(rng);
        for (label_t& label : y) label = next++;
        memory.step(protomem::matrix_view(static_cast<const float*>(e.data()), n, dim),
                    protomem::label_view(y.data(), n), protomem::matrix_view(g.data(), n, dim));
      }
    }
    std::vector<float> e(static_cast<std::size_t>(rows * dim)), g(e.size());
    for (float& v : e) v = normal(rng);
    std::vector<label_t> y(static_cast<std::size_t>(rows));
    for (index_t i = 0; i < rows; ++i) {
      const index_t c = i / exemplars;  // even classes stored (labels near the queue's back)
      y[static_cast<std::size_t>(i)] = c % 2 == 0 ? label_t(capacity - 1 - c) : (label_t{1} << 40) + c;
    }
    memory.forward(protomem::matrix_view(static_cast<const float*>(e.data()), rows, dim),
                   protomem::label_view(y.data(), rows), protomem::matrix_view(g.data(), rows, dim));
    const protomem::Stats before = memory.stats();
    counter::start();
    memory.commit();
    counter::on = false;
    peaks.push_back(counter::peak.load());
    CHECK(memory.stats().refreshes - before.refreshes == std::uint64_t(classes / 2));
    CHECK(memory.stats().evictions - before.evictions == std::uint64_t(classes / 2));
  }
  INFO("commit's peak heap growth at M = 2^10: " << peaks[0] << " bytes, at M = 2^14: " << peaks[1]);
  // A flag per slot would add 2^14 - 2^10 bytes; allow a little for the allocator.
  CHECK(peaks[1] <= peaks[0] + 1024);
  CHECK(peaks[1] < 8192LL);
}
#endif
