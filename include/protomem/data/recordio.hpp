// protomem::data::RecordIOFile — reads an MXNet indexed RecordIO pair (train.rec + train.idx), the
// format insightface ships its face sets in (MS1MV2, MS1MV3, Glint360K, WebFace), and
// unpack_image_record(), which splits an image record into its header and its encoded image.
//
// The .rec file is a sequence of records; each is
//     uint32 magic = 0xced7230a
//     uint32 lrecord: upper 3 bits cflag, lower 29 bits the payload length
//     payload, then zero padding to a multiple of 4 bytes
// all little-endian. cflag 0 is a whole record. A writer splits a payload wherever the magic number
// appears in it at a 4-byte-aligned position: the parts carry cflag 1 (first), 2 (middle), 3 (last)
// and the reader joins them with the magic number between them, as MXNet's own reader does.
// The .idx file is text, one line per record: "<key>\t<byte offset of the record in .rec>".
//
// An image record's payload starts with MXNet's IRHeader (24 bytes, little-endian)
//     uint32 flag; float label; uint64 id; uint64 id2;
// followed, when flag > 0, by `flag` float labels (which then replace `label`), then the JPEG or
// PNG bytes.
//
// Requires: a POSIX system (records are read with pread, so one file serves many threads).
// Guarantees: every malformed input - an unreadable file, a malformed .idx line, a duplicate key,
// an offset past the end, a bad magic number, a length past the end of the file, a broken
// multi-part record, a payload shorter than its header - throws protomem::Error naming the file,
// the record's key and its byte offset; never reads out of bounds. read() is safe to call from
// several threads at once.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <protomem/detail/regular_file.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace protomem::data {

/// The record magic number (MXNet's kMagic).
inline constexpr std::uint32_t kRecordMagic = 0xced7230aU;
/// Size of MXNet's IRHeader: uint32 flag, float label, uint64 id, uint64 id2.
inline constexpr std::size_t kImageHeaderSize = 24;

