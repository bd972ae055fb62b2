// The image data reader (protomem/data.hpp): RecordIO files written here byte for byte from the
// format's description, read back with labels and pixels exact; JPEG against a direct libjpeg
// decode; every malformed input named; skip-corrupt counting; the loader's determinism.
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>  // after <cstdio>: it needs FILE and size_t
// clang-format on
#include <png.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <protomem/data.hpp>
#include <protomem/data/sampler.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/child.hpp"
#include "support/image_bombs.hpp"

namespace fs = std::filesystem;
using protomem::Error;
using protomem::index_t;
using protomem::label_t;
using namespace protomem::data;
using Catch::Matchers::Contains;

namespace {

// ---- encoders, written against libpng/libjpeg directly ---------------------------------------

std::string encode_png(const std::vector<std::uint8_t>& pixels, int w, int h, int channels) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(w);
  image.height = static_cast<png_uint_32>(h);
  image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  REQUIRE(png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr));
  std::string out(size, '\0');
  REQUIRE(png_image_write_to_memory(&image, out.data(), &size, 0, pixels.data(), 0, nullptr));
  out.resize(size);
  return out;
}

std::string encode_jpeg(const std::vector<std::uint8_t>& pixels, int w, int h, int channels) {
  return protomem_test::encode_jpeg(pixels, w, h, channels, 90);
}

// libjpeg's own decode of valid data (the default error handler is fine for these).
std::vector<std::uint8_t> libjpeg_decode(const std::string& bytes, int channels) {
  jpeg_decompress_struct info;
  jpeg_error_mgr error;
  info.err = jpeg_std_error(&error);
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&info, TRUE);
  info.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&info);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(info.output_width) * info.output_height *
                                channels);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row =
        out.data() + static_cast<std::size_t>(info.output_scanline) * info.output_width * channels;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return out;
}

// ---- a RecordIO writer from the format's description -----------------------------------------

void put_u32(std::string* s, std::uint32_t v) {
  for (int k = 0; k < 4; ++k) s->push_back(static_cast<char>((v >> (8 * k)) & 0xffU));
}
void put_u64(std::string* s, std::uint64_t v) {
  put_u32(s, static_cast<std::uint32_t>(v));
  put_u32(s, static_cast<std::uint32_t>(v >> 32));
}
void put_f32(std::string* s, float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  put_u32(s, bits);
}
void put_bits(std::string* s, std::uint32_t bits) { put_u32(s, bits); }

/// IRHeader {flag, label, id, id2}, the extra labels, then the image bytes.
std::string image_payload(float label, const std::vector<float>& extra, std::uint64_t id,
                          const std::string& image) {
  std::string p;
  put_u32(&p, static_cast<std::uint32_t>(extra.size()));
  put_f32(&p, label);
  put_u64(&p, id);
  put_u64(&p, 0);
  for (float f : extra) put_f32(&p, f);
  return p + image;
}

struct Writer {
  std::string rec;
  std::string idx;
  /// Appends one record (split where the magic appears 4-byte aligned in the payload) and its
  /// .idx line.
  void add(std::uint64_t key, const std::string& payload) {
    idx += std::to_string(key) + "\t" + std::to_string(rec.size()) + "\n";
    const std::string magic("\x0a\x23\xd7\xce", 4);
    std::size_t from = 0;
    for (std::size_t i = 0; i + 4 <= payload.size() / 4 * 4; i += 4) {
      if (payload.compare(i, 4, magic) == 0) {
        put_u32(&rec, 0xced7230aU);
        put_u32(&rec, ((from == 0 ? 1U : 2U) << 29U) | static_cast<std::uint32_t>(i - from));
        rec += payload.substr(from, i - from);
        from = i + 4;
      }
    }
    const auto length = static_cast<std::uint32_t>(payload.size() - from);
    put_u32(&rec, 0xced7230aU);
    put_u32(&rec, ((from == 0 ? 0U : 3U) << 29U) | length);
    rec += payload.substr(from);
    rec.append((4 - length % 4) % 4, '\0');
  }
  void save(const fs::path& stem) const {
    std::ofstream(stem.string() + ".rec", std::ios::binary) << rec;
    std::ofstream(stem.string() + ".idx", std::ios::binary) << idx;
  }
};

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("protomem_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<std::uint8_t> random_pixels(std::mt19937& rng, std::size_t n) {
  std::vector<std::uint8_t> p(n);
  for (auto& v : p) v = static_cast<std::uint8_t>(rng() & 0xffU);
  return p;
}

// A set in insightface's layout: header record 0, `n` PNG image records 1..n, identity records.
struct Set {
  std::vector<label_t> labels;
  std::vector<std::vector<std::uint8_t>> pixels;
  Writer writer;
};
Set insightface_set(int n, int w, int h, int identities) {
  std::mt19937 rng(7);
  Set set;
  const int first_identity = n + 1;
  set.writer.add(
      0, image_payload(0, {float(first_identity), float(first_identity + identities)}, 0, ""));
  for (int i = 1; i <= n; ++i) {
    const label_t label = (i - 1) % identities;
    set.labels.push_back(label);
    set.pixels.push_back(random_pixels(rng, static_cast<std::size_t>(w) * h));
    const std::string png = encode_png(set.pixels.back(), w, h, 1);
    // Odd records carry their label as an extra label; record 3's second extra label is the magic
    // number, so its payload is split into parts.
    std::vector<float> extra;
    if (i % 2 == 1) extra = {float(label), 1.0f};
    std::string payload = image_payload(i % 2 == 1 ? 99.0f : float(label), extra, i, png);
    if (i == 3) {
      std::string bits;
      put_bits(&bits, 0xced7230aU);
      payload.replace(28, 4, bits);
    }
    set.writer.add(static_cast<std::uint64_t>(i), payload);
  }
  for (int c = 0; c < identities; ++c) {
    set.writer.add(static_cast<std::uint64_t>(first_identity + c),
                   image_payload(0, {1.0f, 2.0f}, 0, ""));
  }
  return set;
}

