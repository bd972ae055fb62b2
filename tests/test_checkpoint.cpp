// Checkpoints: round trip, bit-identical continuation, and every way a file can be wrong — each of
// which throws protomem::Error and leaves the memory exactly as it was.
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <protomem/memory.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/checkpoint.hpp"

namespace {

using checkpoint_support::bytes_of;
using checkpoint_support::crc32_bitwise;
using checkpoint_support::records_offset;
using checkpoint_support::with_valid_crc;

using Catch::Matchers::Contains;
using protomem::index_t;
using protomem::label_t;

using Memory = protomem::PrototypeMemory<float>;
constexpr index_t kDim = 6;

Memory make_memory(double momentum = 0.3) {
  return Memory({12, kDim}, protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
                protomem::Momentum(momentum), protomem::LeastRecentlyWritten());
}

struct Feed {
  std::mt19937_64 rng;
  explicit Feed(std::uint64_t seed) : rng(seed) {}
  // One step's batch: 4 classes out of 30, 2 or 3 exemplars each.
  void next(std::vector<float>& e, std::vector<label_t>& y) {
    std::uniform_int_distribution<label_t> label(0, 29);
    std::normal_distribution<float> normal;
    e.clear();
    y.clear();
    while (y.size() < 12) {
      const label_t l = label(rng);
      if (std::find(y.begin(), y.end(), l) != y.end()) continue;
      for (int k = 0; k < 3; ++k) {
        y.push_back(l);
        for (index_t j = 0; j < kDim; ++j)
          e.push_back(normal(rng) + 0.3f * static_cast<float>(l % 7));
      }
    }
  }
};

// Runs `steps` steps and returns every loss and gradient bit pattern.
std::string run(Memory& memory, Feed& feed, int steps) {
  std::string trace;
  std::vector<float> e, g;
  std::vector<label_t> y;
  for (int t = 0; t < steps; ++t) {
    feed.next(e, y);
    g.resize(e.size());
    const auto B = static_cast<index_t>(y.size());
    const float loss =
        memory.step(protomem::matrix_view<const float>(e.data(), B, kDim),
                    protomem::label_view(y.data(), B), protomem::matrix_view(g.data(), B, kDim));
    trace.append(reinterpret_cast<const char*>(&loss), sizeof loss);
    trace.append(reinterpret_cast<const char*>(g.data()), g.size() * sizeof(float));
  }
  return trace;
}

template <class M>
void load_bytes(M& memory, const std::string& bytes) {
  std::istringstream in(bytes);
  memory.load(in);
}

}  // namespace

TEST_CASE("a checkpoint round-trips every record, counter and policy state", "[checkpoint]") {
  Memory memory = make_memory();
  Feed feed(1);
  run(memory, feed, 25);
  REQUIRE(memory.stats().evictions > 0);
  const std::string bytes = bytes_of(memory);

  Memory loaded = make_memory(/*momentum=*/0.9);  // the checkpoint's policy state wins
  load_bytes(loaded, bytes);
  CHECK(loaded.refresh().get<protomem::Momentum>().a == 0.3);
  CHECK(loaded.size() == memory.size());
  CHECK(loaded.step_count() == memory.step_count());
  CHECK(loaded.stats().refreshes == memory.stats().refreshes);
  CHECK(loaded.stats().insertions == memory.stats().insertions);
  CHECK(loaded.stats().evictions == memory.stats().evictions);
  auto a = memory.begin(), b = loaded.begin();
  for (; a != memory.end() && b != loaded.end(); ++a, ++b) {
    CHECK((*a).label == (*b).label);
    CHECK((*a).last_written == (*b).last_written);
    CHECK(std::memcmp((*a).prototype.data, (*b).prototype.data, kDim * sizeof(float)) == 0);
  }
  CHECK(a == memory.end());
  CHECK(b == loaded.end());
  CHECK(bytes_of(loaded) == bytes);
  // The trailing checksum is zlib's CRC-32, as docs/algorithm.md says.
  std::uint32_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 4, 4);
  CHECK(stored == crc32_bitwise(bytes.substr(0, bytes.size() - 4)));
}

TEST_CASE("save, load, continue is bit-identical to never stopping", "[checkpoint]") {
  Memory original = make_memory();
  Feed feed(2);
  run(original, feed, 20);
  const std::string checkpoint = bytes_of(original);
  Feed feed_copy = feed;
  const std::string uninterrupted = run(original, feed, 15);

  Memory resumed = make_memory();
  load_bytes(resumed, checkpoint);
  const std::string continued = run(resumed, feed_copy, 15);
  CHECK(continued == uninterrupted);
  CHECK(bytes_of(resumed) == bytes_of(original));
}

