// bench_soak: a long run of a full memory under constant churn — every step brings C classes never
// seen before, so every write of a full memory evicts — to show that resident memory and step time
// stay flat over >= 10^7 evictions (no leak, no slowdown from slot-map tombstones or queue growth).
//
//   bench_soak [--evictions N] [--dim D] [--capacity M] [--classes C] [--exemplars K]
//              [--window W] [--json FILE]
//   defaults: N = 10^7, D = 16, M = 4096, C = 256, K = 1, W = 10^6, no JSON file
//
// Per window of W evictions it prints: evictions so far, steps, resident set size (RSS, from
// /proc/self/statm) at the window's end, the median and the 99th percentile of the window's step
// times (forward + commit), wall and this thread's CPU time (the one to compare on a shared
// machine), and the memory's own counters, which must show exactly C new classes per step. The
// first window starts once the memory is full. One thread (Config::threads = 1): the point is
// stability, not speed. Exits non-zero if the counters disagree with the churn.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <protomem/memory.hpp>
#include <string>
#include <utility>
#include <vector>

namespace {

using protomem::index_t;
using protomem::label_t;

struct Options {
  std::uint64_t evictions = 10'000'000;
  index_t dim = 16, capacity = 4096, classes = 256, exemplars = 1;
  std::uint64_t window = 1'000'000;
  std::string json;
};

double rss_mib() {
  std::ifstream statm("/proc/self/statm");
  long long pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return static_cast<double>(pages_resident) * static_cast<double>(::sysconf(_SC_PAGESIZE)) /
         (1024.0 * 1024.0);
}

// CPU time of this thread: unlike wall time, it does not grow when other processes share the cores
// (the step runs on this one thread: Config::threads = 1, no OpenMP in this executable).
double thread_cpu_ms() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
}

double quantile(std::vector<double> v, double q) {
  const std::size_t at = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(at), v.end());
  return v[at];
}

