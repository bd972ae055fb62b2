// SlotMap against std::unordered_map over long erase/insert churn, with random and adversarial
// labels, plus its error contract. Probe lengths after churn are compared with those right after
// filling: backward-shift deletion must not let them grow.
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <protomem/detail/slot_map.hpp>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

using protomem::index_t;
using protomem::label_t;
using protomem::detail::SlotMap;

namespace {

// Inverse of the splitmix64 finaliser, to build labels whose hashes share their low bits (the
// same home cell). Written from the finaliser's definition, not from SlotMap.
std::uint64_t undo_xorshift(std::uint64_t y, int shift) {
  std::uint64_t x = y;
  for (int i = 0; i < 64 / shift + 1; ++i) x = y ^ (x >> shift);
  return x;
}

std::uint64_t inverse_mod_2_64(std::uint64_t a) {  // a odd; Newton's iteration doubles the bits
  std::uint64_t x = a;
  for (int i = 0; i < 6; ++i) x *= 2 - a * x;
  return x;
}

std::uint64_t unmix(std::uint64_t z) {
  z = undo_xorshift(z, 31);
  z *= inverse_mod_2_64(0x94d049bb133111ebULL);
  z = undo_xorshift(z, 27);
  z *= inverse_mod_2_64(0xbf58476d1ce4e5b9ULL);
  return undo_xorshift(z, 30);
}

// A non-negative label whose hash has low bits `home` under `mask`; random otherwise.
label_t label_with_home(std::mt19937_64& rng, std::uint64_t mask, std::uint64_t home) {
  for (;;) {
    const std::uint64_t h = (rng() & ~mask) | home;
    const auto label = static_cast<label_t>(unmix(h));
    if (label >= 0) return label;
  }
}

using Reference = std::unordered_map<label_t, index_t>;

// Counts disagreements between the map and the reference for every reference label.
std::size_t count_mismatches(const SlotMap& map, const Reference& ref) {
  std::size_t bad = map.size() == ref.size() ? 0 : 1;
  for (const auto& [label, slot] : ref) bad += map.find(label) != slot;
  return bad;
}

}  // namespace

TEST_CASE("the test's inverse hash really inverts SlotMap::hash", "[slot_map]") {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 1000; ++i) {
    const std::uint64_t h = rng();
    REQUIRE(SlotMap::hash(static_cast<label_t>(unmix(h))) == h);
  }
}

TEST_CASE("table is a power of two, at most half full", "[slot_map]") {
  for (std::size_t n : {0, 1, 2, 3, 5, 64, 65, 1000, 1 << 16}) {
    SlotMap map(n);
    INFO("max_entries = " << n);
    CHECK(map.max_entries() == n);
    CHECK(map.size() == 0);
    CHECK(map.empty());
    const std::size_t t = map.table_size();
    CHECK((t & (t - 1)) == 0);
    CHECK(t >= 2 * n);
    CHECK(t >= 2);
    CHECK((n == 0 ? t == 2 : t < 4 * n));
  }
  CHECK_THROWS_AS(SlotMap(static_cast<std::size_t>(-1) / 2), protomem::Error);
}

