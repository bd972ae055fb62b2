// An allocation counter for glibc: interposes malloc and friends and counts the bytes in use
// (malloc_usable_size) while counter::on is set, with their peak. Used by tests/test_workspace.cpp
// and bench/bench_memory.cpp to measure a step's heap use against its workspace budget.
//
// Include it in exactly one translation unit of an executable (it defines malloc, free, ...), and
// not under a sanitizer, which interposes them itself. Blind to memory mapped outside malloc.
#pragma once

#if !defined(__GLIBC__)
#error "allocation_counter.hpp interposes glibc's malloc"
#endif

#include <malloc.h>

#include <atomic>
#include <cstddef>

namespace counter {
inline std::atomic<bool> on{false};
inline std::atomic<long long> in_use{0};
inline std::atomic<long long> peak{0};

inline void add(void* p) {
  if (p == nullptr || !on.load(std::memory_order_relaxed)) return;
  const long long now = in_use += static_cast<long long>(malloc_usable_size(p));
  long long seen = peak.load(std::memory_order_relaxed);
  while (now > seen && !peak.compare_exchange_weak(seen, now)) {
  }
}
inline void remove(void* p) {
  if (p == nullptr || !on.load(std::memory_order_relaxed)) return;
  in_use -= static_cast<long long>(malloc_usable_size(p));
}
/// Counts from zero from now on.
inline void start() {
  in_use = 0;
  peak = 0;
  on = true;
}
}  // namespace counter

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);

void* malloc(std::size_t n) {
  void* p = __libc_malloc(n);
  counter::add(p);
  return p;
}
void* calloc(std::size_t n, std::size_t size) {
  void* p = __libc_calloc(n, size);
  counter::add(p);
  return p;
}
void* realloc(void* old, std::size_t n) {
  counter::remove(old);
  void* p = __libc_realloc(old, n);
  counter::add(p != nullptr ? p : old);
  return p;
}
void free(void* p) {
  counter::remove(p);
  __libc_free(p);
}
void* memalign(std::size_t alignment, std::size_t n) {
  void* p = __libc_memalign(alignment, n);
  counter::add(p);
  return p;
}
void* aligned_alloc(std::size_t alignment, std::size_t n) { return memalign(alignment, n); }
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  void* p = memalign(alignment, n);
  if (p == nullptr) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}
