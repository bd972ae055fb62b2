// Doppelganger mining: the table's update and eviction rules against an independent model, what the
// memory hands it (committed steps only), checkpoints, and recovery of planted look-alike pairs on
// synthetic identities after one epoch of iterate-and-sample batches.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <list>
#include <map>
#include <protomem/data/dataset_index.hpp>
#include <protomem/memory.hpp>
#include <protomem/policies/mining.hpp>
#include <protomem/data/sampler.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "support/batch.hpp"
#include "support/checkpoint.hpp"

namespace {

using checkpoint_support::bytes_of;
using checkpoint_support::with_valid_crc;

using Catch::Matchers::Contains;
using protomem::DoppelgangerMining;
using protomem::index_t;
using protomem::label_t;

// A memory constructed with DoppelgangerMining (policies are constructor objects).
template <class Scalar>
using MiningMemory = protomem::PrototypeMemory<Scalar>;

using Row = std::tuple<label_t, std::vector<label_t>, std::vector<float>>;

std::vector<Row> rows_of(const DoppelgangerMining& table) {
  std::vector<Row> rows;
  table.for_each(
      [&](label_t label, protomem::Span<const label_t> d, protomem::Span<const float> c) {
        rows.emplace_back(label, std::vector<label_t>(d.begin(), d.end()),
                          std::vector<float>(c.begin(), c.end()));
      });
  return rows;
}
// The table a memory's mining holder holds (protomem::Error if it holds another policy).
std::vector<Row> rows_of(const protomem::AnyMining& mining) {
  return rows_of(mining.get<DoppelgangerMining>());
}

// A user-written Mining policy that the library does not know (not a built-in one).
struct MyMining {
  static constexpr const char* name = "my_mining";
  index_t similar_k() const { return 0; }
  template <class T>
  void record(protomem::Span<const label_t>, protomem::Span<const label_t>,
              protomem::Span<const T>, index_t) noexcept {}
  protomem::Span<const label_t> doppelgangers(label_t) const { return {}; }
  protomem::Span<const float> cosines(label_t) const { return {}; }
  void clear() {}
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// The table's rule, written as plainly as possible: a list in update order and a map of rows.
struct ShadowTable {
  std::size_t capacity;
  index_t k;
  std::list<label_t> order;  // least recently updated first
  std::map<label_t, std::pair<std::vector<label_t>, std::vector<float>>> rows;

  void record(const std::vector<label_t>& classes, const std::vector<label_t>& similar,
              const std::vector<double>& cosines, index_t stride) {
    for (std::size_t c = 0; c < classes.size(); ++c) {
      std::vector<label_t> d;
      std::vector<float> cos;
      for (index_t r = 0; r < std::min(k, stride); ++r) {
        const label_t l = similar[c * stride + r];
        if (l < 0) break;
        d.push_back(l);
        cos.push_back(static_cast<float>(cosines[c * stride + r]));
      }
      if (d.empty()) continue;
      if (rows.count(classes[c])) {
        order.remove(classes[c]);
      } else if (rows.size() == capacity) {
        rows.erase(order.front());
        order.pop_front();
      }
      order.push_back(classes[c]);
      rows[classes[c]] = {d, cos};
    }
  }
  std::vector<Row> contents() const {
    std::vector<Row> out;
    for (label_t l : order) out.emplace_back(l, rows.at(l).first, rows.at(l).second);
    return out;
  }
};

template <class Memory, class Scalar>
Scalar step(Memory& memory, const std::vector<Scalar>& e, const std::vector<label_t>& y,
            index_t dim, bool commit = true) {
  std::vector<Scalar> g(e.size());
  const auto B = static_cast<index_t>(y.size());
  const auto result =
      memory.forward(protomem::matrix_view<const Scalar>(e.data(), B, dim),
                     protomem::label_view(y.data(), B), protomem::matrix_view(g.data(), B, dim));
  if (commit) {
    memory.commit();
  } else {
    memory.discard();
  }
  return result.loss;
}

// A batch of `per_class` exemplars around fixed per-label directions.
void make_batch(const std::vector<label_t>& classes, int per_class, index_t dim,
                std::mt19937_64& rng, std::vector<double>& e, std::vector<label_t>& y) {
  auto batch = test_support::make_batch<double>(classes, per_class, dim, rng, {0.3});
  e = std::move(batch.embeddings);
  y = std::move(batch.labels);
}

std::vector<label_t> random_classes(std::mt19937_64& rng, int count, label_t range) {
  std::vector<label_t> all(static_cast<std::size_t>(range));
  for (label_t l = 0; l < range; ++l) all[static_cast<std::size_t>(l)] = l;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<std::size_t>(count));
  return all;
}

MiningMemory<double> make_memory(index_t dim, index_t k, index_t table_capacity) {
  return MiningMemory<double>({32, dim}, protomem::CosFace(), protomem::ExemplarMean(),
                              protomem::Replace(), protomem::LeastRecentlyWritten(),
                              DoppelgangerMining(k, table_capacity));
}

}  // namespace