namespace detail {

inline std::uint32_t load_u32(const unsigned char* p) {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}
inline std::uint64_t load_u64(const unsigned char* p) {
  return static_cast<std::uint64_t>(load_u32(p)) |
         (static_cast<std::uint64_t>(load_u32(p + 4)) << 32);
}
inline float load_f32(const unsigned char* p) {
  const std::uint32_t bits = load_u32(p);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

/// A read-only file descriptor, closed on destruction.
class File {
 public:
  File() = default;
  /// Opens a regular file (a directory, device or FIFO is an Error at once, nothing blocks).
  explicit File(const std::string& path) : path_(path) {
    fd_ = protomem::detail::open_regular_file(path, "RecordIO", &size_);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  File(File&& other) noexcept { swap(other); }
  File& operator=(File&& other) noexcept {
    File moved(std::move(other));
    swap(moved);
    return *this;
  }
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }

  std::uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  /// Reads exactly `n` bytes at `offset` into `out` (the caller checked the range).
  void read(std::uint64_t offset, void* out, std::size_t n) const {
    auto* to = static_cast<char*>(out);
    while (n > 0) {
      const ::ssize_t got = ::pread(fd_, to, n, static_cast<::off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        protomem::detail::fail(
            "reading ", protomem::detail::quoted_path(path_), " at byte ", offset,
            " failed: ", got < 0 ? std::strerror(errno) : "unexpected end of file");
      }
      to += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }

 private:
  void swap(File& other) noexcept {
    std::swap(fd_, other.fd_);
    std::swap(size_, other.size_);
    std::swap(path_, other.path_);
  }
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::string path_;
};

}  // namespace detail

/// One line of the .idx file.
struct RecordEntry {
  std::uint64_t key = 0;
  std::uint64_t offset = 0;
};

class RecordIOFile {
 public:
  /// Opens `rec_path` and its index `idx_path` and checks every .idx line (format, unique keys,
  /// offsets inside the .rec file). Records themselves are checked when read.
  RecordIOFile(const std::string& rec_path, const std::string& idx_path)
      : rec_(rec_path), idx_path_(idx_path) {
    std::istringstream in(protomem::detail::read_regular_file(idx_path, "RecordIO index"));
    const std::string idx = protomem::detail::escaped(idx_path, 1024);  // for "<idx>:<line>"
    std::string line;
    for (std::uint64_t number = 1; std::getline(in, line); ++number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      RecordEntry entry;
      if (!parse_idx_line(line, &entry)) {
        protomem::detail::fail(idx, ":", number, ": expected '<key>\\t<offset>' but found '",
                               protomem::detail::escaped(line), "'");
      }
      if (entry.offset >= rec_.size() || rec_.size() - entry.offset < 8) {
        protomem::detail::fail(idx, ":", number, ": record ", entry.key, " at offset ",
                               entry.offset, " is past the end of ",
                               protomem::detail::quoted_path(rec_path), " (", rec_.size(),
                               " bytes)");
      }
      if (!position_.emplace(entry.key, entries_.size()).second) {
        protomem::detail::fail(idx, ":", number, ": key ", entry.key, " appears twice");
      }
      entries_.push_back(entry);
    }
  }

  const std::string& rec_path() const { return rec_.path(); }
  const std::string& idx_path() const { return idx_path_; }
  /// The .idx lines in file order.
  const std::vector<RecordEntry>& entries() const { return entries_; }
  bool contains(std::uint64_t key) const { return position_.count(key) != 0; }
  const RecordEntry& entry(std::uint64_t key) const {
    const auto it = position_.find(key);
    if (it == position_.end()) {
      protomem::detail::fail(protomem::detail::quoted_path(idx_path_), " has no record with key ",
                             key);
    }
    return entries_[it->second];
  }

  /// The payload of the record with `key` (parts of a multi-part record joined).
  std::string read(std::uint64_t key) const { return read_at(entry(key)); }

  /// At most the first `n` bytes of the payload of the record at `entry.offset`, and its whole
  /// length, in `*length`. A single-part record is checked as read_at() checks it (magic, flag,
  /// length inside the file) but only `n` bytes are read; a split record is read whole.
  std::string read_prefix(const RecordEntry& entry, std::size_t n, std::uint64_t* length) const {
    if (rec_.size() < 8 || entry.offset > rec_.size() - 8) return whole(entry, n, length);
    unsigned char head[8];
    rec_.read(entry.offset, head, 8);
    const std::uint32_t lrecord = detail::load_u32(head + 4);
    const std::uint64_t size = lrecord & ((1U << 29U) - 1U);
    if (detail::load_u32(head) != kRecordMagic || (lrecord >> 29U) != 0 ||
        (size + 3U) / 4U * 4U > rec_.size() - entry.offset - 8) {
      return whole(entry, n, length);  // split or malformed: read_at() reads or names it
    }
    std::string prefix(static_cast<std::size_t>(std::min<std::uint64_t>(size, n)), '\0');
    if (!prefix.empty()) rec_.read(entry.offset + 8, &prefix[0], prefix.size());
    *length = size;
    return prefix;
  }

  /// The payload of the record at `entry.offset`; `entry.key` names it in errors.
  std::string read_at(const RecordEntry& entry) const {
    std::string payload;
    std::uint64_t offset = entry.offset;
    for (int part = 0;; ++part) {
      if (rec_.size() < 8 || offset > rec_.size() - 8) {
        bad(entry, offset,
            "its header runs past the end of the file (" + std::to_string(rec_.size()) + " bytes)");
      }
      unsigned char head[8];
      rec_.read(offset, head, 8);
      const std::uint32_t magic = detail::load_u32(head);
      if (magic != kRecordMagic) {
        bad(entry, offset, "bad magic number 0x" + hex(magic) + " (expected 0xced7230a)");
      }
      const std::uint32_t lrecord = detail::load_u32(head + 4);
      const std::uint32_t cflag = lrecord >> 29U;
      const std::uint64_t length = lrecord & ((1U << 29U) - 1U);
      const std::uint64_t padded = (length + 3U) / 4U * 4U;
      // A single record is cflag 0; a split one runs 1, 2, ..., 2, 3.
      if ((part == 0 && cflag != 0 && cflag != 1) || (part > 0 && cflag != 2 && cflag != 3)) {
        bad(entry, offset,
            "part " + std::to_string(part) + " has continuation flag " + std::to_string(cflag) +
                (part == 0 ? " (a record starts with 0 or 1)" : " (expected 2 or 3)"));
      }
      if (padded > rec_.size() - offset - 8) {
        bad(entry, offset,
            "length " + std::to_string(length) + " runs past the end of the file (" +
                std::to_string(rec_.size()) + " bytes)");
      }
      if (part > 0) payload.append(reinterpret_cast<const char*>(&magic_bytes()[0]), 4);
      const std::size_t at = payload.size();
      payload.resize(at + static_cast<std::size_t>(length));
      if (length > 0) rec_.read(offset + 8, &payload[at], static_cast<std::size_t>(length));
      offset += 8 + padded;
      if (cflag == 0 || cflag == 3) return payload;
    }
  }

 private:
  static bool parse_idx_line(const std::string& line, RecordEntry* out) {
    // "<key>\t<offset>": decimal, no sign, separated by a tab (spaces tolerated).
    std::size_t i = 0;
    const auto number = [&](std::uint64_t* value) {
      const std::size_t from = i;
      std::uint64_t v = 0;
      for (; i < line.size() && line[i] >= '0' && line[i] <= '9'; ++i) {
        const auto digit = static_cast<std::uint64_t>(line[i] - '0');
        if (v > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return false;
        v = v * 10 + digit;
      }
      *value = v;
      return i > from;
    };
    const auto blanks = [&] {
      const std::size_t from = i;
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      return i > from;
    };
    blanks();
    if (!number(&out->key) || !blanks() || !number(&out->offset)) return false;
    blanks();
    return i == line.size();
  }

  std::string whole(const RecordEntry& entry, std::size_t n, std::uint64_t* length) const {
    std::string payload = read_at(entry);
    *length = payload.size();
    if (payload.size() > n) payload.resize(n);
    return payload;
  }

  static const unsigned char* magic_bytes() {
    static constexpr unsigned char bytes[4] = {0x0a, 0x23, 0xd7, 0xce};
    return bytes;
  }
  static std::string hex(std::uint32_t v) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s(8, '0');
    for (int k = 7; k >= 0; --k, v >>= 4U) s[static_cast<std::size_t>(k)] = digits[v & 15U];
    return s;
  }
  [[noreturn]] void bad(const RecordEntry& entry, std::uint64_t at, const std::string& what) const {
    protomem::detail::fail(protomem::detail::quoted_path(rec_.path()), " record ", entry.key,
                           " (offset ", entry.offset,
                           at != entry.offset ? ", part at offset " + std::to_string(at) : "",
                           "): ", what);
  }

  detail::File rec_;
  std::string idx_path_;
  std::vector<RecordEntry> entries_;
  std::unordered_map<std::uint64_t, std::size_t> position_;
};

/// MXNet's IRHeader with its extra labels.
struct ImageRecordHeader {
  std::uint32_t flag = 0;
  float label = 0;
  std::uint64_t id = 0;
  std::uint64_t id2 = 0;
  std::vector<float> labels;  ///< the `flag` extra labels (empty when flag == 0)
};

/// Splits an image record's payload into its header and the encoded image, which starts at
/// `*image_offset` within `payload`. `where` names the record in errors.
inline ImageRecordHeader unpack_image_record(const std::string& payload, std::size_t* image_offset,
                                             const std::string& where) {
  const auto* p = reinterpret_cast<const unsigned char*>(payload.data());
  if (payload.size() < kImageHeaderSize) {
    protomem::detail::fail(where, ": payload of ", payload.size(),
                           " bytes is shorter than the 24-byte image header");
  }
  ImageRecordHeader h;
  h.flag = detail::load_u32(p);
  h.label = detail::load_f32(p + 4);
  h.id = detail::load_u64(p + 8);
  h.id2 = detail::load_u64(p + 16);
  const std::uint64_t extra = static_cast<std::uint64_t>(h.flag) * 4U;
  if (extra > payload.size() - kImageHeaderSize) {
    protomem::detail::fail(where, ": header announces ", h.flag, " extra labels (", extra,
                           " bytes) but only ", payload.size() - kImageHeaderSize,
                           " bytes follow the header");
  }
  h.labels.resize(h.flag);
  for (std::uint32_t k = 0; k < h.flag; ++k) {
    h.labels[k] = detail::load_f32(p + kImageHeaderSize + 4U * k);
  }
  *image_offset = kImageHeaderSize + static_cast<std::size_t>(extra);
  return h;
}

}  // namespace protomem::data