std::vector<std::uint8_t> decode_sample(const ImageSource& source, index_t i, ImageSize size) {
  const std::string bytes = source.bytes(i);
  return decode_image(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), size,
                      source.describe(i))
      .pixels;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("an insightface RecordIO pair reads back with labels and pixels exact") {
  TempDir dir;
  Set set = insightface_set(12, 9, 7, 4);
  set.writer.save(dir.path / "train");
  // The writer really split record 3 (the test covers multi-part records).
  REQUIRE(set.writer.rec.find(std::string("\x0a\x23\xd7\xce", 4) +
                              std::string("\x1c\x00\x00\x20", 4)) != std::string::npos);

  RecordIOSource source((dir.path / "train.rec").string());
  REQUIRE(source.size() == 12);
  CHECK(source.skipped() == 0);
  for (index_t i = 0; i < 12; ++i) {
    CHECK(source.key(i) == static_cast<std::uint64_t>(i + 1));
    CHECK(source.label(i) == set.labels[static_cast<std::size_t>(i)]);
    CHECK(decode_sample(source, i, {9, 7, 1}) == set.pixels[static_cast<std::size_t>(i)]);
  }
  CHECK(source.index().num_classes() == 4);
  // The split record's payload comes back whole, the magic number in its place.
  std::size_t image = 0;
  const auto header = unpack_image_record(source.file().read(3), &image, "record 3");
  REQUIRE(header.flag == 2);
  CHECK(header.labels[0] == 2.0f);
  std::uint32_t bits;
  std::memcpy(&bits, &header.labels[1], 4);
  CHECK(bits == 0xced7230aU);
  CHECK(header.id == 3);
}

TEST_CASE("without a header record every .idx entry is an image, in .idx order") {
  TempDir dir;
  std::mt19937 rng(3);
  Writer w;
  std::vector<std::vector<std::uint8_t>> pixels;
  const std::uint64_t keys[] = {10, 4, 7};
  for (int i = 0; i < 3; ++i) {
    pixels.push_back(random_pixels(rng, 5 * 5 * 3));
    w.add(keys[i], image_payload(float(20 + i), {}, 0, encode_png(pixels.back(), 5, 5, 3)));
  }
  w.save(dir.path / "plain");
  RecordIOSource source((dir.path / "plain.rec").string());
  REQUIRE(source.size() == 3);
  for (index_t i = 0; i < 3; ++i) {
    CHECK(source.key(i) == keys[i]);
    CHECK(source.label(i) == 20 + i);
    CHECK(decode_sample(source, i, {5, 5, 3}) == pixels[static_cast<std::size_t>(i)]);
  }
}

TEST_CASE("records with many extra labels: the label is the first, the image follows them") {
  TempDir dir;
  std::mt19937 rng(4);
  const auto pixels = random_pixels(rng, 5 * 5);
  std::vector<float> extra(40, 0.5f);
  extra[0] = 17.0f;
  Writer w;
  w.add(1, image_payload(3.0f, extra, 0, encode_png(pixels, 5, 5, 1)));
  w.add(2, image_payload(4.0f, {}, 0, encode_png(pixels, 5, 5, 1)));
  w.add(3, image_payload(5.0f, extra, 0, ""));  // no image: named at open
  w.save(dir.path / "many");
  const std::string rec = (dir.path / "many.rec").string();
  CHECK_THAT(error_of([&] { RecordIOSource s(rec); }),
             Contains("record 3") && Contains("holds no image bytes"));
  RecordIOSource source(rec, "", SourceOptions{true});
  CHECK(source.skipped() == 1);
  REQUIRE(source.size() == 2);
  CHECK(source.label(0) == 17);
  CHECK(source.label(1) == 4);
  CHECK(decode_sample(source, 0, {5, 5, 1}) == pixels);
}

TEST_CASE("JPEG records decode as libjpeg decodes them, gray and RGB") {
  TempDir dir;
  std::mt19937 rng(5);
  Writer w;
  std::vector<std::string> jpegs;
  for (int i = 0; i < 4; ++i) {
    const int channels = i % 2 == 0 ? 1 : 3;
    // Smooth content so that JPEG keeps it recognisable; the comparison is exact either way.
    std::vector<std::uint8_t> p(16 * 12 * channels);
    for (std::size_t k = 0; k < p.size(); ++k)
      p[k] = static_cast<std::uint8_t>((k * 7 + rng() % 5) & 0xff);
    jpegs.push_back(encode_jpeg(p, 16, 12, channels));
    w.add(static_cast<std::uint64_t>(i), image_payload(float(i), {}, 0, jpegs.back()));
  }
  w.save(dir.path / "jpeg");
  RecordIOSource source((dir.path / "jpeg.rec").string());
  for (index_t i = 0; i < 4; ++i) {
    for (int channels : {1, 3}) {
      CHECK(decode_sample(source, i, {16, 12, channels}) ==
            libjpeg_decode(jpegs[static_cast<std::size_t>(i)], channels));
    }
  }
}

