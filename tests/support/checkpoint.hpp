// Helpers for tests that read or deliberately edit checkpoints (tests/test_checkpoint.cpp,
// tests/test_mining.cpp): the bytes of a save(), an independent CRC-32, and the offset of the
// record count. Written from the format's description in memory.hpp, not with the library's own
// serialisation code.
#pragma once

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

namespace checkpoint_support {

/// The bytes memory.save() writes.
template <class Memory>
std::string bytes_of(const Memory& memory) {
  std::ostringstream out;
  memory.save(out);
  return out.str();
}

/// CRC-32 bit by bit (zlib's polynomial), written independently of the library's table version.
inline std::uint32_t crc32_bitwise(const std::string& s) {
  std::uint32_t crc = 0xFFFFFFFFU;
  for (unsigned char byte : s) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320U & (0U - (crc & 1U)));
  }
  return ~crc;
}

/// Rewrites the trailing CRC so that a deliberately edited checkpoint passes the integrity check.
inline std::string with_valid_crc(std::string bytes) {
  const std::uint32_t crc = crc32_bitwise(bytes.substr(0, bytes.size() - 4));
  for (int k = 0; k < 4; ++k) bytes[bytes.size() - 4 + k] = static_cast<char>(crc >> (8 * k));
  return bytes;
}

/// Offset of the record count: the fixed header, then the six policies (margin, generator,
/// refresh, queue, mining, aging), each a u32-length name, a u32-length second string and a
/// u64-length state, as written by PrototypeMemory::save().
inline std::size_t records_offset(const std::string& bytes) {
  std::size_t at = 8 + 4 + 4 + 8 + 8 + 8 + 4 * 8;
  for (int p = 0; p < 6; ++p) {
    std::uint32_t n;
    std::memcpy(&n, bytes.data() + at, 4);
    at += 4 + n;
    std::memcpy(&n, bytes.data() + at, 4);
    at += 4 + n;
    std::uint64_t m;
    std::memcpy(&m, bytes.data() + at, 8);
    at += 8 + m;
  }
  return at;
}

}  // namespace checkpoint_support
