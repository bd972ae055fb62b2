// What doppelganger mining adds to a step: the same steps with NoMining and with
// DoppelgangerMining, on full memories holding the same prototypes, in the same run.
//
// Shape: B = 256 (C = 64 classes x K = 4 exemplars), D = 512, M = 2^16 float slots, all full; every
// batch brings 64 classes the memory does not hold (the steady state of a large identity set: each
// step evicts 64 slots). Mining: k = 4 doppelgangers per class in a table of 2^20 classes.
//
//   BM_Step/<policy>          one step per iteration, for each policy alone.
//   BM_MiningOverhead/<k>     each iteration runs one step of each memory on the same batch
//                             (alternating which goes first) and times them separately; counters
//                             plain_s and mining_s are the mean step times and `ratio` =
//                             mining_s / plain_s (the iteration time is that of both steps);
//                             cpu_ratio is the same ratio of process CPU time (all threads).
//
// Run (report the median of the repetitions), from a Release build:
//   build/ci/bench/bench_mining --benchmark_filter=Overhead --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <protomem/memory.hpp>

#include "common.hpp"

namespace {

using protomem::index_t;
using protomem::label_t;

constexpr index_t kDim = 512, kSlots = index_t{1} << 16, kClasses = 64, kExemplars = 4;
constexpr index_t kBatch = kClasses * kExemplars;

// One memory type for both: the Mining policy is a constructor object. NoAging, as these
// measurements were taken (the memory's default aging is AgeDecay(8) since issue #21).
using Memory = protomem::PrototypeMemory<float>;

// A full memory: random unit prototypes for labels 0 .. M-1, assigned directly (filling 2^16
// slots through steps would take minutes).
template <class Memory>
void fill(Memory& memory) {
  bench::fill(
      memory, kSlots, [](index_t r) { return label_t(r); }, 1);
}

// Batches of 64 new classes around random centres, 4 noisy exemplars each.
struct Feed {
  std::mt19937_64 rng{42};
  label_t next_label = kSlots;
  std::vector<float> embeddings = std::vector<float>(kBatch * kDim);
  std::vector<float> gradient = std::vector<float>(kBatch * kDim);
  std::vector<label_t> labels = std::vector<label_t>(kBatch);

  void next() {
    std::normal_distribution<float> normal;
    std::vector<float> centre(kDim);
    for (index_t c = 0; c < kClasses; ++c, ++next_label) {
      for (float& v : centre) v = normal(rng);
      for (index_t k = 0; k < kExemplars; ++k) {
        const index_t i = c * kExemplars + k;
        labels[static_cast<std::size_t>(i)] = next_label;
        for (index_t j = 0; j < kDim; ++j) {
          embeddings[static_cast<std::size_t>(i * kDim + j)] = centre[j] + 0.5f * normal(rng);
        }
      }
    }
  }
  template <class Memory>
  float step(Memory& memory) {
    return memory.step(protomem::matrix_view<const float>(embeddings.data(), kBatch, kDim),
                       protomem::label_view(labels.data(), kBatch),
                       protomem::matrix_view(gradient.data(), kBatch, kDim));
  }
};

std::unique_ptr<Memory> mining_memory(index_t k) {
  auto memory = std::make_unique<Memory>(protomem::Config{kSlots, kDim},
                                         protomem::DoppelgangerMining(k, index_t{1} << 20),
                                         protomem::NoAging());
  fill(*memory);
  return memory;
}

std::unique_ptr<Memory> plain_memory() {
  auto memory = std::make_unique<Memory>(protomem::Config{kSlots, kDim}, protomem::NoAging());
  fill(*memory);
  return memory;
}

void BM_Step_NoMining(benchmark::State& state) {
  auto memory = plain_memory();
  Feed feed;
  for (auto _ : state) {
    state.PauseTiming();
    feed.next();
    state.ResumeTiming();
    benchmark::DoNotOptimize(feed.step(*memory));
  }
}

void BM_Step_DoppelgangerMining(benchmark::State& state) {
  auto memory = mining_memory(state.range(0));
  Feed feed;
  for (auto _ : state) {
    state.PauseTiming();
    feed.next();
    state.ResumeTiming();
    benchmark::DoNotOptimize(feed.step(*memory));
  }
  state.counters["table_rows"] =
      static_cast<double>(memory->mining().get<protomem::DoppelgangerMining>().size());
}

void BM_MiningOverhead(benchmark::State& state) {
  auto plain = plain_memory();
  auto mining = mining_memory(state.range(0));
  Feed feed;
  double plain_s = 0, mining_s = 0, plain_cpu_s = 0, mining_cpu_s = 0;
  std::int64_t n = 0;
  using Clock = std::chrono::steady_clock;
  for (auto _ : state) {
    feed.next();
    const bool plain_first = n % 2 == 0;
    for (int turn = 0; turn < 2; ++turn) {
      const bool run_plain = (turn == 0) == plain_first;
      const auto start = Clock::now();
      const std::clock_t cpu_start = std::clock();  // process CPU time, all threads
      const float loss = run_plain ? feed.step(*plain) : feed.step(*mining);
      const double cpu = double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      benchmark::DoNotOptimize(loss);
      (run_plain ? plain_s : mining_s) += seconds;
      (run_plain ? plain_cpu_s : mining_cpu_s) += cpu;
    }
    ++n;
  }
  state.counters["plain_s"] = plain_s / double(n);
  state.counters["mining_s"] = mining_s / double(n);
  state.counters["ratio"] = mining_s / plain_s;
  // CPU time is less disturbed by other processes on a shared machine than wall time.
  state.counters["cpu_ratio"] = mining_cpu_s / plain_cpu_s;
}

}  // namespace

BENCHMARK(BM_Step_NoMining)->Unit(benchmark::kMillisecond)->Iterations(5);
BENCHMARK(BM_Step_DoppelgangerMining)->Arg(4)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(5);
BENCHMARK(BM_MiningOverhead)->Arg(4)->Arg(16)->Unit(benchmark::kMillisecond)->Iterations(6);