TEST_CASE("single operations and the error contract", "[slot_map]") {
  SlotMap map(4);
  CHECK(map.find(0) == -1);
  CHECK(map.find(-1) == -1);
  CHECK(map.find(-5) == -1);
  CHECK_FALSE(map.erase(3));
  CHECK_FALSE(map.erase(-1));
  CHECK(map.size() == 0);

  map.insert(10, 0);
  map.insert(0, 3);
  map.insert(7, 1);
  CHECK(map.size() == 3);
  CHECK(map.find(10) == 0);
  CHECK(map.find(0) == 3);
  CHECK(map.find(7) == 1);
  CHECK(map.contains(7));
  CHECK_FALSE(map.contains(8));
  CHECK_FALSE(map.contains(-1));
  CHECK(map.find(-1) == -1);  // empty cells must not answer for label -1

  SECTION("duplicate insert throws, names the label, changes nothing") {
    CHECK_THROWS_AS(map.insert(7, 2), protomem::Error);
    CHECK_THROWS_WITH(map.insert(7, 2), Catch::Contains("label 7") && Catch::Contains("already"));
    CHECK(map.size() == 3);
    CHECK(map.find(7) == 1);
  }
  SECTION("insert beyond max_entries throws, changes nothing") {
    map.insert(99, 2);
    CHECK(map.size() == 4);
    CHECK_THROWS_WITH(map.insert(123, 4), Catch::Contains("label 123") && Catch::Contains("full"));
    CHECK(map.size() == 4);
    CHECK(map.find(123) == -1);
    CHECK(map.erase(99));
    map.insert(123, 2);  // room again after an erase
    CHECK(map.find(123) == 2);
  }
  SECTION("negative labels and slots are rejected") {
    CHECK_THROWS_WITH(map.insert(-3, 2), Catch::Contains("label -3"));
    CHECK_THROWS_WITH(map.insert(5, -1), Catch::Contains("label 5") && Catch::Contains("slot -1"));
    CHECK(map.size() == 3);
    CHECK(map.find(5) == -1);
  }
  SECTION("erase of an absent label returns false") {
    CHECK_FALSE(map.erase(11));
    CHECK(map.erase(10));
    CHECK_FALSE(map.erase(10));
    CHECK(map.size() == 2);
    CHECK(map.find(10) == -1);
    CHECK(map.find(0) == 3);
    CHECK(map.find(7) == 1);
  }
  SECTION("clear empties and the map refills to max_entries") {
    map.clear();
    CHECK(map.size() == 0);
    CHECK(map.empty());
    CHECK(map.find(10) == -1);
    CHECK(map.find(0) == -1);
    CHECK(map.probe_stats().max_probe_length == 0);
    for (label_t l = 0; l < 4; ++l) map.insert(l, 3 - l);
    for (label_t l = 0; l < 4; ++l) CHECK(map.find(l) == 3 - l);
    CHECK_THROWS_AS(map.insert(4, 0), protomem::Error);
  }
  SECTION("a map with max_entries = 0 rejects every insert") {
    SlotMap none(0);
    CHECK_THROWS_AS(none.insert(0, 0), protomem::Error);
    CHECK(none.find(0) == -1);
  }
}

TEST_CASE("copies are independent", "[slot_map]") {
  SlotMap a(100);
  for (label_t l = 0; l < 50; ++l) a.insert(l * 3, l);
  SlotMap b = a;
  a.erase(0);
  a.insert(1000, 7);
  b.insert(2000, 8);
  CHECK(b.find(0) == 0);
  CHECK(b.find(1000) == -1);
  CHECK(b.find(2000) == 8);
  CHECK(a.find(0) == -1);
  CHECK(a.find(1000) == 7);
  CHECK(a.find(2000) == -1);
  CHECK(a.size() == 50);
  CHECK(b.size() == 51);

  SlotMap c(100);
  c = b;  // copy assignment
  b.clear();
  CHECK(c.size() == 51);
  CHECK(c.find(2000) == 8);
  CHECK(c.find(147) == 49);
  CHECK(b.find(147) == -1);
}

TEST_CASE("colliding labels: one cluster, exact probe lengths, churn keeps it compact",
          "[slot_map]") {
  // All labels share home cells chosen around the wrap-around point of the table, so every erase
  // shifts entries back across the end of the table. Probe lengths are then known exactly.
  constexpr std::size_t kMax = 48;
  SlotMap map(kMax);
  const std::uint64_t mask = map.table_size() - 1;
  std::mt19937_64 rng(11);

  SECTION("one home cell: the i-th label inserted has probe length i") {
    const std::uint64_t home = mask - 5;
    for (std::size_t i = 0; i < kMax; ++i) {
      map.insert(label_with_home(rng, mask, home), static_cast<index_t>(i));
      const auto stats = map.probe_stats();
      REQUIRE(stats.max_probe_length == static_cast<index_t>(i + 1));
      REQUIRE(stats.mean_probe_length == Approx((i + 2) / 2.0));
    }
  }

  SECTION("several nearby home cells under 200k erase/insert pairs") {
    const std::uint64_t homes[] = {mask - 3, mask - 1, mask, 2};
    Reference ref;
    std::vector<label_t> present;
    auto fresh = [&] {
      for (;;) {
        const label_t l = label_with_home(rng, mask, homes[rng() % 4]);
        if (ref.count(l) == 0) return l;
      }
    };
    for (std::size_t i = 0; i < kMax; ++i) {
      const label_t l = fresh();
      map.insert(l, static_cast<index_t>(i));
      ref[l] = static_cast<index_t>(i);
      present.push_back(l);
    }
    REQUIRE(count_mismatches(map, ref) == 0);
    const index_t filled_max = map.max_probe_length();
    // kMax labels in one run of cells starting at homes[0]: no probe can exceed the run.
    REQUIRE(filled_max <= static_cast<index_t>(kMax));

    std::size_t bad = 0;
    index_t churn_max = 0;
    for (int step = 0; step < 200000; ++step) {
      const std::size_t k = rng() % present.size();
      const label_t gone = present[k];
      const index_t slot = ref[gone];
      bad += !map.erase(gone);
      ref.erase(gone);
      bad += map.find(gone) != -1;
      const label_t l = fresh();
      map.insert(l, slot);
      ref[l] = slot;
      present[k] = l;
      bad += count_mismatches(map, ref);
      if (step % 1000 == 0) {
        const index_t m = map.max_probe_length();
        churn_max = m > churn_max ? m : churn_max;
      }
    }
    CHECK(bad == 0);
    CHECK(churn_max <= static_cast<index_t>(kMax));
  }
}