TEST_CASE("the doppelganger table follows its update and eviction rules", "[mining]") {
  std::mt19937_64 rng(11);
  DoppelgangerMining table(3, 8);
  ShadowTable shadow{8, 3, {}, {}};
  const index_t stride = 4;
  for (int t = 0; t < 600; ++t) {
    const int C = 1 + static_cast<int>(rng() % 5);
    const std::vector<label_t> classes = random_classes(rng, C, 30);
    std::vector<label_t> similar;
    std::vector<double> cosines;
    for (int c = 0; c < C; ++c) {
      const int valid = static_cast<int>(rng() % (stride + 1));  // 0 .. stride, then -1 pads
      const std::vector<label_t> found = random_classes(rng, valid, 30);
      double cos = 1.0;
      for (int r = 0; r < stride; ++r) {
        cos -= 0.1 * std::uniform_real_distribution<double>()(rng);
        similar.push_back(r < valid ? found[static_cast<std::size_t>(r)] : -1);
        cosines.push_back(r < valid ? cos : -INFINITY);
      }
    }
    table.record(
        protomem::Span<const label_t>{classes.data(), C},
        protomem::Span<const label_t>{similar.data(), static_cast<index_t>(similar.size())},
        protomem::Span<const double>{cosines.data(), static_cast<index_t>(cosines.size())}, stride);
    shadow.record(classes, similar, cosines, stride);
    REQUIRE(table.size() <= 8);
    REQUIRE(rows_of(table) == shadow.contents());
  }
  CHECK(table.size() == 8);
  for (const auto& [label, row] : shadow.rows) {
    const auto d = table.doppelgangers(label);
    CHECK(std::vector<label_t>(d.begin(), d.end()) == row.first);
    CHECK(table.contains(label));
  }
  CHECK(table.doppelgangers(1000).size == 0);
  CHECK(table.cosines(1000).size == 0);
  table.clear();
  CHECK(table.size() == 0);
  CHECK(rows_of(table).empty());
  CHECK(table.k() == 3);

  CHECK_THROWS_WITH(DoppelgangerMining(0, 8), Contains("k = 0 must be in [1, 65536]"));
  CHECK_THROWS_WITH(DoppelgangerMining(2, 0), Contains("table_capacity = 0 must be in [1, 2^40]"));
}

TEST_CASE("the memory hands the mining policy committed steps only", "[mining][memory]") {
  std::mt19937_64 rng(3);
  const index_t dim = 6;
  for (index_t config_k : {0, 1, 5}) {
    protomem::Config config{40, dim};
    config.similar_k = config_k;
    MiningMemory<double> memory(config, protomem::CosFace(), protomem::ExemplarMean(),
                                protomem::Replace(), protomem::LeastRecentlyWritten(),
                                DoppelgangerMining(3, 100));
    std::vector<double> e;
    std::vector<label_t> y;
    for (int t = 0; t < 8; ++t) {
      make_batch(random_classes(rng, 4, 30), 2, dim, rng, e, y);
      step(memory, e, y, dim);
    }
    const auto before = rows_of(memory.mining());
    const auto stored_before = bytes_of(memory);
    make_batch(random_classes(rng, 4, 30), 2, dim, rng, e, y);
    step(memory, e, y, dim, /*commit=*/false);
    CHECK(rows_of(memory.mining()) == before);  // discard leaves the table alone
    CHECK(bytes_of(memory) == stored_before);

    std::vector<double> g(e.size());
    const auto B = static_cast<index_t>(y.size());
    const auto result =
        memory.forward(protomem::matrix_view<const double>(e.data(), B, dim),
                       protomem::label_view(y.data(), B), protomem::matrix_view(g.data(), B, dim));
    const index_t k = std::max<index_t>(config_k, 3);
    REQUIRE(result.similar_k == k);
    CHECK(rows_of(memory.mining()) == before);  // nothing before commit
    memory.commit();
    ShadowTable shadow{100, 3, {}, {}};
    for (const auto& [label, d, c] : before) {
      shadow.order.push_back(label);
      shadow.rows[label] = {d, c};
    }
    shadow.record(result.classes, result.similar, result.similar_cosines, k);
    CHECK(rows_of(memory.mining()) == shadow.contents());
    for (std::size_t c = 0; c < result.classes.size(); ++c) {
      const auto d = memory.mining().doppelgangers(result.classes[c]);
      REQUIRE(d.size == 3);  // the memory holds more than 3 other classes
      for (index_t r = 0; r < 3; ++r) CHECK(d[r] == result.similar[c * k + r]);
    }
    memory.clear();
    CHECK(memory.mining().get<DoppelgangerMining>().size() == 0);
  }
}