TEST_CASE("malformed RecordIO input throws an Error naming the file and the record") {
  TempDir dir;
  Set set = insightface_set(6, 4, 4, 2);
  const std::string rec = set.writer.rec;
  const std::string idx = set.writer.idx;
  // Offsets of records 0..6 from the .idx text.
  std::vector<std::size_t> offset;
  {
    std::istringstream in(idx);
    std::uint64_t key, off;
    while (in >> key >> off) offset.push_back(off);
  }
  const auto open_with = [&](const std::string& r, const std::string& i) {
    std::ofstream(dir.path / "bad.rec", std::ios::binary) << r;
    std::ofstream(dir.path / "bad.idx", std::ios::binary) << i;
    return error_of([&] { RecordIOSource s((dir.path / "bad.rec").string()); });
  };
  const std::string rec_name = (dir.path / "bad.rec").string();
  const std::string idx_name = (dir.path / "bad.idx").string();
  const std::string next_line = ":" + std::to_string(offset.size() + 1) + ":";

  SECTION("bad magic") {
    std::string r = rec;
    r[offset[2]] ^= 0x01;
    const std::string e = open_with(r, idx);
    CHECK_THAT(e, Contains(rec_name) && Contains("record 2 (offset " + std::to_string(offset[2])) &&
                      Contains("bad magic number 0xced7230b"));
  }
  SECTION("a record truncated by the end of the file") {
    // Records 0..6 only (images end at 6; the identity records are not needed).
    const std::string first_lines = idx.substr(0, idx.find("7\t"));
    const std::string e = open_with(rec.substr(0, offset[6] + 20), first_lines);
    CHECK_THAT(e, Contains(rec_name) && Contains("record 6") && Contains("past the end"));
  }
  SECTION("a length past the end of the file") {
    std::string r = rec;
    r[offset[4] + 7] = 0x1f;  // length bits 24..28 set: ~500 MB
    const std::string e = open_with(r, idx);
    CHECK_THAT(e, Contains("record 4 (offset " + std::to_string(offset[4])) &&
                      Contains("runs past the end of the file"));
  }
  SECTION("a continuation flag out of place") {
    std::string r = rec;
    r[offset[5] + 7] = static_cast<char>(0x40);  // cflag 2 on a record's first part
    CHECK_THAT(open_with(r, idx), Contains("record 5") && Contains("continuation flag 2"));
  }
  SECTION("an .idx offset past the end") {
    const std::string i = idx + "99\t" + std::to_string(rec.size() + 4) + "\n";
    CHECK_THAT(open_with(rec, i),
               Contains(idx_name + next_line) && Contains("record 99") && Contains("past the end"));
  }
  SECTION("a malformed .idx line") {
    CHECK_THAT(open_with(rec, idx + "12 x4\n"), Contains(idx_name + next_line) &&
                                                    Contains("expected '<key>\\t<offset>'") &&
                                                    Contains("'12 x4'"));
    CHECK_THAT(open_with(rec, idx + "-1\t0\n"), Contains(idx_name + next_line));
    CHECK_THAT(open_with(rec, idx + "5\t0\n"),
               Contains(idx_name + next_line + " key 5 appears twice"));
  }
  SECTION("a payload shorter than its header") {
    Writer w;
    w.add(0, std::string(10, 'x'));
    w.save(dir.path / "short");
    CHECK_THAT(error_of([&] { RecordIOSource s((dir.path / "short.rec").string()); }),
               Contains("record 0") && Contains("shorter than the 24-byte image header"));
  }
  SECTION("a label that is not a non-negative integer") {
    Writer w;
    w.add(0, image_payload(2.5f, {}, 0, "abc"));
    w.save(dir.path / "label");
    CHECK_THAT(error_of([&] { RecordIOSource s((dir.path / "label.rec").string()); }),
               Contains("record 0") && Contains("label 2.5 is not a non-negative integer"));
  }
  SECTION("a missing .idx file") {
    std::ofstream(dir.path / "alone.rec", std::ios::binary) << rec;
    CHECK_THAT(error_of([&] { RecordIOSource s((dir.path / "alone.rec").string()); }),
               Contains("RecordIO index: cannot open") && Contains("alone.idx"));
  }
}

