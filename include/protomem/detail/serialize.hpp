// Byte-level reading and writing for checkpoints: explicit little-endian integers, IEEE-754 scalars
// by bit pattern, and the CRC-32 (zlib's polynomial) that guards a whole file. The reader checks
// every access, so a truncated or corrupt file can only end in protomem::Error.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include <protomem/error.hpp>

namespace protomem::detail {

/// CRC-32 with the reflected polynomial 0xEDB88320, as zlib.crc32 computes it.
inline std::uint32_t crc32(const char* data, std::size_t size, std::uint32_t crc = 0) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1U) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) {
    crc = table[(crc ^ static_cast<unsigned char>(data[i])) & 0xFFU] ^ (crc >> 8);
  }
  return ~crc;
}

/// Appends values to a byte string in little-endian order.
class ByteWriter {
 public:
  template <class T>
  void put(T value) {
    static_assert(std::is_arithmetic_v<T>, "ByteWriter::put takes numbers");
    using Bits = std::conditional_t<sizeof(T) == 8, std::uint64_t,
                                    std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint16_t>>;
    static_assert(sizeof(T) == sizeof(Bits));
    Bits bits;
    std::memcpy(&bits, &value, sizeof(T));
    for (std::size_t i = 0; i < sizeof(T); ++i) bytes_.push_back(static_cast<char>(bits >> (8 * i)));
  }
  void put_string(const std::string& s) {
    put<std::uint32_t>(static_cast<std::uint32_t>(s.size()));
    bytes_ += s;
  }
  void put_bytes(const std::string& s) {
    put<std::uint64_t>(s.size());
    bytes_ += s;
  }
  const std::string& bytes() const { return bytes_; }
  std::string& bytes() { return bytes_; }

 private:
  std::string bytes_;
};

/// Reads what ByteWriter wrote; any read past the end throws Error naming `what` and the offset.
class ByteReader {
 public:
  ByteReader(const char* data, std::size_t size, std::string source)
      : data_(data), size_(size), source_(std::move(source)) {}

  template <class T>
  T get(const char* what) {
    static_assert(std::is_arithmetic_v<T>, "ByteReader::get reads numbers");
    using Bits = std::conditional_t<sizeof(T) == 8, std::uint64_t,
                                    std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint16_t>>;
    need(sizeof(T), what);
    Bits bits = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
      bits |= static_cast<Bits>(static_cast<unsigned char>(data_[offset_ + i])) << (8 * i);
    }
    offset_ += sizeof(T);
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
  }
  std::string get_string(const char* what) {
    const auto n = get<std::uint32_t>(what);
    need(n, what);
    std::string s(data_ + offset_, n);
    offset_ += n;
    return s;
  }
  std::string get_bytes(const char* what) {
    const auto n = get<std::uint64_t>(what);
    need(n, what);
    std::string s(data_ + offset_, static_cast<std::size_t>(n));
    offset_ += static_cast<std::size_t>(n);
    return s;
  }
  /// Throws unless `n` more bytes are available.
  void need(std::uint64_t n, const char* what) const {
    if (n > size_ - offset_) {
      fail(source_, ": truncated while reading ", what, " at byte ", offset_, " (needs ", n,
           " bytes, ", size_ - offset_, " left)");
    }
  }
  std::size_t offset() const { return offset_; }
  std::size_t remaining() const { return size_ - offset_; }
  const std::string& source() const { return source_; }

 private:
  const char* data_;
  std::size_t size_;
  std::size_t offset_ = 0;
  std::string source_;
};

}  // namespace protomem::detail