TEST_CASE("the doppelganger table round-trips through the memory's checkpoint",
          "[mining][checkpoint]") {
  std::mt19937_64 rng(5);
  const index_t dim = 4;
  MiningMemory<double> memory = make_memory(dim, 2, 12);
  std::vector<double> e;
  std::vector<label_t> y;
  for (int t = 0; t < 12; ++t) {
    make_batch(random_classes(rng, 3, 40), 2, dim, rng, e, y);
    step(memory, e, y, dim);
  }
  REQUIRE(memory.mining().get<DoppelgangerMining>().size() == 12);  // full, and has evicted
  const std::string good = bytes_of(memory);
  const std::vector<Row> good_rows = rows_of(memory.mining());

  MiningMemory<double> larger = make_memory(dim, 5, 20);
  std::istringstream in(good);
  larger.load(in);
  CHECK(rows_of(larger.mining()) == rows_of(memory.mining()));
  const DoppelgangerMining& larger_table = larger.mining().get<DoppelgangerMining>();
  CHECK(larger_table.k() == 2);                // k is a parameter: the checkpoint's
  CHECK(larger_table.table_capacity() == 20);  // the capacity is a size: this object's

  MiningMemory<double> loaded = make_memory(dim, 2, 12);
  std::istringstream again(good);
  loaded.load(again);
  for (int t = 0; t < 6; ++t) {  // continuing gives the same losses and tables
    make_batch(random_classes(rng, 3, 40), 2, dim, rng, e, y);
    CHECK(step(memory, e, y, dim) == step(loaded, e, y, dim));
    CHECK(rows_of(loaded.mining()) == rows_of(memory.mining()));
  }

  MiningMemory<double> target = make_memory(dim, 2, 12);
  const std::string before = bytes_of(target);
  auto rejects = [&](auto& m, const std::string& bytes, const std::string& message) {
    std::istringstream s(bytes);
    CHECK_THROWS_WITH(m.load(s), Contains(message));
  };
  SECTION("every truncation and flipped byte") {
    for (std::size_t n = 0; n < good.size(); ++n) {
      std::istringstream s(good.substr(0, n));
      CHECK_THROWS_AS(target.load(s), protomem::Error);
    }
    for (std::size_t i = 0; i < good.size(); ++i) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ 0x20);
      std::istringstream s(bad);
      CHECK_THROWS_AS(target.load(s), protomem::Error);
    }
    CHECK(bytes_of(target) == before);
  }
  SECTION("another mining policy, or a table too small") {
    // A built-in policy is adopted (a checkpoint restores the policies it was saved with): the
    // table with the checkpoint's k and rows, at the default table capacity.
    protomem::PrototypeMemory<double> plain({32, dim});
    std::istringstream s(good);
    plain.load(s);
    REQUIRE(plain.mining().holds<DoppelgangerMining>());
    CHECK(rows_of(plain.mining()) == good_rows);
    CHECK(plain.mining().get<DoppelgangerMining>().k() == 2);
    CHECK(plain.mining().get<DoppelgangerMining>().table_capacity() ==
          DoppelgangerMining().table_capacity());
    CHECK(bytes_of(plain) == good);
    // A user-written policy the memory does not hold: refused, nothing changed.
    protomem::PrototypeMemory<double> mine({32, dim}, MyMining{});
    const std::string user_written = bytes_of(mine);
    protomem::PrototypeMemory<double> none({32, dim});
    const std::string none_before = bytes_of(none);
    rejects(none, user_written, "its mining policy 'my_mining' is not a built-in one");
    CHECK(bytes_of(none) == none_before);
    // A memory that holds it loads it into a copy of its own.
    protomem::PrototypeMemory<double> mine_again({32, dim}, MyMining{});
    std::istringstream own(user_written);
    mine_again.load(own);
    CHECK(mine_again.mining().holds<MyMining>());
    CHECK(bytes_of(mine_again) == user_written);
    MiningMemory<double> small = make_memory(dim, 2, 11);
    rejects(small, good, "holds 12 doppelganger rows; this table's capacity is 11");
  }
  SECTION("malformed rows under a valid checksum") {
    const std::string name = "doppelganger";
    const std::size_t state = good.find(name) + name.size() + 8;  // after the u64 state length
    const std::size_t row0 = state + 16, entry = 12;
    std::int64_t k = 0;
    std::uint64_t count0 = 0;
    std::memcpy(&k, &good[state], 8);
    std::memcpy(&count0, &good[row0 + 8], 8);
    REQUIRE(k == 2);
    const std::size_t row1 = row0 + 16 + count0 * entry;
    std::string repeated = good;
    std::memcpy(&repeated[row1], &good[row0], 8);
    rejects(target, with_valid_crc(repeated), "doppelganger row 1 has label");
    std::string self = good;
    std::memcpy(&self[row0 + 16], &good[row0], 8);
    rejects(target, with_valid_crc(self), "doppelganger row 0 (label");
    std::string bad_k = good;
    const std::int64_t zero = 0;
    std::memcpy(&bad_k[state], &zero, 8);
    rejects(target, with_valid_crc(bad_k), "doppelganger mining k = 0 is outside [1, 65536]");
    std::string nan = good;
    const float not_a_number = std::nanf("");
    std::memcpy(&nan[row0 + 16 + 8], &not_a_number, 4);
    rejects(target, with_valid_crc(nan), "with cosine nan");
    CHECK(bytes_of(target) == before);
  }
}