TEST_CASE("undecodable images throw an Error naming the file and the record") {
  TempDir dir;
  std::mt19937 rng(9);
  const auto pixels = random_pixels(rng, 8 * 8);
  const std::string png = encode_png(pixels, 8, 8, 1);
  std::vector<std::uint8_t> smooth(8 * 8, 100);
  const std::string jpeg = encode_jpeg(smooth, 8, 8, 1);
  Writer w;
  w.add(0, image_payload(0, {}, 0, "not an image at all"));
  w.add(1, image_payload(0, {}, 0, png.substr(0, png.size() / 2)));    // truncated PNG
  w.add(2, image_payload(0, {}, 0, jpeg.substr(0, jpeg.size() / 2)));  // truncated JPEG
  std::string broken = png;
  broken[20] ^= 0x55;  // IHDR corrupt: CRC mismatch
  w.add(3, image_payload(0, {}, 0, broken));
  w.save(dir.path / "undecodable");
  RecordIOSource source((dir.path / "undecodable.rec").string());
  const std::string rec = (dir.path / "undecodable.rec").string();
  CHECK_THAT(error_of([&] {
               decode_sample(source, 0, {8, 8, 1});
             }),
             Contains(rec) && Contains("record 0 (offset 0)") && Contains("not a JPEG or PNG"));
  CHECK_THAT(error_of([&] {
               decode_sample(source, 1, {8, 8, 1});
             }),
             Contains("record 1") && Contains("cannot decode PNG"));
  CHECK_THAT(error_of([&] {
               decode_sample(source, 2, {8, 8, 1});
             }),
             Contains("record 2") && Contains("cannot decode JPEG"));
  CHECK_THAT(error_of([&] {
               decode_sample(source, 3, {8, 8, 1});
             }),
             Contains("record 3") && Contains("cannot decode PNG"));
}

TEST_CASE("skip_corrupt leaves malformed records out and counts them") {
  TempDir dir;
  Set set = insightface_set(8, 4, 4, 2);
  std::vector<std::size_t> offset;
  {
    std::istringstream in(set.writer.idx);
    std::uint64_t key, off;
    while (in >> key >> off) offset.push_back(off);
  }
  std::string r = set.writer.rec;
  r[offset[2]] ^= 0x10;     // bad magic: record 2
  r[offset[5] + 7] = 0x1f;  // length past the end: record 5
  std::ofstream(dir.path / "c.rec", std::ios::binary) << r;
  std::ofstream(dir.path / "c.idx", std::ios::binary) << set.writer.idx;
  const std::string rec = (dir.path / "c.rec").string();
  CHECK_THROWS_AS(RecordIOSource(rec), Error);
  RecordIOSource source(rec, "", SourceOptions{true});
  CHECK(source.skipped() == 2);
  REQUIRE(source.size() == 6);
  const std::uint64_t kept[] = {1, 3, 4, 6, 7, 8};
  for (index_t i = 0; i < 6; ++i) {
    CHECK(source.key(i) == kept[i]);
    CHECK(decode_sample(source, i, {4, 4, 1}) == set.pixels[kept[i] - 1]);
  }
}

TEST_CASE("list files and image folders read the same images") {
  TempDir dir;
  std::mt19937 rng(11);
  fs::create_directories(dir.path / "folder" / "b");
  fs::create_directories(dir.path / "folder" / "a");
  std::vector<std::vector<std::uint8_t>> pixels;
  std::string list = "# path label\n";
  const char* files[] = {"a/1.png", "a/2.PNG", "b/1.png"};
  const label_t labels[] = {0, 0, 1};
  for (int i = 0; i < 3; ++i) {
    pixels.push_back(random_pixels(rng, 6 * 6));
    std::ofstream(dir.path / "folder" / files[i], std::ios::binary)
        << encode_png(pixels.back(), 6, 6, 1);
    list += std::string("folder/") + files[i] + " " + std::to_string(labels[i] + 5) + "\n";
  }
  std::ofstream(dir.path / "folder" / "a" / "notes.txt") << "not an image";
  std::ofstream(dir.path / "list.txt") << list;

  ListSource from_list((dir.path / "list.txt").string());
  FolderSource from_folder((dir.path / "folder").string());
  REQUIRE(from_list.size() == 3);
  REQUIRE(from_folder.size() == 3);
  for (index_t i = 0; i < 3; ++i) {
    CHECK(from_list.label(i) == labels[i] + 5);
    CHECK(from_folder.label(i) == labels[i]);
    CHECK(decode_sample(from_list, i, {6, 6, 1}) == pixels[static_cast<std::size_t>(i)]);
    CHECK(decode_sample(from_folder, i, {6, 6, 1}) == pixels[static_cast<std::size_t>(i)]);
  }
  CHECK(from_folder.identity_name(1) == "b");
  CHECK(dynamic_cast<FolderSource*>(open_image_source((dir.path / "folder").string()).get()));
  CHECK(dynamic_cast<ListSource*>(open_image_source((dir.path / "list.txt").string()).get()));

  SECTION("a missing list-file image names the file and the line's sample") {
    std::ofstream(dir.path / "missing.txt") << list << "folder/a/gone.png 5\n";
    ListSource source((dir.path / "missing.txt").string());
    CHECK_THAT(error_of([&] { source.bytes(3); }),
               Contains("gone.png") && Contains("sample 3 of list") && Contains("cannot open"));
  }
}

TEST_CASE("resize: same size is exact, a flat image stays flat, shrinking averages") {
  Image flat{10, 6, 1, std::vector<std::uint8_t>(60, 77)};
  const Image small = resize_image(flat, 3, 4);
  CHECK(small.pixels == std::vector<std::uint8_t>(12, 77));
  Image ramp{4, 1, 1, {0, 100, 200, 250}};
  CHECK(resize_image(ramp, 4, 1).pixels == ramp.pixels);
  // 4 -> 2: each output averages its half with triangle weights over 4 source pixels:
  // out[0] centre 1.0: taps j=0,1,2 at distances 0.5, 0.5, 1.5 (x/2: .25, .25, .75) ->
  // weights .75, .75, .25 normalised: (0*.75 + 100*.75 + 200*.25) / 1.75 = 71.43 -> 71.
  // out[1] centre 3.0: j=1,2,3 at 1.5, .5, .5 -> (100*.25 + 200*.75 + 250*.75) / 1.75 = 207.1 ->
  // 207.
  CHECK(resize_image(ramp, 2, 1).pixels == std::vector<std::uint8_t>{71, 207});
}