struct Window {
  std::uint64_t evictions, steps;
  double rss_mib, median_ms, p99_ms, median_cpu_ms, p99_cpu_ms;
  std::uint64_t insertions, refreshes;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int a = 1; a + 1 < argc; a += 2) {
    const std::string flag = argv[a], value = argv[a + 1];
    if (flag == "--evictions")
      o.evictions = std::stoull(value);
    else if (flag == "--dim")
      o.dim = std::stoll(value);
    else if (flag == "--capacity")
      o.capacity = std::stoll(value);
    else if (flag == "--classes")
      o.classes = std::stoll(value);
    else if (flag == "--exemplars")
      o.exemplars = std::stoll(value);
    else if (flag == "--window")
      o.window = std::stoull(value);
    else if (flag == "--json")
      o.json = value;
    else {
      std::fprintf(stderr, "bench_soak: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if ((argc - 1) % 2 != 0 || o.window == 0 || o.classes < 1 || o.classes > o.capacity) {
    std::fprintf(stderr, "bench_soak: bad arguments (see the comment at the top of the source)\n");
    return 2;
  }

  protomem::Config config{o.capacity, o.dim};
  config.threads = 1;
  protomem::PrototypeMemory<float> memory(config, protomem::NoAging());  // as measured
  const index_t B = o.classes * o.exemplars;
  std::vector<float> embeddings(static_cast<std::size_t>(B * o.dim)), gradient(embeddings.size());
  std::vector<label_t> labels(static_cast<std::size_t>(B));
  std::uint64_t rng = 0x9E3779B97F4A7C15ULL;
  label_t next_label = 0;
  auto step = [&] {
    for (index_t c = 0; c < o.classes; ++c, ++next_label) {
      for (index_t k = 0; k < o.exemplars; ++k)
        labels[static_cast<std::size_t>(c * o.exemplars + k)] = next_label;
    }
    for (float& v : embeddings) {  // xorshift64*, uniform in [-1, 1)
      rng ^= rng >> 12;
      rng ^= rng << 25;
      rng ^= rng >> 27;
      v = static_cast<float>((rng * 0x2545F4914F6CDD1DULL) >> 40) / 8388608.0f - 1.0f;
    }
    const double cpu_start = thread_cpu_ms();
    const auto start = std::chrono::steady_clock::now();
    memory.step(protomem::matrix_view<const float>(embeddings.data(), B, o.dim),
                protomem::label_view(labels.data(), B),
                protomem::matrix_view<float>(gradient.data(), B, o.dim));
    const double wall =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return std::make_pair(wall, thread_cpu_ms() - cpu_start);
  };

  while (memory.size() < memory.capacity()) step();  // fill
  const std::uint64_t evictions0 = memory.stats().evictions;
  const std::uint64_t steps0 = memory.stats().steps;
  const double rss_full = rss_mib();
  std::printf(
      "bench_soak: D = %lld, M = %lld, C = %lld new classes x K = %lld per step; full after "
      "%llu steps, RSS %.2f MiB\n",
      static_cast<long long>(o.dim), static_cast<long long>(o.capacity),
      static_cast<long long>(o.classes), static_cast<long long>(o.exemplars),
      static_cast<unsigned long long>(steps0), rss_full);
  std::printf("%12s %9s %9s %11s %11s %11s %11s %10s\n", "evictions", "steps", "RSS MiB",
              "median ms", "p99 ms", "median CPU", "p99 CPU", "refreshes");
  std::fflush(stdout);

  std::vector<Window> windows;
  std::vector<double> times, cpu_times;
  bool consistent = true;
  while (memory.stats().evictions - evictions0 < o.evictions) {
    const auto [wall, cpu] = step();
    times.push_back(wall);
    cpu_times.push_back(cpu);
    const std::uint64_t done = memory.stats().evictions - evictions0;
    if (done / o.window > windows.size() || done >= o.evictions) {
      const auto& s = memory.stats();
      Window w{done,
               s.steps - steps0,
               rss_mib(),
               quantile(times, 0.5),
               quantile(times, 0.99),
               quantile(cpu_times, 0.5),
               quantile(cpu_times, 0.99),
               s.insertions,
               s.refreshes};
      // Every step inserts C classes and, in a full memory, evicts C: nothing is refreshed.
      consistent =
          consistent && s.refreshes == 0 &&
          s.evictions - evictions0 == (s.steps - steps0) * static_cast<std::uint64_t>(o.classes) &&
          memory.size() == memory.capacity();
      windows.push_back(w);
      std::printf("%12llu %9llu %9.2f %11.4f %11.4f %11.4f %11.4f %10llu\n",
                  static_cast<unsigned long long>(w.evictions),
                  static_cast<unsigned long long>(w.steps), w.rss_mib, w.median_ms, w.p99_ms,
                  w.median_cpu_ms, w.p99_cpu_ms, static_cast<unsigned long long>(w.refreshes));
      std::fflush(stdout);
      times.clear();
      cpu_times.clear();
    }
  }

  double rss_min = windows.front().rss_mib, rss_max = rss_min;
  double med_min = windows.front().median_cpu_ms, med_max = med_min;
  for (const Window& w : windows) {
    rss_min = std::min(rss_min, w.rss_mib);
    rss_max = std::max(rss_max, w.rss_mib);
    med_min = std::min(med_min, w.median_cpu_ms);
    med_max = std::max(med_max, w.median_cpu_ms);
  }
  std::printf(
      "RSS over the windows: %.2f to %.2f MiB (%.2f at full); median step CPU time %.4f to %.4f ms;"
      " counters %s\n",
      rss_min, rss_max, rss_full, med_min, med_max, consistent ? "consistent" : "WRONG");

  if (!o.json.empty()) {
    std::ofstream out(o.json);
    out << "{\n  \"dim\": " << o.dim << ", \"capacity\": " << o.capacity
        << ", \"classes_per_step\": " << o.classes << ", \"exemplars_per_class\": " << o.exemplars
        << ", \"threads\": 1,\n  \"evictions\": " << windows.back().evictions
        << ", \"steps\": " << windows.back().steps << ", \"rss_mib_when_full\": " << rss_full
        << ", \"counters_consistent\": " << (consistent ? "true" : "false")
        << ",\n  \"windows\": [\n";
    for (std::size_t i = 0; i < windows.size(); ++i) {
      const Window& w = windows[i];
      out << "    {\"evictions\": " << w.evictions << ", \"steps\": " << w.steps
          << ", \"rss_mib\": " << w.rss_mib << ", \"median_step_ms\": " << w.median_ms
          << ", \"p99_step_ms\": " << w.p99_ms << ", \"median_step_cpu_ms\": " << w.median_cpu_ms
          << ", \"p99_step_cpu_ms\": " << w.p99_cpu_ms << "}" << (i + 1 < windows.size() ? "," : "")
          << "\n";
    }
    out << "  ]\n}\n";
  }
  return consistent ? 0 : 1;
}