TEST_CASE("long churn at load 1/2 agrees with std::unordered_map; probes do not degrade",
          "[slot_map]") {
  // 2^14 entries in a 2^15-cell table (fits in L2, keeping 5M steps fast): exactly half full, the
  // worst load the map allows.
  constexpr std::size_t kMax = std::size_t{1} << 14;
  SlotMap map(kMax);
  REQUIRE(map.table_size() == 2 * kMax);
  const auto table = static_cast<label_t>(map.table_size());
  std::mt19937_64 rng(2024);
  auto random_label = [&] { return static_cast<label_t>(rng() >> 2); };

  Reference ref;
  ref.reserve(2 * kMax);
  std::vector<label_t> present;
  for (std::size_t i = 0; i < kMax; ++i) {
    label_t l;
    do l = random_label();
    while (ref.count(l) != 0);
    map.insert(l, static_cast<index_t>(i));
    ref[l] = static_cast<index_t>(i);
    present.push_back(l);
  }
  REQUIRE(count_mismatches(map, ref) == 0);
  const auto filled = map.probe_stats();

  // Label sources for churn: random, then adversarial ones that would collide under an identity
  // or low-bits hash (sequential, multiples of the table size, multiples of 2^32).
  label_t next_seq = 0, next_mult = 1, next_high = 1;
  struct Phase {
    std::string name;
    int steps;
    std::function<label_t()> next;
  };
  const std::vector<Phase> phases = {
      {"random", 2000000, random_label},
      {"sequential", 1000000, [&] { return next_seq++; }},
      {"multiples of the table size", 1000000, [&] { return table * next_mult++; }},
      {"multiples of 2^32", 1000000, [&] { return (next_high++) << 32; }},
  };

  index_t worst_max = 0;
  double worst_mean = 0.0;
  for (const Phase& phase : phases) {
    INFO("phase: " << phase.name);
    std::size_t bad = 0;
    for (int step = 1; step <= phase.steps; ++step) {
      // The memory's pattern: evict a class, admit a new one into the freed slot.
      const std::size_t k = rng() % present.size();
      const label_t gone = present[k];
      auto node = ref.extract(gone);  // reuse the node: no allocation per step
      const index_t slot = node.mapped();
      bad += !map.erase(gone);
      bad += map.find(gone) != -1;
      label_t l;
      for (;;) {  // a label absent from the reference; a present one hands the node back
        node.key() = l = phase.next();
        auto result = ref.insert(std::move(node));
        if (result.inserted) break;
        node = std::move(result.node);
      }
      map.insert(l, slot);
      present[k] = l;
      bad += map.find(l) != slot;

      if (step % 100000 == 0) {
        for (int s = 0; s < 1000; ++s) {  // a sample of present labels
          const label_t p = present[rng() % present.size()];
          bad += map.find(p) != ref.at(p);
        }
        for (int s = 0; s < 1000; ++s) {  // and of absent ones
          const label_t a = random_label();
          if (ref.count(a) == 0) bad += map.find(a) != -1;
        }
        bad += map.size() != kMax;
        const auto stats = map.probe_stats();
        worst_max = stats.max_probe_length > worst_max ? stats.max_probe_length : worst_max;
        worst_mean = stats.mean_probe_length > worst_mean ? stats.mean_probe_length : worst_mean;
        REQUIRE(bad == 0);
      }
    }
    REQUIRE(bad == 0);
    REQUIRE(count_mismatches(map, ref) == 0);
  }

  const auto churned = map.probe_stats();
  INFO("after fill: max " << filled.max_probe_length << ", mean " << filled.mean_probe_length);
  INFO("after churn: max " << churned.max_probe_length << ", mean " << churned.mean_probe_length);
  INFO("worst during churn: max " << worst_max << ", mean " << worst_mean);
  // Tombstones would make these grow with the number of erases; without them the layout depends
  // only on the labels present, so it stays within the spread of a freshly filled table.
  CHECK(worst_max <= 3 * filled.max_probe_length);
  CHECK(worst_max < 64);
  CHECK(worst_mean <= 1.5 * filled.mean_probe_length);
  // Linear probing at load 1/2 expects a successful search to read (1 + 1/(1 - 1/2)) / 2 = 1.5
  // cells.
  CHECK(churned.mean_probe_length == Approx(1.5).epsilon(0.1));
}