TEST_CASE("the loader's batches do not depend on its thread count or prefetch depth") {
  TempDir dir;
  Set set = insightface_set(40, 8, 8, 10);
  set.writer.save(dir.path / "train");
  RecordIOSource source((dir.path / "train.rec").string());
  const auto run = [&](int threads, int prefetch, int batches) {
    protomem::IterateAndSample sampler(source.index(), {4, 3, 42});
    ImageLoader loader(source, [&] { return sampler.next().samples; },
                       {{6, 5, 1}, threads, prefetch, false});
    std::vector<ImageBatch> out;
    for (int b = 0; b < batches; ++b) out.push_back(loader.next());
    return out;
  };
  const auto reference = run(0, 1, 12);
  // An independent check of batch contents: the sampler's ids, each decoded on its own.
  protomem::IterateAndSample sampler(source.index(), {4, 3, 42});
  for (const auto& batch : reference) {
    CHECK(batch.samples == sampler.next().samples);
    for (std::size_t i = 0; i < batch.samples.size(); ++i) {
      const auto one = decode_sample(source, batch.samples[i], {6, 5, 1});
      CHECK(std::equal(one.begin(), one.end(), batch.pixels.begin() + i * 30));
      CHECK(batch.labels[i] == source.label(batch.samples[i]));
    }
  }
  for (int threads : {1, 2, 4, 7}) {
    for (int prefetch : {1, 3}) {
      const auto got = run(threads, prefetch, 12);
      for (std::size_t b = 0; b < got.size(); ++b) {
        CHECK(got[b].number == b);
        CHECK(got[b].samples == reference[b].samples);
        CHECK(got[b].pixels == reference[b].pixels);
      }
    }
  }
  // Destroying a loader with batches still in flight stops its workers cleanly.
  {
    ImageLoader loader(source,
                       [&] {
                         return std::vector<index_t>{0, 1};
                       },
                       {{6, 5, 1}, 3, 4, false});
  }
}

TEST_CASE("the loader reports an undecodable sample at its batch, or substitutes it") {
  TempDir dir;
  std::mt19937 rng(13);
  Writer w;
  std::vector<std::vector<std::uint8_t>> pixels;
  for (int i = 0; i < 6; ++i) {
    pixels.push_back(random_pixels(rng, 4 * 4));
    const std::string png = encode_png(pixels.back(), 4, 4, 1);
    // Samples 0..2 are label 0, 3..5 label 1; sample 1 is corrupt.
    w.add(static_cast<std::uint64_t>(i),
          image_payload(float(i / 3), {}, 0, i == 1 ? png.substr(0, 20) : png));
  }
  w.save(dir.path / "t");
  RecordIOSource source((dir.path / "t.rec").string());
  std::vector<std::vector<index_t>> plan = {{0, 3}, {1, 4}, {2, 5}};
  for (int threads : {0, 2}) {
    {
      std::size_t at = 0;
      ImageLoader strict(source, [&] { return plan[at++ % plan.size()]; },
                         {{4, 4, 1}, threads, 2, false});
      CHECK(strict.next().samples == plan[0]);
      CHECK_THAT(error_of([&] { strict.next(); }),
                 Contains("t.rec' record 1 (offset") && Contains("cannot decode PNG"));
      CHECK(strict.next().samples == plan[2]);  // later batches are unaffected
    }
    std::size_t at = 0;
    ImageLoader lenient(source, [&] { return plan[at++ % plan.size()]; },
                        {{4, 4, 1}, threads, 2, true});
    lenient.next();
    const ImageBatch b = lenient.next();
    CHECK(b.substituted == 1);
    CHECK(b.decoded == std::vector<index_t>{2, 4});  // the next sample of label 0
    CHECK(b.labels == std::vector<label_t>{0, 1});
    CHECK(std::equal(pixels[2].begin(), pixels[2].end(), b.pixels.begin()));
    CHECK(lenient.substituted() == 1);
  }
}

TEST_CASE("loader options are checked") {
  TempDir dir;
  Set set = insightface_set(4, 4, 4, 2);
  set.writer.save(dir.path / "o");
  RecordIOSource source((dir.path / "o.rec").string());
  const auto ids = [] { return std::vector<index_t>{0}; };
  CHECK_THROWS_WITH(ImageLoader(source, ids, {{4, 4, 1}, -1, 2, false}), Contains("threads = -1"));
  CHECK_THROWS_WITH(ImageLoader(source, ids, {{4, 4, 1}, 1, 0, false}), Contains("prefetch = 0"));
  CHECK_THROWS_WITH(ImageLoader(source, ids, {{4, 4, 2}, 1, 1, false}), Contains("4x4x2"));
  ImageLoader loader(source, [] { return std::vector<index_t>{9}; }, {{4, 4, 1}, 1, 1, false});
  CHECK_THROWS_WITH(loader.next(), Contains("sample id 9 is outside [0, 4)"));
}