namespace {

// Synthetic identities with planted look-alike pairs: class centres on the unit sphere; for each
// planted pair (a, b), b's centre is normalize(centre_a + 0.6 u) for a random unit u (cosine about
// 0.86), unless `plant` is false (the control: b's centre is independent). Exemplars are centre +
// N(0, 0.12^2) per coordinate (cosine to the centre about 0.72); 2 to 8 exemplars per class; the
// "encoder" is the identity.
struct Identities {
  index_t dim = 64;
  std::vector<label_t> labels;    // per sample
  std::vector<float> embeddings;  // per sample, dim
  std::vector<std::pair<label_t, label_t>> pairs;
};

std::vector<double> unit_vector(std::mt19937_64& rng, index_t dim) {
  std::normal_distribution<double> normal;
  std::vector<double> v(static_cast<std::size_t>(dim));
  double n2 = 0;
  for (double& x : v) {
    x = normal(rng);
    n2 += x * x;
  }
  for (double& x : v) x /= std::sqrt(n2);
  return v;
}

Identities make_identities(label_t classes, label_t pairs, bool plant, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Identities data;
  const index_t D = data.dim;
  std::vector<std::vector<double>> centre(static_cast<std::size_t>(classes));
  for (auto& c : centre) c = unit_vector(rng, D);
  // The pairs: disjoint, over a shuffled class order (labels are not adjacent).
  std::vector<label_t> order = random_classes(rng, static_cast<int>(classes), classes);
  for (label_t p = 0; p < pairs; ++p) {
    const label_t a = order[static_cast<std::size_t>(2 * p)],
                  b = order[static_cast<std::size_t>(2 * p + 1)];
    data.pairs.emplace_back(a, b);
    if (!plant) continue;
    const std::vector<double> u = unit_vector(rng, D);
    std::vector<double> v(static_cast<std::size_t>(D));
    double n2 = 0;
    for (index_t j = 0; j < D; ++j) {
      v[j] = centre[a][j] + 0.6 * u[j];
      n2 += v[j] * v[j];
    }
    for (double& x : v) x /= std::sqrt(n2);
    centre[b] = v;
  }
  std::normal_distribution<double> noise(0.0, 0.12);
  for (label_t c = 0; c < classes; ++c) {
    const int n = 2 + static_cast<int>(rng() % 7);
    for (int s = 0; s < n; ++s) {
      data.labels.push_back(c);
      for (index_t j = 0; j < D; ++j)
        data.embeddings.push_back(static_cast<float>(centre[c][j] + noise(rng)));
    }
  }
  return data;
}

// Runs batches through the memory (identity encoder); returns the batches' classes.
template <class Memory, class Sampler>
std::vector<std::vector<label_t>> run_epoch(Memory& memory, Sampler& sampler,
                                            const Identities& data, bool fill_from_memory) {
  std::vector<std::vector<label_t>> classes;
  const index_t D = data.dim;
  for (std::uint64_t t = 0, n = sampler.batches_per_epoch(); t < n; ++t) {
    const protomem::Batch batch = fill_from_memory ? sampler.next(memory.mining()) : sampler.next();
    std::vector<float> e, g(batch.samples.size() * static_cast<std::size_t>(D));
    for (index_t s : batch.samples) {
      e.insert(e.end(), data.embeddings.begin() + s * D, data.embeddings.begin() + (s + 1) * D);
    }
    const auto B = static_cast<index_t>(batch.samples.size());
    memory.step(protomem::matrix_view<const float>(e.data(), B, D),
                protomem::label_view(batch.labels.data(), B),
                protomem::matrix_view(g.data(), B, D));
    classes.push_back(batch.classes);
  }
  return classes;
}

// Pair (a, b) is recovered when b is among a's mined doppelgangers or a among b's.
template <class Table>
double recovery(const Table& table, const std::vector<std::pair<label_t, label_t>>& pairs) {
  auto has = [&](label_t a, label_t b) {
    const auto d = table.doppelgangers(a);
    return std::find(d.begin(), d.end(), b) != d.end();
  };
  int found = 0;
  for (auto [a, b] : pairs) found += has(a, b) || has(b, a);
  return double(found) / double(pairs.size());
}

int pairs_together(const std::vector<std::vector<label_t>>& batches,
                   const std::vector<std::pair<label_t, label_t>>& pairs) {
  std::set<std::pair<label_t, label_t>> together;
  for (const auto& classes : batches) {
    const std::set<label_t> in(classes.begin(), classes.end());
    for (auto [a, b] : pairs) {
      if (in.count(a) && in.count(b)) together.insert({a, b});
    }
  }
  return static_cast<int>(together.size());
}

}  // namespace