TEST_CASE("checkpoints go to files through a temporary and load back", "[checkpoint]") {
  Memory memory = make_memory();
  Feed feed(3);
  run(memory, feed, 5);
  const std::string path = "protomem_test_checkpoint.bin";
  memory.save(path);
  std::ifstream probe(path + ".tmp");
  CHECK_FALSE(probe.good());  // renamed into place
  Memory loaded = make_memory();
  loaded.load(path);
  CHECK(bytes_of(loaded) == bytes_of(memory));
  std::remove(path.c_str());
  CHECK_THROWS_WITH(loaded.load(path), Contains("cannot open 'protomem_test_checkpoint.bin'"));
  CHECK_THROWS_WITH(memory.save("/nonexistent-dir/x.bin"), Contains("cannot open"));
}

TEST_CASE("a damaged or mismatched checkpoint is rejected and changes nothing", "[checkpoint]") {
  Memory source = make_memory();
  Feed feed(4);
  run(source, feed, 6);
  const std::string good = bytes_of(source);

  Memory target = make_memory();
  Feed other(5);
  run(target, other, 3);
  const std::string before = bytes_of(target);
  auto rejects = [&](const std::string& bytes, const std::string& message) {
    INFO("expected: " << message);
    CHECK_THROWS_WITH(load_bytes(target, bytes), Contains(message));
    CHECK(bytes_of(target) == before);
  };

  SECTION("every truncation") {
    for (std::size_t n = 0; n < good.size(); ++n) {
      CHECK_THROWS_AS(load_bytes(target, good.substr(0, n)), protomem::Error);
    }
    CHECK(bytes_of(target) == before);
    rejects(good.substr(0, good.size() - 10), "is truncated");
    rejects(good.substr(0, 30), "truncated while reading");
  }
  SECTION("every flipped byte") {
    for (std::size_t i = 0; i < good.size(); ++i) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ 0x20);
      CHECK_THROWS_AS(load_bytes(target, bad), protomem::Error);
    }
    CHECK(bytes_of(target) == before);
    std::string bad = good;
    bad[good.size() / 2] ^= 1;
    rejects(bad, "is corrupt: CRC-32 is");
  }
  SECTION("trailing bytes in a file") {
    const std::string path = "protomem_test_trailing.bin";
    std::ofstream(path, std::ios::binary) << good << "x";
    CHECK_THROWS_WITH(target.load(path), Contains("has 1 unexpected bytes past its end"));
    CHECK(bytes_of(target) == before);
    std::remove(path.c_str());
  }
  SECTION("not a checkpoint") {
    rejects("hello world, this is not a checkpoint at all", "is not a protomem checkpoint");
  }
  SECTION("another format version") {
    std::string bad = good;
    bad[8] = 4;
    rejects(with_valid_crc(bad),
            "has checkpoint format version 4; this build of protomem reads versions 1 and 2");
  }
  SECTION("a shard (format version 3) is refused by load(), pointing to load_shards()") {
    std::string bad = good;
    bad[8] = 3;
    rejects(with_valid_crc(bad), "is one shard of a sharded checkpoint (format version 3): load "
                                 "the whole set of shard files with load_shards()");
  }
  SECTION("another dimension") {
    protomem::PrototypeMemory<float> wide({12, kDim + 1}, protomem::ArcFace(32.0, 0.4),
                                          protomem::ExemplarMean(), protomem::Momentum());
    CHECK_THROWS_WITH(load_bytes(wide, good), Contains("has dim 6; this memory has dim 7"));
    CHECK(wide.size() == 0);
  }
  SECTION("another scalar type") {
    protomem::PrototypeMemory<double> wide({12, kDim}, protomem::ArcFace(32.0, 0.4),
                                           protomem::ExemplarMean(), protomem::Momentum());
    CHECK_THROWS_WITH(load_bytes(wide, good),
                      Contains("stores float32 prototypes; this memory stores float64"));
  }
  SECTION("another built-in policy is adopted, an unknown one refused") {
    // A checkpoint restores the policies it was saved with: a memory of other built-in policies
    // takes the checkpoint's, with their stored parameters.
    protomem::PrototypeMemory<float> cosface({12, kDim}, protomem::ExemplarMean(),
                                             protomem::Momentum());
    load_bytes(cosface, good);
    CHECK(std::string(cosface.margin().name()) == "arcface");
    CHECK(cosface.margin().get<protomem::ArcFace>().scale() == 32.0);
    CHECK(cosface.refresh().get<protomem::Momentum>().a == 0.3);
    CHECK(bytes_of(cosface) == good);
    protomem::PrototypeMemory<float> replace({12, kDim}, protomem::ArcFace(32.0, 0.4),
                                             protomem::ExemplarMean(), protomem::Replace());
    load_bytes(replace, good);
    CHECK(std::string(replace.refresh().name()) == "momentum");
    CHECK(replace.refresh().get<protomem::Momentum>().a == 0.3);
    CHECK(bytes_of(replace) == good);
    // A policy name that is neither built in nor the memory's own: refused, nothing changed.
    std::string unknown = good;
    const std::size_t at = unknown.find("arcface");
    REQUIRE(at != std::string::npos);
    unknown[at + 6] = 'x';  // "arcfacx"
    rejects(with_valid_crc(unknown), "its margin policy 'arcfacx' is not a built-in one");
  }
  SECTION("the ArcFace flags word: bit 0 easy_margin, bit 1 straight_through, no other bit") {
    // The margin's state is s, m (doubles) and a u32 of flags, after the name and its u64 length.
    // Checkpoints written before straight_through existed hold 0 or 1 there and load unchanged.
    const std::size_t name_at = good.find("arcface");
    REQUIRE(name_at != std::string::npos);
    const std::size_t flags_at = name_at + 7 + 8 + 16;
    auto with_flags = [&](std::uint32_t flags) {
      std::string bytes = good;
      for (int i = 0; i < 4; ++i) bytes[flags_at + i] = static_cast<char>(flags >> (8 * i));
      return with_valid_crc(bytes);
    };
    REQUIRE(with_flags(0) == good);  // the offset is right: the source's flags are 0
    for (std::uint32_t flags : {0U, 1U, 2U, 3U}) {
      Memory loaded = make_memory();
      load_bytes(loaded, with_flags(flags));
      const auto& arc = loaded.margin().get<protomem::ArcFace>();
      CHECK(arc.s == 32.0);
      CHECK(arc.m == 0.4);
      CHECK(arc.easy_margin == ((flags & 1U) != 0U));
      CHECK(arc.straight_through == ((flags & 2U) != 0U));
      CHECK(bytes_of(loaded) == with_flags(flags));  // and saves the same word back
    }
    rejects(with_flags(4), "arcface: flags = 4 in checkpoint has bits other than 1");
    rejects(with_flags(7), "arcface: flags = 7 in checkpoint");
    rejects(with_flags(0x80000000U), "arcface: flags = 2147483648 in checkpoint");
  }
  SECTION("more records than the capacity") {
    Memory small({3, kDim}, protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
                 protomem::Momentum(0.3));
    CHECK_THROWS_WITH(load_bytes(small, good), Contains("classes; this memory's capacity is 3"));
  }
  SECTION("a larger memory loads it") {
    Memory large({40, kDim}, protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
                 protomem::Momentum(0.3));
    load_bytes(large, good);
    CHECK(large.size() == source.size());
  }
  SECTION("records that contradict each other, under a valid checksum") {
    const std::size_t at = records_offset(good);
    const std::size_t record = 24 + kDim * sizeof(float);
    std::string duplicate = good;
    std::memcpy(&duplicate[at + 8 + record], &duplicate[at + 8], 8);  // label of record 0
    rejects(with_valid_crc(duplicate), "appears in two records");
    std::string slot = good;
    std::memcpy(&slot[at + 8 + record + 8], &slot[at + 8 + 8], 8);  // slot of record 0
    rejects(with_valid_crc(slot), "out of range or taken twice");
    std::string future = good;
    const std::uint64_t late = 1000000;
    std::memcpy(&future[at + 8 + 16], &late, 8);
    rejects(with_valid_crc(future), "after the checkpoint's last step");
    std::string nan = good;
    const float not_a_number = std::nanf("");
    std::memcpy(&nan[at + 8 + 24], &not_a_number, 4);
    rejects(with_valid_crc(nan), "has a non-finite value");
    std::string policy = good;
    // The momentum weight a, stored as the refresh policy's state: make it 1.5.
    const std::string name = "momentum";
    const std::size_t a_at = policy.find(name) + name.size() + 8;
    const double bad_a = 1.5;
    std::memcpy(&policy[a_at], &bad_a, 8);
    rejects(with_valid_crc(policy), "momentum: old-prototype weight a = 1.5");
  }
}

