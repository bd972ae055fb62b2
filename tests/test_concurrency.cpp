// What may be shared between threads (docs/reliability.md, "Concurrency"):
//   - two memories stepped in two threads at once, each with its own threaded memory pass, give
//     exactly what each gives when it runs alone (no shared state between memories);
//   - a memory that no thread changes may be read (iteration, lookups, save) by many threads.
// Run under ThreadSanitizer by the tsan preset, which is where a data race would show even when
// the values happen to agree.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <protomem/memory.hpp>

namespace {

using protomem::index_t;
using protomem::label_t;

// One run: `steps` steps of `classes` classes x 2 exemplars, labels drawn from `identities`, so the
// memory fills, refreshes and evicts. Returns each step's loss and the final checkpoint bytes.
struct Run {
  std::vector<double> losses;
  std::string checkpoint;
};

template <class T>
Run run(std::uint64_t seed, index_t capacity, index_t dim, int classes, label_t identities,
        int steps, int threads) {
  protomem::Config config{capacity, dim};
  config.threads = threads;
  config.workspace_bytes = std::size_t{16} << 10;  // narrow tiles: several per lane
  protomem::PrototypeMemory<T> memory(config);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<label_t> pick(0, identities - 1);
  Run out;
  std::vector<T> embeddings, gradient;
  std::vector<label_t> labels;
  for (int step = 0; step < steps; ++step) {
    labels.clear();
    while (static_cast<int>(labels.size()) < 2 * classes) {
      const label_t label = pick(rng);
      bool seen = false;
      for (label_t l : labels) seen = seen || l == label;
      if (!seen) labels.insert(labels.end(), {label, label});
    }
    embeddings.resize(labels.size() * static_cast<std::size_t>(dim));
    for (T& v : embeddings) v = T(normal(rng));
    gradient.assign(embeddings.size(), T(0));
    const auto B = static_cast<index_t>(labels.size());
    out.losses.push_back(double(memory.step(protomem::matrix_view<const T>(embeddings.data(), B, dim),
                                            protomem::label_view(labels.data(), B),
                                            protomem::matrix_view(gradient.data(), B, dim))));
  }
  std::ostringstream bytes;
  memory.save(bytes);
  out.checkpoint = bytes.str();
  return out;
}

}  // namespace

TEST_CASE("two memories stepped in two threads equal each stepped alone", "[concurrency]") {
  // Each memory runs its own 2-thread memory pass, so up to four threads work at once.
  const Run alone_float = run<float>(1, 96, 24, 8, 300, 40, 2);
  const Run alone_double = run<double>(2, 64, 16, 6, 200, 40, 2);

  Run together_float, together_double;
  std::thread a([&] { together_float = run<float>(1, 96, 24, 8, 300, 40, 2); });
  std::thread b([&] { together_double = run<double>(2, 64, 16, 6, 200, 40, 2); });
  a.join();
  b.join();

  // The same thread count gives bit-identical results (Config::threads), whatever else runs.
  CHECK(together_float.losses == alone_float.losses);
  CHECK(together_float.checkpoint == alone_float.checkpoint);
  CHECK(together_double.losses == alone_double.losses);
  CHECK(together_double.checkpoint == alone_double.checkpoint);
}

TEST_CASE("a memory no thread changes may be read by many threads", "[concurrency]") {
  const Run filled = run<float>(3, 128, 16, 8, 400, 30, 1);
  protomem::PrototypeMemory<float> memory(protomem::Config{128, 16});
  std::istringstream in(filled.checkpoint);
  memory.load(in);
  const auto& shared = memory;

  // Every stored label's prototype and age folded into one number, and the saved bytes. No Catch2
  // assertion inside (Catch2 is not thread-safe): a lookup that fails makes the total NaN.
  auto read_all = [&shared] {
    double total = 0;
    for (const auto& record : shared) {
      if (!shared.contains(record.label)) total = std::numeric_limits<double>::quiet_NaN();
      const auto p = shared.prototype(record.label);
      for (index_t k = 0; k < shared.dim(); ++k) total += double(p[k]) * double(k + 1);
      total += double(shared.last_written(record.label));
    }
    std::ostringstream out;
    shared.save(out);
    return std::make_pair(total, out.str());
  };
  const auto expected = read_all();
  CHECK(expected.second == filled.checkpoint);

  std::vector<std::pair<double, std::string>> seen(4);
  std::vector<std::thread> readers;
  for (std::size_t t = 0; t < seen.size(); ++t) {
    readers.emplace_back([&, t] { seen[t] = read_all(); });
  }
  for (std::thread& reader : readers) reader.join();
  for (const auto& result : seen) {
    CHECK(result.first == expected.first);
    CHECK(result.second == expected.second);
  }
}