TEST_CASE("mining recovers planted look-alike pairs after one epoch", "[mining][recovery]") {
  const label_t N = 600, P = 60;
  const Identities data = make_identities(N, P, /*plant=*/true, 2022);
  const protomem::DatasetIndex index = protomem::DatasetIndex::from_labels(data.labels);
  protomem::Config config{1024, data.dim};
  MiningMemory<float> memory(config, protomem::CosFace(32.0, 0.3), protomem::ExemplarMean(),
                             protomem::Replace(), protomem::LeastRecentlyWritten(),
                             DoppelgangerMining(3, 1024));
  protomem::IterateAndSample sampler(index, {16, 4, 1});
  const auto first_epoch = run_epoch(memory, sampler, data, false);

  const double rate = recovery(memory.mining(), data.pairs);
  INFO("recovered " << rate * 100 << "% of " << P << " planted pairs");
  CHECK(rate >= 0.9);
  // A pair is missed when its classes met in one batch before either had been stored (a batch's
  // classes are not candidates for each other), about (C - 1) / (N - 1) = 2.5% of pairs here.
  for (auto [a, b] : data.pairs) {
    if (recovery(memory.mining(), {{a, b}}) == 0.0) {
      INFO("missed pair " << a << ", " << b);
      CHECK(pairs_together(first_epoch, {{a, b}}) == 1);
    }
  }

  // Control 1: random pairs of the same table are rarely "recovered" (k = 3 of 599 others).
  std::mt19937_64 rng(9);
  std::vector<std::pair<label_t, label_t>> random_pairs;
  std::set<std::pair<label_t, label_t>> planted(data.pairs.begin(), data.pairs.end());
  while (random_pairs.size() < 300) {
    const label_t a = static_cast<label_t>(rng() % N), b = static_cast<label_t>(rng() % N);
    if (a != b && !planted.count({a, b}) && !planted.count({b, a})) random_pairs.emplace_back(a, b);
  }
  CHECK(recovery(memory.mining(), random_pairs) <= 0.1);

  // Control 2: the same classes without planted similarity: the "pairs" are not recovered.
  const Identities control = make_identities(N, P, /*plant=*/false, 2022);
  const protomem::DatasetIndex control_index = protomem::DatasetIndex::from_labels(control.labels);
  MiningMemory<float> control_memory(config, protomem::CosFace(32.0, 0.3), protomem::ExemplarMean(),
                                     protomem::Replace(), protomem::LeastRecentlyWritten(),
                                     DoppelgangerMining(3, 1024));
  protomem::IterateAndSample control_sampler(control_index, {16, 4, 1});
  run_epoch(control_memory, control_sampler, control, false);
  CHECK(recovery(control_memory.mining(), control.pairs) <= 0.1);

  // Control 3: without a mining policy nothing is recorded.
  protomem::PrototypeMemory<float> plain(config, protomem::CosFace(32.0, 0.3));
  protomem::IterateAndSample plain_sampler(index, {16, 4, 1});
  run_epoch(plain, plain_sampler, data, false);
  CHECK(recovery(plain.mining(), data.pairs) == 0.0);

  // The second epoch with a quarter of each batch filled from the table puts far more planted
  // pairs into one batch than the same epoch without the fill.
  MiningMemory<float> second = memory;
  protomem::IterateAndSample filled(index, {16, 4, 1, 0.25});
  filled.seek(filled.batches_per_epoch());  // epoch 1 of the filled sampler's sequence
  const int with_fill = pairs_together(run_epoch(second, filled, data, true), data.pairs);
  protomem::IterateAndSample unfilled(index, {16, 4, 1});
  unfilled.seek(unfilled.batches_per_epoch());
  MiningMemory<float> third = memory;
  const int without_fill = pairs_together(run_epoch(third, unfilled, data, false), data.pairs);
  INFO("planted pairs in one batch during epoch 2: " << with_fill << " with the fill, "
                                                     << without_fill << " without");
  CHECK(with_fill >= 3 * without_fill + 10);
}