TEST_CASE("a checkpoint can be embedded in a larger stream", "[checkpoint]") {
  Memory first = make_memory(), second = make_memory();
  Feed feed(7);
  run(first, feed, 4);
  run(second, feed, 9);
  std::stringstream stream;
  stream << "user header\n";
  first.save(stream);
  second.save(stream);
  stream << "user trailer";
  std::string line;
  std::getline(stream, line);
  Memory a = make_memory(), b = make_memory();
  a.load(stream);
  b.load(stream);
  CHECK(bytes_of(a) == bytes_of(first));
  CHECK(bytes_of(b) == bytes_of(second));
  std::string rest((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
  CHECK(rest == "user trailer");
}

TEST_CASE("a pending forward is not part of a checkpoint, and load discards it", "[checkpoint]") {
  Memory memory = make_memory();
  Feed feed(6);
  run(memory, feed, 3);
  const std::string committed = bytes_of(memory);
  std::vector<float> e, g;
  std::vector<label_t> y;
  feed.next(e, y);
  g.resize(e.size());
  const auto B = static_cast<index_t>(y.size());
  memory.forward(protomem::matrix_view<const float>(e.data(), B, kDim),
                 protomem::label_view(y.data(), B), protomem::matrix_view(g.data(), B, kDim));
  CHECK(bytes_of(memory) == committed);
  load_bytes(memory, committed);
  CHECK_FALSE(memory.pending());
}