TEST_CASE("randomly corrupted RecordIO files give protomem::Error or good images, nothing else") {
  // Random byte changes and truncations of a valid pair (PNG and JPEG payloads): opening, reading
  // and decoding either succeed or throw protomem::Error (under the sanitizer presets, without an
  // invalid access).
  TempDir dir;
  std::mt19937 rng(21);
  Writer w;
  std::vector<std::uint8_t> smooth(12 * 12);
  for (std::size_t k = 0; k < smooth.size(); ++k) smooth[k] = static_cast<std::uint8_t>(k * 3);
  for (int i = 0; i < 8; ++i) {
    const std::string image = i % 2 == 0 ? encode_png(random_pixels(rng, 12 * 12), 12, 12, 1)
                                         : encode_jpeg(smooth, 12, 12, 1);
    w.add(static_cast<std::uint64_t>(i), image_payload(float(i % 3), {}, 0, image));
  }
  int opened = 0, decoded = 0, errors = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string rec = w.rec, idx = w.idx;
    const int changes = 1 + static_cast<int>(rng() % 6);
    for (int c = 0; c < changes; ++c) {
      std::string& target = rng() % 8 == 0 ? idx : rec;
      target[rng() % target.size()] = static_cast<char>(rng() & 0xffU);
    }
    if (rng() % 4 == 0) rec.resize(rng() % rec.size());
    std::ofstream(dir.path / "f.rec", std::ios::binary) << rec;
    std::ofstream(dir.path / "f.idx", std::ios::binary) << idx;
    for (bool skip : {false, true}) {
      try {
        RecordIOSource source((dir.path / "f.rec").string(), "", SourceOptions{skip});
        ++opened;
        for (index_t k = 0; k < source.size(); ++k) {
          try {
            const auto pixels = decode_sample(source, k, {12, 12, 1});
            CHECK(pixels.size() == 144);
            ++decoded;
          } catch (const Error&) {
            ++errors;
          }
        }
      } catch (const Error&) {
        ++errors;
      }
    }
  }
  // Both outcomes happened (the corruption is neither always fatal nor always harmless).
  CHECK(opened > 0);
  CHECK(decoded > 0);
  CHECK(errors > 0);
}

// ---- bounds: hostile images, paths and sizes (docs/reliability.md, "Bounded input") -----------

namespace {

using protomem_test::ChildRun;
using protomem_test::run_in_child;

std::string jpeg_or_png(const std::string& bytes) { return bytes[0] == '\xff' ? "JPEG" : "PNG"; }

ChildRun decode_in_child(const std::string& bytes, const DecodeLimits& limits = {}) {
  return run_in_child([&] {
    decode_image(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                 ImageSize{112, 112, 3}, "'bomb.rec' record 7", limits);
  });
}

// Each case: an Error, at once, and (without ASan) within 100 MB of memory.
void check_bounded(const ChildRun& run) {
  INFO(run.outcome);
  CHECK(run.is_error());
  CHECK(run.seconds < 1.0);
  if (!PROTOMEM_TEST_ASAN) CHECK(run.added_rss_mb() < 100);
}

}  // namespace

TEST_CASE("a header claiming more pixels than the limit is an Error before any allocation") {
  // A few hundred bytes each; without the check the decoder allocates and zero-fills width x
  // height x channels bytes (4 to 12 GB) before it reads a pixel.
  for (const std::string& bomb :
       {protomem_test::jpeg_claiming(65000, 65000, 3),
        protomem_test::jpeg_claiming(65000, 65000, 1), protomem_test::png_claiming(65000, 65000),
        protomem_test::png_claiming(300000, 300)}) {
    INFO(jpeg_or_png(bomb) << ", " << bomb.size() << " bytes");
    CHECK(bomb.size() < 700);
    const ChildRun run = decode_in_child(bomb);
    check_bounded(run);
    CHECK_THAT(run.outcome, Contains("'bomb.rec' record 7") && Contains("header claims") &&
                                Contains("more than the limit of 16777216") &&
                                Contains("DecodeLimits::max_pixels"));
  }
  CHECK_THAT(decode_in_child(protomem_test::jpeg_claiming(65000, 65000, 3)).outcome,
             Contains("65000 x 65000 = 4225000000 pixels"));
  // The limit is the caller's: an 8 x 8 image against 63 pixels, and 64.
  const std::string small = protomem_test::jpeg_claiming(8, 8, 1);
  const auto* data = reinterpret_cast<const unsigned char*>(small.data());
  CHECK_THROWS_WITH(decode_image(data, small.size(), 1, "s", {63, 100}),
                    Contains("8 x 8 = 64 pixels, more than the limit of 63"));
  CHECK(decode_image(data, small.size(), 1, "s", {64, 100}).width == 8);
  CHECK_THROWS_WITH(decode_image(data, small.size(), 1, "s", {0, 100}), Contains("max_pixels = 0"));
}