namespace {

// The memory's mining list for one batch row e of class 99, against `records` (label, prototype)
// assigned in this order (slot r = record r), with `threads` lanes.
template <class Scalar>
std::vector<label_t> similar_list(
    const std::vector<std::pair<label_t, std::vector<Scalar>>>& records,
    const std::vector<Scalar>& e, int threads) {
  const auto n = static_cast<index_t>(records.size());
  const auto dim = static_cast<index_t>(e.size());
  protomem::Config config{n + 1, dim};
  config.similar_k = n;
  config.threads = threads;
  protomem::PrototypeMemory<Scalar> memory(config);
  std::vector<label_t> labels;
  std::vector<Scalar> prototypes;
  std::vector<std::uint64_t> written(records.size(), 0);
  for (const auto& record : records) {
    labels.push_back(record.first);
    prototypes.insert(prototypes.end(), record.second.begin(), record.second.end());
  }
  memory.assign({labels.data(), n}, protomem::matrix_view(prototypes.data(), n, dim, dim),
                {written.data(), n}, 0);
  std::vector<Scalar> gradient(e.size());
  const label_t label = 99;
  const auto result =
      memory.forward(protomem::matrix_view(e.data(), 1, dim, dim), protomem::label_view(&label, 1),
                     protomem::matrix_view(gradient.data(), 1, dim, dim));
  return result.similar;
}

}  // namespace

TEST_CASE("equal cosines rank the smaller slot first (docs/algorithm.md)", "[mining]") {
  // Duplicate prototypes give exactly equal cosines (products with 0 and 1 are exact): e = (0.6,
  // 0.8, 0, 0) has cosine 0.8 with e_2 (slots 0 and 2) and 0.6 with e_1 (slots 1 and 3).
  auto check = [](auto zero) {
    using T = decltype(zero);
    const std::vector<T> e1{1, 0, 0, 0}, e2{0, 1, 0, 0}, e{T(0.6), T(0.8), 0, 0};
    for (int threads : {1, 2}) {
      CHECK(similar_list<T>({{20, e2}, {21, e1}, {22, e2}, {23, e1}}, e, threads) ==
            std::vector<label_t>{20, 22, 21, 23});
      // The same classes in other slots: the order follows the slots, not the labels.
      CHECK(similar_list<T>({{23, e1}, {22, e2}, {21, e1}, {20, e2}}, e, threads) ==
            std::vector<label_t>{22, 20, 23, 21});
    }
  };
  check(float{});
  check(double{});
}
