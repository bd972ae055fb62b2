// Writes the fuzz targets' seed corpus from real saved state: checkpoints of memories of the
// targets' configurations after a few steps (empty, partly filled, full and evicting), sampler
// states at several positions, and data set lists. Each checkpoint and sampler seed is written
// twice, behind mode byte 0 (checksum as saved) and 1 (the target recomputes the checksum).
// With protomem::data: fuzz_image_data's seeds (small JPEGs and PNGs, gray and RGB, baseline and
// progressive, alone and in a whole .rec file) and, given a regressions directory, the decoder's
// bombs (tests/support/image_bombs.hpp) as regression inputs.
//
//   fuzz_make_seeds <corpus directory> [<regressions directory>]
//       (writes <dir>/<target>/seed-*, <regressions>/fuzz_image_data/bomb-*)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <protomem/data/dataset_index.hpp>
#include <protomem/memory.hpp>
#include <protomem/data/sampler.hpp>
#include <sstream>
#include <string>
#include <vector>

#if PROTOMEM_SEEDS_WITH_DATA
#include <png.h>

#include "support/image_bombs.hpp"
#endif

namespace {

namespace fs = std::filesystem;

void write(const fs::path& file, const std::string& bytes) {
  fs::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

void write_both_modes(const fs::path& dir, const std::string& name, const std::string& bytes) {
  write(dir / (name + "-m0"), std::string(1, '\0') + bytes);
  write(dir / (name + "-m1"), std::string(1, '\1') + bytes);
}

// Steps of 3 classes x 2 exemplars (dim 4) with labels drawn from `classes` labels.
template <class Memory>
void feed(Memory& memory, int steps, int classes, std::uint64_t seed) {
  std::uint64_t state = seed;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
  };
  for (int s = 0; s < steps; ++s) {
    std::vector<protomem::label_t> labels;
    while (labels.size() < 6) {
      const auto l = static_cast<protomem::label_t>(next() % static_cast<std::uint64_t>(classes));
      bool taken = false;
      for (auto x : labels) taken = taken || x == l;
      if (!taken) labels.insert(labels.end(), {l, l});
    }
    std::vector<float> e(24), g(24);
    for (float& v : e) v = static_cast<float>(next() % 1000) / 500.0f - 1.0f + 0.01f;
    memory.step(protomem::matrix_view<const float>(e.data(), 6, 4),
                protomem::label_view(labels.data(), 6),
                protomem::matrix_view<float>(g.data(), 6, 4));
  }
}

template <class Memory>
std::string bytes_of(const Memory& memory) {
  std::ostringstream out;
  memory.save(out);
  return out.str();
}

#if PROTOMEM_SEEDS_WITH_DATA
std::string encode_jpeg(int w, int h, int channels, bool progressive) {
  std::vector<unsigned char> pixels(static_cast<std::size_t>(w * h * channels));
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 29);
  return protomem_test::encode_jpeg(pixels, w, h, channels, 75, progressive, true);
}

std::string encode_png(int w, int h, int channels) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(w);
  image.height = static_cast<png_uint_32>(h);
  image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  std::vector<unsigned char> pixels(static_cast<std::size_t>(w * h * channels));
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 37);
  png_alloc_size_t size = 0;
  png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr);
  std::string out(size, '\0');
  png_image_write_to_memory(&image, &out[0], &size, 0, pixels.data(), 0, nullptr);
  out.resize(size);
  return out;
}

// fuzz_image_data's .rec layout (mode 0): records framed whole, no .idx (the target indexes the
// magic numbers it finds).
void add_record(std::string& rec, std::uint32_t flag, const std::vector<float>& labels,
                const std::string& image) {
  std::string payload;
  auto u32 = [&](std::uint32_t v) {  // little-endian, as RecordIO's fields
    for (int k = 0; k < 4; ++k) payload += static_cast<char>((v >> (8 * k)) & 0xffU);
  };
  auto f32 = [&](float f) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    u32(bits);
  };
  u32(flag);
  f32(flag ? 0.0f : labels.at(0));
  payload.append(16, '\0');
  if (flag) {
    for (float f : labels) f32(f);
  }
  payload += image;
  const std::string image_payload = payload;
  payload.clear();
  u32(0xced7230aU);
  u32(static_cast<std::uint32_t>(image_payload.size()));
  rec += payload + image_payload + std::string((4 - image_payload.size() % 4) % 4, '\0');
}

