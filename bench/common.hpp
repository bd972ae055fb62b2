// Helpers shared by protomem's benchmarks: thread count, random unit vectors, filling a memory
// through a checkpoint (the only public way to hold 2^20 classes without 2^20 / C steps), peak RSS.
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <protomem/memory.hpp>

namespace bench {

using protomem::index_t;
using protomem::label_t;

/// Threads for the step, the bound and the baselines: $PROTOMEM_BENCH_THREADS, else every core.
inline int threads() {
  if (const char* env = std::getenv("PROTOMEM_BENCH_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

inline double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Peak resident set size of this process so far, in MiB.
inline double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: KiB
}

/// A fast deterministic generator (splitmix64): benchmark data need speed, not quality.
struct Random {
  std::uint64_t state;
  explicit Random(std::uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ULL + 1) {}
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [-1, 1).
  float symmetric() {
    return static_cast<float>(static_cast<double>(next() >> 40) * 0x1p-23 - 1.0);
  }
};

/// `rows` random unit vectors of `dim` floats at `out` (row stride dim).
inline void unit_rows(float* out, index_t rows, index_t dim, Random& random) {
  for (index_t r = 0; r < rows; ++r) {
    float* v = out + r * dim;
    double n2 = 0;
    for (index_t k = 0; k < dim; ++k) {
      v[k] = random.symmetric();
      n2 += double(v[k]) * v[k];
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(n2));
    for (index_t k = 0; k < dim; ++k) v[k] *= inv;
  }
}

/// Loads `count` classes into `memory` (which must be empty of pending work): labels label_of(r),
/// random unit prototypes. Streams a checkpoint through a temporary file in the format that
/// memory.hpp documents, taking its header from an empty memory's save().
template <class Memory>
void fill(Memory& memory, index_t count, const std::function<label_t(index_t)>& label_of,
          std::uint64_t seed) {
  const index_t dim = memory.dim();
  protomem::Config small = memory.config();
  small.capacity = 1;
  std::ostringstream empty_out;
  Memory(small, memory.margin(), memory.generator(), memory.refresh(), memory.queue())
      .save(empty_out);
  std::string head = empty_out.str();
  head.resize(head.size() - 12);  // drop the record count (u64) and the CRC (u32)

  char name[] = "/tmp/protomem_bench_XXXXXX";
  const int fd = mkstemp(name);
  if (fd < 0) throw std::runtime_error("bench::fill: mkstemp failed");
  close(fd);
  {
    std::ofstream out(name, std::ios::binary);
    std::uint32_t crc = 0;
    auto write = [&](const void* data, std::size_t size) {
      out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
      crc = protomem::detail::crc32(static_cast<const char*>(data), size, crc);
    };
    write(head.data(), head.size());
    const auto n = static_cast<std::uint64_t>(count);
    write(&n, 8);  // little-endian hosts only (x86-64, AArch64)
    Random random(seed);
    std::vector<char> record(static_cast<std::size_t>(24 + 4 * dim));
    std::vector<float> prototype(static_cast<std::size_t>(dim));
    for (index_t r = 0; r < count; ++r) {
      const std::int64_t label = label_of(r);
      const auto slot = static_cast<std::uint64_t>(r);
      const std::uint64_t written = 0;
      unit_rows(prototype.data(), 1, dim, random);
      std::memcpy(record.data(), &label, 8);
      std::memcpy(record.data() + 8, &slot, 8);
      std::memcpy(record.data() + 16, &written, 8);
      std::memcpy(record.data() + 24, prototype.data(), prototype.size() * 4);
      write(record.data(), record.size());
    }
    out.write(reinterpret_cast<const char*>(&crc), 4);
    if (!out) throw std::runtime_error("bench::fill: writing the checkpoint failed");
  }
  memory.load(std::string(name));
  std::remove(name);
}

}  // namespace bench
