// The checkpoint-loader fuzz targets' shared body (tests/fuzz/fuzz_checkpoint*.cpp).
//
// Input: one mode byte, then the bytes handed to PrototypeMemory::load(std::istream&). When the
// mode byte is odd the last four bytes are first replaced by the CRC-32 of the others, so that
// mutations get past the checksum to the structural and semantic checks behind it.
// Expected: load() succeeds or throws protomem::Error, and a failed load leaves the memory as it
// was. After a successful load the memory must save a checkpoint that loads back to the same
// bytes, and take a step. Anything else (another exception, a crash, a sanitizer report) is a
// finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <protomem/detail/serialize.hpp>
#include <protomem/memory.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace fuzz_support {

[[noreturn]] inline void finding(const char* what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what);
  std::abort();
}

/// The memories' configuration: capacity 8, dim 4, and a small tile budget (a step's default 64 MiB
/// of tiles would cost every execution large allocations under AddressSanitizer).
inline protomem::Config config() {
  protomem::Config c{/*capacity=*/8, /*dim=*/4};
  c.workspace_bytes = std::size_t{1} << 16;
  c.threads = 1;
  return c;
}

template <class Memory>
std::string bytes_of(const Memory& memory) {
  std::ostringstream out;
  memory.save(out);
  return out.str();
}

/// Runs one input against `make()`'s memories (all of one fixed configuration).
template <class MakeMemory>
void fuzz_checkpoint(const std::uint8_t* data, std::size_t size, MakeMemory make) {
  if (size == 0) return;
  const bool fix_crc = (data[0] & 1U) != 0;
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (fix_crc && bytes.size() >= 4) {
    const std::uint32_t crc = protomem::detail::crc32(bytes.data(), bytes.size() - 4);
    for (int k = 0; k < 4; ++k) bytes[bytes.size() - 4 + k] = static_cast<char>(crc >> (8 * k));
  }

  auto memory = make();
  const std::string before = bytes_of(memory);
  std::istringstream in(bytes);
  try {
    memory.load(in, "fuzz input");
  } catch (const protomem::Error&) {
    if (bytes_of(memory) != before) finding("a failed load changed the memory");
    return;
  }

  // Loaded: its own checkpoint must load back identically ...
  const std::string saved = bytes_of(memory);
  auto copy = make();
  std::istringstream again(saved);
  copy.load(again, "re-saved fuzz input");  // an Error here escapes: a finding
  if (bytes_of(copy) != saved) finding("a re-saved checkpoint does not load back identically");

  // ... and it must take a step: 3 classes x 2 exemplars of dimension 4.
  using Scalar = typename decltype(memory)::scalar_type;
  const protomem::index_t dim = 4;
  std::vector<Scalar> embeddings(6 * dim), gradient(6 * dim);
  for (std::size_t i = 0; i < embeddings.size(); ++i) {
    embeddings[i] = static_cast<Scalar>(1 + (i * 7) % 5) * (i % 3 == 0 ? -1 : 1);
  }
  const std::vector<protomem::label_t> labels = {0, 0, 1, 1, 1000000007, 1000000007};
  const Scalar loss = memory.step(protomem::matrix_view<const Scalar>(embeddings.data(), 6, dim),
                                  protomem::label_view(labels.data(), 6),
                                  protomem::matrix_view<Scalar>(gradient.data(), 6, dim));
  if (!std::isfinite(loss)) finding("a step after a successful load gave a non-finite loss");
}

}  // namespace fuzz_support