void image_seeds(const fs::path& root, const fs::path& regressions) {
  const fs::path dir = root / "fuzz_image_data";
  const std::string gray = encode_jpeg(8, 8, 1, false), rgb = encode_jpeg(12, 10, 3, false);
  const std::string progressive = encode_jpeg(16, 16, 3, true);
  const std::string png_gray = encode_png(8, 8, 1), png_rgb = encode_png(9, 7, 3);
  // Mode 1 (one image, gray out) and 3 (RGB out).
  write(dir / "seed-jpeg-gray-m1", "\1" + gray);
  write(dir / "seed-jpeg-rgb-m3", "\3" + rgb);
  write(dir / "seed-jpeg-progressive-m3", "\3" + progressive);
  write(dir / "seed-png-gray-m1", "\1" + png_gray);
  write(dir / "seed-png-rgb-m3", "\3" + png_rgb);
  // Mode 0 / 4: a whole .rec, insightface's layout (header record, images 1 .. 3).
  std::string rec;
  add_record(rec, 2, {4.0f, 5.0f}, "");
  add_record(rec, 0, {0.0f}, gray);
  add_record(rec, 1, {1.0f}, png_gray);
  add_record(rec, 0, {2.0f}, progressive);
  add_record(rec, 2, {1.0f, 2.0f}, "");
  write(dir / "seed-rec-m0", std::string(1, '\0') + rec);
  write(dir / "seed-rec-skip-m4", "\4" + rec);
  if (regressions.empty()) return;
  // The bombs of issue 23, as the target frames them (mode 1 / 3).
  const fs::path bombs = regressions / "fuzz_image_data";
  write(bombs / "bomb-jpeg-65000x65000-rgb", "\3" + protomem_test::jpeg_claiming(65000, 65000, 3));
  write(bombs / "bomb-jpeg-65000x65000-gray", "\1" + protomem_test::jpeg_claiming(65000, 65000, 1));
  write(bombs / "bomb-png-65000x65000", "\1" + protomem_test::png_claiming(65000, 65000));
  write(bombs / "bomb-jpeg-101-scans", "\1" + protomem_test::jpeg_with_scans(101));
  write(bombs / "bomb-jpeg-1000-scans", "\3" + protomem_test::jpeg_with_scans(1000));
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: fuzz_make_seeds <corpus directory> [<regressions directory>]\n");
    return 2;
  }
  const fs::path root(argv[1]);
#if PROTOMEM_SEEDS_WITH_DATA
  image_seeds(root, argc == 3 ? fs::path(argv[2]) : fs::path());
#endif
  {
    using Memory = protomem::PrototypeMemory<float>;
    for (int steps : {0, 1, 3, 12}) {
      Memory memory({8, 4}, protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
                    protomem::Momentum(0.3));
      feed(memory, steps, 20, 11 + static_cast<std::uint64_t>(steps));
      write_both_modes(root / "fuzz_checkpoint", "seed-steps" + std::to_string(steps),
                       bytes_of(memory));
    }
  }
  {
    using Memory = protomem::PrototypeMemory<float>;
    for (int steps : {0, 2, 12}) {
      Memory memory({8, 4}, protomem::CosFace(), protomem::ExemplarMean(), protomem::Replace(),
                    protomem::LeastRecentlyWritten(), protomem::DoppelgangerMining(3, 6));
      feed(memory, steps, 12, 29 + static_cast<std::uint64_t>(steps));
      write_both_modes(root / "fuzz_checkpoint_mining", "seed-steps" + std::to_string(steps),
                       bytes_of(memory));
    }
  }
  {
    // The data set of fuzz_sampler_state.cpp.
    std::vector<protomem::label_t> labels;
    for (protomem::label_t i = 0; i < 37; ++i) labels.push_back((i * 7) % 10 + (i % 3) * 100);
    const auto index = protomem::DatasetIndex::from_labels(labels);
    for (std::uint64_t batches : {0, 1, 9}) {
      protomem::IterateAndSample sampler(index, {4, 2, 7 + batches, 0.25});
      for (std::uint64_t b = 0; b < batches; ++b) sampler.next();
      std::ostringstream out;
      sampler.save(out);
      write_both_modes(root / "fuzz_sampler_state", "seed-batches" + std::to_string(batches),
                       out.str());
    }
  }
  {
    const fs::path dir = root / "fuzz_dataset_list";
    write(dir / "seed-plain", "a/0001.jpg 0\na/0002.jpg 0\nb/0001.jpg 1\nc/x.png 7\n");
    write(dir / "seed-comments-crlf",
          "# images\r\n\r\n  dir with space/img 1.jpg\t3\r\n   # indented comment\r\nz 3\r\n");
    write(dir / "seed-errors", "only-one-field\nx -1\ny 12a\nw 99999999999999999999\n");
  }
  std::printf("seeds written under %s\n", root.c_str());
  return 0;
}