TEST_CASE("a JPEG with more scans than the limit is an Error when the scan starts") {
  // The bomb is valid: 100 identical DC scans decode (8 x 8 gray of one value).
  const std::string at_limit = protomem_test::jpeg_with_scans(100);
  const Image image = decode_image(reinterpret_cast<const unsigned char*>(at_limit.data()),
                                   at_limit.size(), 1, "ok");
  CHECK(image.width == 8);
  CHECK(std::all_of(image.pixels.begin(), image.pixels.end(),
                    [&](std::uint8_t v) { return v == image.pixels[0]; }));
  // A real progressive JPEG (libjpeg's script: 10 scans in colour) decodes as libjpeg decodes it.
  std::mt19937 rng(17);
  const std::string progressive =
      protomem_test::encode_jpeg(random_pixels(rng, 48 * 32 * 3), 48, 32, 3, 90, true);
  CHECK(decode_image(reinterpret_cast<const unsigned char*>(progressive.data()), progressive.size(),
                     3, "p")
            .pixels == libjpeg_decode(progressive, 3));
  const ChildRun run = decode_in_child(protomem_test::jpeg_with_scans(101));
  check_bounded(run);
  CHECK_THAT(run.outcome, Contains("'bomb.rec' record 7") && Contains("cannot decode JPEG") &&
                              Contains("more than 100 scans") &&
                              Contains("DecodeLimits::max_jpeg_scans"));
  // A caller's limit, on a bomb of a few hundred bytes.
  const std::string bomb = protomem_test::jpeg_with_scans(20);
  CHECK(bomb.size() < 400);
  CHECK_THAT(decode_in_child(bomb, {1 << 24, 10}).outcome, Contains("more than 10 scans"));
}

TEST_CASE("an image over a limit is a corrupt sample for the loader: named, or skipped") {
  TempDir dir;
  std::mt19937 rng(21);
  const auto good_pixels = random_pixels(rng, 8 * 8);
  const std::string good = encode_png(good_pixels, 8, 8, 1);
  Writer w;  // samples 0, 1 of label 0 are bombs; sample 2 (label 0) and 3 (label 1) are good
  w.add(0, image_payload(0, {}, 0, protomem_test::png_claiming(65000, 65000)));
  w.add(1, image_payload(0, {}, 0, protomem_test::jpeg_with_scans(200)));
  w.add(2, image_payload(0, {}, 0, good));
  w.add(3, image_payload(1, {}, 0, good));
  w.save(dir.path / "b");
  RecordIOSource source((dir.path / "b.rec").string());
  for (index_t bomb : {0, 1}) {
    ImageLoader strict(source,
                       [&] {
                         return std::vector<index_t>{bomb, 3};
                       },
                       {{8, 8, 1}, 0, 1, false});
    CHECK_THAT(error_of([&] { strict.next(); }),
               Contains("b.rec' record " + std::to_string(bomb)) &&
                   Contains(bomb == 0 ? "65000 x 65000" : "more than 100 scans"));
    ImageLoader lenient(source,
                        [&] {
                          return std::vector<index_t>{bomb, 3};
                        },
                        {{8, 8, 1}, 0, 1, true});
    const ImageBatch b = lenient.next();
    CHECK(b.decoded == std::vector<index_t>{2, 3});
    CHECK(std::equal(good_pixels.begin(), good_pixels.end(), b.pixels.begin()));
  }
  // The limits are LoaderOptions: 8 x 8 = 64 pixels over a limit of 63 (resized to 4 x 4).
  LoaderOptions tight{{4, 4, 1}, 0, 1, false};
  tight.limits.max_pixels = 63;
  ImageLoader loader(
      source, [] { return std::vector<index_t>{3}; }, tight);
  CHECK_THAT(error_of([&] { loader.next(); }), Contains("more than the limit of 63"));
  tight.limits.max_jpeg_scans = 0;
  const auto ids = [] { return std::vector<index_t>{3}; };
  CHECK_THROWS_WITH(ImageLoader(source, ids, tight), Contains("max_jpeg_scans = 0"));
  // Sizes the caller passes: the output size within max_pixels, prefetch within [1, 1024].
  CHECK_THROWS_WITH(ImageLoader(source, ids, {{65536, 65536, 3}, 0, 1, false}),
                    Contains("image size 65536x65536 = 4294967296 pixels is more than "
                             "DecodeLimits::max_pixels = 16777216"));
  CHECK_THROWS_WITH(ImageLoader(source, ids, {{8, 8, 1}, 0, 1 << 30, false}),
                    Contains("prefetch = 1073741824 (must be in [1, 1024])"));
  const std::string good_bytes = source.bytes(3);
  CHECK_THROWS_WITH(decode_image(reinterpret_cast<const unsigned char*>(good_bytes.data()),
                                 good_bytes.size(), ImageSize{100000, 100000, 1}, "g"),
                    Contains("decode_image: image size 100000x100000"));
}

