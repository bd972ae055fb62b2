// Fuzz target: the image data path as a trainer reads a face set - a RecordIO pair opened by
// RecordIOSource (protomem/data/sources.hpp), every image record's bytes read and decoded by
// decode_image (protomem/data/decode.hpp) within DecodeLimits, resized to 16 x 16.
// Input: byte 0 is a mode. Bit 0 set: the rest is one image, framed here into a valid .rec/.idx
// pair (a header record, then the image record), so that mutations reach the decoders. Clear: the
// rest is the .rec file itself, and its .idx lists every 4-aligned offset where the record magic
// appears, as a writer's index would. Bit 1: 3 channels, else 1. Bit 2: skip_corrupt.
// The files live in memory (memfd), opened by the reader through /proc/self/fd like any path.
// Limits: max_pixels 2^20 (so that an input that decodes a large image costs milliseconds, not
// the default 2^24's 48 MB), max_jpeg_scans at its default; libFuzzer's -rss_limit_mb and -timeout
// (scripts/fuzz) catch what the limits miss.
// Expected: success or protomem::Error, never another exception; a decoded image is 16 x 16.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <protomem/data.hpp>
#include <string>

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what);
  std::abort();
}

struct MemoryFile {
  int fd;
  std::string path;
  explicit MemoryFile(const char* name) : fd(::memfd_create(name, MFD_CLOEXEC)) {
    if (fd < 0) finding("memfd_create failed (not a finding of the target: the harness)");
    path = "/proc/self/fd/" + std::to_string(fd);
  }
  void set(const std::string& bytes) const {
    if (::ftruncate(fd, 0) != 0 ||
        ::pwrite(fd, bytes.data(), bytes.size(), 0) != static_cast<::ssize_t>(bytes.size())) {
      finding("writing the memory file failed (the harness)");
    }
  }
};

void put_u32(std::string& s, std::uint32_t v) {
  for (int k = 0; k < 4; ++k) s += static_cast<char>((v >> (8 * k)) & 0xffU);
}

// One record: magic, length (cflag 0), payload, padding (a payload holding the magic at a 4-byte
// aligned offset is framed as one record anyway: the reader then finds a broken frame, an Error).
void add_record(std::string& rec, std::string& idx, std::uint64_t key, const std::string& payload) {
  idx += std::to_string(key) + "\t" + std::to_string(rec.size()) + "\n";
  put_u32(rec, protomem::data::kRecordMagic);
  put_u32(rec, static_cast<std::uint32_t>(payload.size()) & ((1U << 29U) - 1U));
  rec += payload;
  rec.append((4 - payload.size() % 4) % 4, '\0');
}

std::string image_record(float label, const std::string& image) {
  std::string p;
  put_u32(p, 0);  // flag 0: `label` is the label
  std::uint32_t bits;
  std::memcpy(&bits, &label, 4);
  put_u32(p, bits);
  p.append(16, '\0');  // id, id2
  return p + image;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const MemoryFile rec_file("fuzz.rec"), idx_file("fuzz.idx");
  if (size < 1) return 0;
  const unsigned mode = data[0];
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string rec, idx;
  if (mode & 1U) {
    std::string header;  // insightface's header record: images are records 1 .. 1
    put_u32(header, 2);
    header.append(20, '\0');
    const float labels[2] = {2.0f, 3.0f};
    header.append(reinterpret_cast<const char*>(labels), 8);
    add_record(rec, idx, 0, header);
    add_record(rec, idx, 1, image_record(5.0f, body));
  } else {
    rec = body;
    std::uint64_t key = 0;
    for (std::size_t at = 0; at + 4 <= rec.size(); at += 4) {
      std::uint32_t word = 0;
      for (int k = 0; k < 4; ++k) {
        word |= std::uint32_t{static_cast<unsigned char>(rec[at + static_cast<std::size_t>(k)])}
                << (8 * k);
      }
      if (word == protomem::data::kRecordMagic) {
        idx += std::to_string(key++) + "\t" + std::to_string(at) + "\n";
      }
    }
  }
  rec_file.set(rec);
  idx_file.set(idx);
  const int channels = (mode & 2U) ? 3 : 1;
  protomem::data::SourceOptions options;
  options.skip_corrupt = (mode & 4U) != 0;
  protomem::data::DecodeLimits limits;
  limits.max_pixels = 1 << 20;
  try {
    protomem::data::RecordIOSource source(rec_file.path, idx_file.path, options);
    for (protomem::index_t i = 0; i < source.size() && i < 16; ++i) {
      try {
        const std::string bytes = source.bytes(i);
        const protomem::data::Image image = protomem::data::decode_image(
            reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
            protomem::data::ImageSize{16, 16, channels}, source.describe(i), limits);
        if (image.width != 16 || image.height != 16 || image.channels != channels ||
            image.pixels.size() != std::size_t{16} * 16 * static_cast<std::size_t>(channels)) {
          finding("a decoded image is not of the size asked for");
        }
      } catch (const protomem::Error&) {
      }
    }
  } catch (const protomem::Error&) {
  }
  return 0;
}
