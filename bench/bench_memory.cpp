// bench_memory: a step's peak memory against the store, the batch and the workspace budget
// (issue #4: peak <= store + O(B D) + budget), measured two ways in the same step:
//   - an allocation counter: this executable interposes malloc and friends (glibc), and counts the
//     bytes in use (malloc_usable_size) while a step runs; heap_peak is their peak above what was
//     in use before the step. Exact for the heap, blind to mmap'd memory outside malloc.
//   - the kernel's resident-set counters: /proc/self/clear_refs resets the high-water mark before
//     the step, so rss_growth = VmHWM after - VmRSS before covers every page the step touched
//     (heap, OpenBLAS's and OpenMP's buffers, thread stacks), at page granularity.
//
//   BM_StepMemory<Device>/B/D/M/budget_kib   one cold step (forward + commit) of a fresh full memory
//       (so that it allocates its workspace), then one warm step. Counters, in MiB unless named:
//       store (M x D stored values), state (heap the memory held before the step: store, slot map,
//       queue), batch (B x D floats), budget (Config::workspace_bytes), workspace
//       (StepResult::workspace_bytes), heap_peak, heap_peak_warm (the second step), rss_before,
//       rss_peak, rss_growth, rss_growth_warm, logits_BxM (what a step that held the B x M logits
//       would add), excess_over_BD = (heap_peak - workspace) / (B D 4 bytes): the O(B D) constant.
//
// Before the first benchmark one small step runs, so that OpenBLAS's buffers and OpenMP's threads
// exist already (they are the process's, not a step's). Threads: $PROTOMEM_BENCH_THREADS (default
// every core). Run: bench_memory --benchmark_format=json (each benchmark runs one iteration).
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <protomem/memory.hpp>

#include "common.hpp"

#include "../tests/support/allocation_counter.hpp"  // defines malloc & co. for this executable

namespace {

using bench::index_t;
using bench::label_t;

constexpr index_t kExemplars = 4;
constexpr double kMiB = 1024.0 * 1024.0;

// A field of /proc/self/status ("VmRSS", "VmHWM"), in MiB.
double proc_status_mib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size() + 1, field + ":") == 0) {
      return std::stod(line.substr(field.size() + 1)) / 1024.0;  // kB
    }
  }
  return -1;
}

// Resets the resident-set high-water mark (Linux >= 4.0).
bool reset_peak_rss() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f == nullptr) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

template <class Memory>
protomem::StepResult<float> step(Memory& memory, bench::Batch& batch, label_t& next, index_t B,
                                 index_t D) {
  batch.relabel(next);
  auto result = memory.forward(protomem::matrix_view(batch.embeddings.data(), B, D),
                               protomem::label_view(batch.labels.data(), B),
                               protomem::matrix_view(batch.gradient.data(), B, D));
  memory.commit();
  return result;
}

void warm_up_once(int threads) {
  static bool done = false;
  if (done) return;
  done = true;
  for (index_t D : {128, 512}) {
    protomem::Config config{8192, D};
    config.threads = threads;
    protomem::PrototypeMemory<float> memory(config, protomem::NoAging());
    bench::fill(
        memory, 8192, [](index_t r) { return label_t(r); }, 9);
    bench::Batch batch(256, D, kExemplars);
    label_t next = 8192;
    step(memory, batch, next, 256, D);
  }
}

template <class Device>
void BM_StepMemory(benchmark::State& state) {
  const index_t B = state.range(0), D = state.range(1), M = state.range(2);
  const std::size_t budget = std::size_t(state.range(3)) << 10;
  const int threads = bench::threads();
  warm_up_once(threads);
  using Memory = protomem::PrototypeMemory<float, Device>;
  using Stored = typename Memory::backend_type::StoreMatrix::Scalar;

  protomem::Config config{M, D};
  config.threads = threads;
  config.workspace_bytes = budget;
  bench::Batch batch(B, D, kExemplars);
  label_t next = M;

  counter::start();
  Memory memory(config, protomem::NoAging());  // as measured before AgeDecay(8) became the default
  bench::fill(
      memory, M, [](index_t r) { return label_t(r); }, 1);
  counter::on = false;
  const double state_mib = double(counter::in_use.load()) / kMiB;

  for (auto _ : state) {
    // Cold: the first step of this memory allocates its workspace.
    const bool rss_ok = reset_peak_rss();
    const double rss_before = proc_status_mib("VmRSS");
    counter::start();
    const auto result = step(memory, batch, next, B, D);
    counter::on = false;
    const double heap_peak = double(counter::peak.load());
    const double rss_peak = proc_status_mib("VmHWM");
    // Warm: a second step reuses it.
    reset_peak_rss();
    const double rss_before_warm = proc_status_mib("VmRSS");
    counter::start();
    step(memory, batch, next, B, D);
    counter::on = false;
    const double heap_peak_warm = double(counter::peak.load());
    const double rss_peak_warm = proc_status_mib("VmHWM");

    const double batch_bytes = double(B) * double(D) * sizeof(float);
    state.counters["store"] = double(M) * double(D) * sizeof(Stored) / kMiB;
    state.counters["state"] = state_mib;
    state.counters["batch"] = batch_bytes / kMiB;
    state.counters["budget"] = double(budget) / kMiB;
    state.counters["workspace"] = double(result.workspace_bytes) / kMiB;
    state.counters["tile"] = double(result.tile_columns);
    state.counters["threads"] = result.threads;
    state.counters["heap_peak"] = heap_peak / kMiB;
    state.counters["heap_peak_warm"] = heap_peak_warm / kMiB;
    state.counters["excess_over_BD"] = (heap_peak - double(result.workspace_bytes)) / batch_bytes;
    state.counters["logits_BxM"] = double(B) * double(M) * sizeof(float) / kMiB;
    if (rss_ok) {
      state.counters["rss_before"] = rss_before;
      state.counters["rss_peak"] = rss_peak;
      state.counters["rss_growth"] = rss_peak - rss_before;
      state.counters["rss_growth_warm"] = rss_peak_warm - rss_before_warm;
    }
  }
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "D", "M", "budget_kib"});
  for (long budget_kib : {128L, 1024L, 65536L}) b->Args({256, 512, 1L << 16, budget_kib});
  b->Args({512, 512, 1L << 16, 65536});
  b->Args({256, 128, 1L << 20, 65536});
  b->Args({256, 512, 1L << 20, 65536});
}

void narrow_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "D", "M", "budget_kib"});
  b->Args({256, 512, 1L << 16, 65536});
}

}  // namespace

BENCHMARK_TEMPLATE(BM_StepMemory, protomem::cpu)->Apply(shapes)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_StepMemory, protomem::cpu_fp16)
    ->Apply(narrow_shapes)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);