TEST_CASE("a path that is not a regular file is an Error at once, naming it") {
  TempDir dir;
  const std::string png = encode_png(std::vector<std::uint8_t>(16, 9), 4, 4, 1);
  std::ofstream(dir.path / "good.png", std::ios::binary) << png;
  const fs::path fifo = dir.path / "fifo.png";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  fs::create_directories(dir.path / "folder.png");
  const fs::path socket_path = dir.path / "socket.png";
  const int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof address.sun_path, "%s", socket_path.c_str());
  const bool have_socket =
      sock >= 0 && ::bind(sock, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  std::ofstream(dir.path / "list.txt") << "good.png 0\n"
                                       << "folder.png 0\n"
                                       << "fifo.png 1\n"
                                       << "/dev/zero 1\n"
                                       << "socket.png 2\n";
  ListSource source((dir.path / "list.txt").string());
  CHECK(source.bytes(0) == png);
  const std::pair<index_t, const char*> cases[] = {
      {1, "is a directory, not a regular file"},
      {2, "is a FIFO, not a regular file"},
      {3, "'/dev/zero' is a character device, not a regular file"},
      {4, "is a socket, not a regular file"}};
  for (const auto& [sample, kind] : cases) {
    if (sample == 4 && !have_socket) continue;
    INFO("sample " << sample);
    // Without the check: std::ios_base::failure, bad_alloc after reading /dev/zero, a FIFO that
    // blocks until the child is killed.
    const index_t id = sample;  // a structured binding cannot be captured in C++17
    const ChildRun run = run_in_child([&] { source.bytes(id); }, 5);
    check_bounded(run);
    CHECK_THAT(run.outcome, Contains(kind) && Contains("of list"));
  }
  if (sock >= 0) ::close(sock);

  // The same for every file a source opens: the list itself, the .rec and the .idx.
  const auto error_in_child = [](const std::function<void()>& f) {
    const ChildRun run = run_in_child(f, 5);
    check_bounded(run);
    return run.outcome;
  };
  CHECK_THAT(error_in_child([&] { ListSource s(fifo.string()); }),
             Contains("dataset list: ") && Contains("is a FIFO"));
  CHECK_THAT(error_in_child([&] { ListSource s((dir.path / "folder.png").string() + "/"); }),
             Contains("is a directory"));
  Set set = insightface_set(2, 4, 4, 1);
  set.writer.save(dir.path / "r");
  fs::rename(dir.path / "r.idx", dir.path / "r.idx.real");
  REQUIRE(::mkfifo((dir.path / "r.idx").c_str(), 0600) == 0);
  CHECK_THAT(error_in_child([&] { RecordIOSource s((dir.path / "r.rec").string()); }),
             Contains("RecordIO index: ") && Contains("r.idx' is a FIFO"));
  CHECK_THAT(
      error_in_child([&] { RecordIOSource s("/dev/zero", (dir.path / "r.idx.real").string()); }),
      Contains("'/dev/zero' is a character device"));

  // A folder source takes regular files only: a FIFO named x.png is no image.
  fs::create_directories(dir.path / "faces" / "a");
  REQUIRE(::mkfifo((dir.path / "faces" / "a" / "x.png").c_str(), 0600) == 0);
  CHECK_THAT(error_of([&] { FolderSource s((dir.path / "faces").string()); }),
             Contains("holds no image"));
  std::ofstream(dir.path / "faces" / "a" / "y.png", std::ios::binary) << png;
  FolderSource folder((dir.path / "faces").string());
  CHECK(folder.size() == 1);
}

TEST_CASE("an image file over SourceOptions::max_image_bytes is an Error before it is read") {
  TempDir dir;
  const std::string png = encode_png(std::vector<std::uint8_t>(64, 9), 8, 8, 1);
  std::ofstream(dir.path / "a.png", std::ios::binary) << png;
  std::ofstream(dir.path / "list.txt") << "a.png 0\n";
  SourceOptions options;
  options.max_image_bytes = png.size() - 1;
  ListSource tight((dir.path / "list.txt").string(), options);
  CHECK_THAT(error_of([&] { tight.bytes(0); }),
             Contains("holds " + std::to_string(png.size()) + " bytes, more than the limit of " +
                      std::to_string(png.size() - 1) + " (SourceOptions::max_image_bytes)"));
  options.max_image_bytes = png.size();
  CHECK(ListSource((dir.path / "list.txt").string(), options).bytes(0) == png);
  fs::create_directories(dir.path / "faces" / "a");
  fs::copy_file(dir.path / "a.png", dir.path / "faces" / "a" / "a.png");
  options.max_image_bytes = 10;
  const auto folder = open_image_source((dir.path / "faces").string(), options);
  CHECK_THAT(error_of([&] { folder->bytes(0); }), Contains("more than the limit of 10"));
  CHECK(SourceOptions{}.max_image_bytes == std::uint64_t{64} << 20);
}

TEST_CASE("paths from list files and folders are escaped in messages") {
  TempDir dir;
  // A list line naming a missing file whose name holds an escape sequence and a byte >= 0x80.
  std::ofstream(dir.path / "list.txt") << "a\x1b[31mb\xff.png 0\n";
  ListSource source((dir.path / "list.txt").string());
  const std::string message = error_of([&] { source.bytes(0); });
  CHECK_THAT(message, Contains("a\\x1b[31mb\\xff.png") && Contains("cannot open"));
  CHECK(message.find('\x1b') == std::string::npos);
  CHECK(message.find('\xff') == std::string::npos);
  CHECK_THAT(source.describe(0), Contains("a\\x1b[31mb\\xff.png' (sample 0"));
  // A .rec file named with a control character, with a malformed record.
  Writer w;
  w.add(0, std::string(10, 'x'));
  w.save(dir.path / "bad\x01name");
  const std::string rec =
      error_of([&] { RecordIOSource s((dir.path / "bad\x01name.rec").string()); });
  CHECK_THAT(rec, Contains("bad\\x01name.rec' record 0"));
  CHECK(rec.find('\x01') == std::string::npos);
  // A folder holding such a file names it escaped too.
  fs::create_directories(dir.path / "faces" / "id\x02");
  std::ofstream(dir.path / "faces" / "id\x02" / "x.png") << "not a png";
  FolderSource folder((dir.path / "faces").string());
  CHECK_THAT(folder.describe(0), Contains("id\\x02/x.png"));
}
