// Data set index and batch samplers: list-file parsing and its errors, determinism, resumability,
// epoch coverage of iterate-and-sample, the with-replacement rule, uniform class statistics and the
// doppelganger fill.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <map>
#include <protomem/data/dataset_index.hpp>
#include <protomem/detail/random.hpp>
#include <protomem/memory.hpp>
#include <protomem/data/sampler.hpp>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Catch::Matchers::Contains;
using protomem::Batch;
using protomem::DatasetIndex;
using protomem::index_t;
using protomem::label_t;

// Class c (label 10 c + 3) has sizes[c] samples; samples are interleaved across classes.
DatasetIndex make_index(const std::vector<index_t>& sizes) {
  std::vector<label_t> labels;
  std::vector<index_t> left = sizes;
  for (bool any = true; any;) {
    any = false;
    for (std::size_t c = 0; c < sizes.size(); ++c) {
      if (left[c] > 0) {
        labels.push_back(10 * static_cast<label_t>(c) + 3);
        --left[c];
        any = true;
      }
    }
  }
  return DatasetIndex::from_labels(labels);
}

DatasetIndex uniform_index(index_t classes, index_t per_class) {
  return make_index(std::vector<index_t>(static_cast<std::size_t>(classes), per_class));
}

DatasetIndex parse(const std::string& text) {
  std::istringstream in(text);
  return DatasetIndex::from_list(in, "train.lst");
}

template <class Sampler>
std::vector<Batch> draw(Sampler& sampler, int n) {
  std::vector<Batch> out;
  for (int t = 0; t < n; ++t) out.push_back(sampler.next());
  return out;
}

bool same(const Batch& a, const Batch& b) {
  return a.number == b.number && a.classes == b.classes && a.samples == b.samples &&
         a.labels == b.labels && a.base_classes == b.base_classes &&
         a.mined_classes == b.mined_classes;
}

// Checks what every batch guarantees: C distinct classes, K samples of the right class each,
// distinct samples for classes with >= K samples, every sample of a smaller class.
void check_shape(const DatasetIndex& index, const Batch& batch, index_t C, index_t K) {
  REQUIRE(static_cast<index_t>(batch.classes.size()) == C);
  REQUIRE(static_cast<index_t>(batch.samples.size()) == C * K);
  REQUIRE(batch.labels.size() == batch.samples.size());
  CHECK(std::set<label_t>(batch.classes.begin(), batch.classes.end()).size() ==
        batch.classes.size());
  for (index_t c = 0; c < C; ++c) {
    const label_t label = batch.classes[static_cast<std::size_t>(c)];
    std::multiset<index_t> picked;
    for (index_t k = 0; k < K; ++k) {
      const auto i = static_cast<std::size_t>(c * K + k);
      CHECK(batch.labels[i] == label);
      CHECK(index.label_of_sample(batch.samples[i]) == label);
      picked.insert(batch.samples[i]);
    }
    const index_t n = index.class_size(index.class_index(label));
    const std::set<index_t> distinct(picked.begin(), picked.end());
    if (n >= K) {
      CHECK(static_cast<index_t>(distinct.size()) == K);  // without replacement
    } else {
      CHECK(static_cast<index_t>(distinct.size()) == n);  // every sample, the rest repeated
    }
  }
}

}  // namespace

TEST_CASE("splitmix64 gives the published reference values", "[sampler][random]") {
  protomem::detail::SplitMix64 rng(0);
  CHECK(rng.next() == 0xe220a8397b1dcdafULL);
  CHECK(rng.next() == 0x6e789e6aa1b965f4ULL);
  CHECK(rng.next() == 0x06c45d188009454fULL);
}

TEST_CASE("bounded draws and Floyd subsets are uniform and in range", "[sampler][random]") {
  protomem::detail::SplitMix64 rng(5);
  std::vector<int> counts(7, 0);
  for (int t = 0; t < 70000; ++t) ++counts[static_cast<std::size_t>(rng.below(7))];
  for (int c : counts) CHECK(std::abs(c - 10000) < 600);  // > 6 standard deviations
  std::vector<int> hits(10, 0);
  for (int t = 0; t < 10000; ++t) {
    std::vector<index_t> subset;
    protomem::detail::distinct_below(10, 3, rng, subset);
    REQUIRE(std::set<index_t>(subset.begin(), subset.end()).size() == 3);
    for (index_t v : subset) {
      REQUIRE(v >= 0);
      REQUIRE(v < 10);
      ++hits[static_cast<std::size_t>(v)];
    }
  }
  for (int h : hits) CHECK(std::abs(h - 3000) < 300);
}

TEST_CASE("a dataset index groups samples by class", "[sampler][dataset]") {
  const DatasetIndex index = DatasetIndex::from_labels(std::vector<label_t>{7, 2, 7, 9, 2, 7});
  REQUIRE(index.num_samples() == 6);
  REQUIRE(index.num_classes() == 3);
  CHECK(index.label(0) == 2);
  CHECK(index.label(1) == 7);
  CHECK(index.label(2) == 9);
  CHECK(index.class_index(7) == 1);
  CHECK(index.class_index(5) == -1);
  const auto s = index.samples(1);
  CHECK(std::vector<index_t>(s.begin(), s.end()) == std::vector<index_t>{0, 2, 5});
  CHECK(index.class_size(2) == 1);
  CHECK(index.label_of_sample(4) == 2);
  CHECK(index.paths().empty());
  const DatasetIndex moved = DatasetIndex::from_labels(std::vector<label_t>{7, 2, 7, 9, 2, 2});
  CHECK(moved.fingerprint() != index.fingerprint());
  CHECK_THROWS_WITH(DatasetIndex::from_labels(std::vector<label_t>{1, -4}),
                    Contains("dataset labels[1] = -4 is negative"));
  CHECK_THROWS_WITH(DatasetIndex::from_labels(std::vector<label_t>{}),
                    Contains("holds no samples"));
}

TEST_CASE("a list file gives sample ids in line order, paths and labels", "[sampler][dataset]") {
  const DatasetIndex index = parse(
      "# identities\n"
      "a/0.jpg 4\n"
      "\n"
      "  b/with space.jpg\t 1  \r\n"
      "a/1.jpg 4\n"
      "   # indented comment\n"
      "c/0.jpg 0\n");
  REQUIRE(index.num_samples() == 4);
  CHECK(index.paths() ==
        std::vector<std::string>{"a/0.jpg", "b/with space.jpg", "a/1.jpg", "c/0.jpg"});
  CHECK(index.label_of_sample(0) == 4);
  CHECK(index.label_of_sample(1) == 1);
  CHECK(index.label_of_sample(2) == 4);
  CHECK(index.label_of_sample(3) == 0);
  CHECK(index.num_classes() == 3);
  const auto s = index.samples(index.class_index(4));
  CHECK(std::vector<index_t>(s.begin(), s.end()) == std::vector<index_t>{0, 2});
}

TEST_CASE("every bad list line is an error naming its line", "[sampler][dataset]") {
  const std::string good = "# header\nx.jpg 1\n\n";  // lines 1-3
  CHECK_THROWS_WITH(
      parse(good + "lonely.jpg\n"),
      Contains("train.lst:4: expected '<path> <label>' but found one field 'lonely.jpg'"));
  CHECK_THROWS_WITH(parse(good + "  lonely.jpg  \n"), Contains("train.lst:4: expected"));
  CHECK_THROWS_WITH(parse(good + "y.jpg 12x\n"),
                    Contains("train.lst:4: label '12x' is not a non-negative integer"));
  CHECK_THROWS_WITH(parse(good + "y.jpg 1.5\n"), Contains("train.lst:4: label '1.5' is not"));
  CHECK_THROWS_WITH(parse(good + "y.jpg +3\n"), Contains("train.lst:4: label '+3' is not"));
  CHECK_THROWS_WITH(parse(good + "y.jpg -3\n"),
                    Contains("train.lst:4: label '-3' is negative (labels must be >= 0)"));
  CHECK_THROWS_WITH(parse(good + "y.jpg 9223372036854775808\n"),
                    Contains("train.lst:4: label '9223372036854775808' is out of range"));
  CHECK(parse(good + "y.jpg 9223372036854775807\n").label(1) == 9223372036854775807LL);
  CHECK_THROWS_WITH(parse("# only comments\n\n"), Contains("train.lst: holds no samples"));
  CHECK_THROWS_WITH(DatasetIndex::from_list_file("/nonexistent/protomem.lst"),
                    Contains("cannot open '/nonexistent/protomem.lst'"));
}

TEST_CASE("samplers are deterministic for a seed", "[sampler]") {
  const DatasetIndex index = make_index({3, 5, 8, 2, 6, 6, 1, 9, 4, 4, 7});
  protomem::SamplerConfig config{4, 3, 42};
  protomem::IterateAndSample a(index, config), b(index, config);
  protomem::UniformSampler u(index, config), v(index, config);
  config.seed = 43;
  protomem::IterateAndSample other(index, config);
  protomem::UniformSampler other_u(index, config);
  const auto xs = draw(a, 12), ys = draw(b, 12), zs = draw(other, 12);
  const auto us = draw(u, 12), vs = draw(v, 12), ws = draw(other_u, 12);
  int differ = 0, differ_u = 0;
  for (int t = 0; t < 12; ++t) {
    CHECK(same(xs[t], ys[t]));
    CHECK(same(us[t], vs[t]));
    differ += !same(xs[t], zs[t]);
    differ_u += !same(us[t], ws[t]);
    check_shape(index, xs[t], 4, 3);
    check_shape(index, us[t], 4, 3);
  }
  CHECK(differ >= 10);
  CHECK(differ_u >= 10);
  // Random access: seek() gives the same batch as drawing up to it.
  protomem::IterateAndSample c(index, {4, 3, 42});
  c.seek(9);
  CHECK(same(c.next(), xs[9]));
  c.seek(2);
  CHECK(same(c.next(), xs[2]));
}

TEST_CASE("iterate-and-sample visits every class once per epoch", "[sampler]") {
  SECTION("C divides N") {
    const DatasetIndex index = uniform_index(24, 5);
    protomem::IterateAndSample sampler(index, {6, 2, 3});
    REQUIRE(sampler.batches_per_epoch() == 4);
    std::vector<std::vector<label_t>> orders;
    for (int epoch = 0; epoch < 3; ++epoch) {
      std::vector<label_t> seen;
      for (int t = 0; t < 4; ++t) {
        const Batch batch = sampler.next();
        CHECK(batch.epoch == static_cast<std::uint64_t>(epoch));
        seen.insert(seen.end(), batch.classes.begin(), batch.classes.end());
      }
      std::vector<label_t> sorted = seen;
      std::sort(sorted.begin(), sorted.end());
      for (index_t c = 0; c < 24; ++c) CHECK(sorted[static_cast<std::size_t>(c)] == index.label(c));
      orders.push_back(seen);
    }
    CHECK(orders[0] != orders[1]);  // shuffled afresh each epoch
    CHECK(orders[1] != orders[2]);
  }
  SECTION("the last batch of an epoch is completed with other classes of the epoch") {
    const DatasetIndex index = uniform_index(23, 5);
    protomem::IterateAndSample sampler(index, {6, 2, 3});
    REQUIRE(sampler.batches_per_epoch() == 4);
    for (int epoch = 0; epoch < 5; ++epoch) {
      std::map<label_t, int> visits;
      std::vector<Batch> batches = draw(sampler, 4);
      for (const Batch& b : batches) {
        check_shape(index, b, 6, 2);
        for (label_t l : b.classes) ++visits[l];
      }
      CHECK(visits.size() == 23);  // every class
      int twice = 0;
      for (auto& [label, n] : visits) {
        CHECK(n <= 2);
        twice += n == 2;
      }
      CHECK(twice == 1);  // 24 - 23 extra visits, all in the last batch
      std::set<label_t> earlier;
      for (int t = 0; t < 3; ++t)
        earlier.insert(batches[t].classes.begin(), batches[t].classes.end());
      CHECK(earlier.count(batches[3].classes.back()) == 1);
    }
  }
}

TEST_CASE("exemplars: without replacement, except for classes smaller than K", "[sampler]") {
  const DatasetIndex index = make_index({1, 2, 3, 4, 5, 9, 1, 30, 3, 2});
  protomem::IterateAndSample sampler(index, {5, 4, 11});
  protomem::UniformSampler uniform(index, {3, 4, 12});
  for (int t = 0; t < 40; ++t) {
    check_shape(index, sampler.next(), 5, 4);
    check_shape(index, uniform.next(), 3, 4);
  }
  // Every sample of a large class is eventually drawn (the draw is not stuck on a prefix).
  std::set<index_t> drawn;
  const index_t big = index.class_index(73);
  protomem::IterateAndSample again(index, {5, 4, 13});
  for (int t = 0; t < 200; ++t) {
    const Batch b = again.next();
    for (std::size_t i = 0; i < b.samples.size(); ++i) {
      if (b.labels[i] == 73) drawn.insert(b.samples[i]);
    }
  }
  CHECK(static_cast<index_t>(drawn.size()) == index.class_size(big));
}

TEST_CASE("uniform class sampling is uniform over classes", "[sampler]") {
  const index_t N = 50, C = 5;
  const DatasetIndex index = uniform_index(N, 2);
  protomem::UniformSampler sampler(index, {C, 1, 2024});
  std::vector<double> counts(static_cast<std::size_t>(N), 0.0);
  const int batches = 4000;
  for (int t = 0; t < batches; ++t) {
    const Batch b = sampler.next();
    REQUIRE(std::set<label_t>(b.classes.begin(), b.classes.end()).size() == 5);
    for (label_t l : b.classes) ++counts[static_cast<std::size_t>(index.class_index(l))];
  }
  const double expected = double(batches) * C / N;
  double chi2 = 0;
  for (double c : counts) chi2 += (c - expected) * (c - expected) / expected;
  // 49 degrees of freedom: mean 49, standard deviation about 10. Seeded, so it cannot flake; the
  // bound fails only for a grossly non-uniform sampler.
  CHECK(chi2 < 110);
  CHECK(chi2 > 10);  // and it is random, not a round-robin
}

namespace {
// A mining table for tests: rows of doppelgangers with cosines.
struct Table {
  std::map<label_t, std::vector<label_t>> rows;
  std::map<label_t, std::vector<float>> cos;
  protomem::Span<const label_t> doppelgangers(label_t l) const {
    auto it = rows.find(l);
    if (it == rows.end()) return {};
    return {it->second.data(), static_cast<index_t>(it->second.size())};
  }
  protomem::Span<const float> cosines(label_t l) const {
    auto it = cos.find(l);
    if (it == cos.end()) return {};
    return {it->second.data(), static_cast<index_t>(it->second.size())};
  }
};
}  // namespace

TEST_CASE("the doppelganger fill takes exactly its share of each batch, hardest first",
          "[sampler][mining]") {
  const index_t N = 40;
  const DatasetIndex index = uniform_index(N, 4);  // labels 3, 13, ..., 393
  const label_t modulus = 10 * N;
  Table table;
  protomem::detail::SplitMix64 rng(77);
  for (index_t c = 0; c < N; ++c) {
    const label_t l = index.label(c);
    table.rows[l] = {(l + 10) % modulus, (l + 20) % modulus, (l + 30) % modulus};
    const float top = 0.5f + 0.4f * static_cast<float>(rng.unit());
    table.cos[l] = {top, top - 0.1f, top - 0.2f};
  }
  table.cos[index.label(5)][1] = table.cos[index.label(5)][0];  // a tie: rank order decides
  for (double f : {0.25, 0.5, 0.3}) {
    protomem::IterateAndSample sampler(index, {8, 2, 5, f});
    const index_t mined = static_cast<index_t>(f * 8 + 0.5);
    CHECK(sampler.mined_per_batch() == mined);
    CHECK(sampler.base_per_batch() == 8 - mined);
    CHECK(sampler.batches_per_epoch() ==
          static_cast<std::uint64_t>((N + 8 - mined - 1) / (8 - mined)));
    for (int t = 0; t < 30; ++t) {
      const Batch b = sampler.next(table);
      check_shape(index, b, 8, 2);
      CHECK(b.base_classes == 8 - mined);
      CHECK(b.mined_classes == mined);  // exact: the table always has enough
      CHECK(b.random_fill_classes() == 0);
      // Independent re-derivation: all (cosine, rank, batch position, label), best first.
      std::vector<std::tuple<float, int, index_t, label_t>> all;
      for (index_t i = 0; i < b.base_classes; ++i) {
        const label_t base = b.classes[static_cast<std::size_t>(i)];
        for (int r = 0; r < 3; ++r)
          all.emplace_back(-table.cos[base][r], r, i, table.rows[base][r]);
      }
      std::sort(all.begin(), all.end());
      std::vector<label_t> expect(b.classes.begin(), b.classes.begin() + b.base_classes);
      for (const auto& entry : all) {
        const label_t d = std::get<3>(entry);
        if (static_cast<index_t>(expect.size()) == 8) break;
        if (std::find(expect.begin(), expect.end(), d) == expect.end()) expect.push_back(d);
      }
      CHECK(expect == b.classes);
    }
  }
  SECTION("too few doppelgangers: the rest is random fill") {
    Table sparse;
    protomem::UniformSampler sampler(index, {8, 2, 5, 0.5});
    const Batch first = sampler.next(sparse);
    CHECK(first.mined_classes == 0);
    CHECK(first.random_fill_classes() == 4);
    check_shape(index, first, 8, 2);
    for (index_t c = 0; c < N; ++c) sparse.rows[index.label(c)] = {(index.label(c) + 10) % modulus};
    for (int t = 0; t < 20; ++t) {
      const Batch b = sampler.next(sparse);  // no cosines: all count as 0
      check_shape(index, b, 8, 2);
      CHECK(b.mined_classes + b.random_fill_classes() == 4);
      CHECK(b.mined_classes >= 1);  // 4 base classes, one distinct doppelganger each
    }
    const Batch plain = sampler.next();  // without a table: all random fill
    CHECK(plain.random_fill_classes() == 4);
  }
}

TEST_CASE("a sampler resumes from its saved state exactly", "[sampler]") {
  const DatasetIndex index = make_index({3, 5, 8, 2, 6, 6, 1, 9, 4, 4, 7, 2, 2});
  const protomem::SamplerConfig config{5, 3, 99, 0.2};
  protomem::IterateAndSample uninterrupted(index, config);
  const auto all = draw(uninterrupted, 20);
  for (int t : {0, 1, 7, 13}) {
    protomem::IterateAndSample first(index, config);
    draw(first, t);
    std::stringstream state;
    first.save(state);
    protomem::IterateAndSample resumed(index, {5, 3, /*another seed*/ 1, 0.2});
    resumed.load(state);
    CHECK(resumed.position() == static_cast<std::uint64_t>(t));
    CHECK(resumed.seed() == 99);
    for (int u = t; u < 20; ++u) CHECK(same(resumed.next(), all[static_cast<std::size_t>(u)]));
  }
  protomem::UniformSampler u1(index, config);
  draw(u1, 5);
  std::stringstream state;
  u1.save(state);
  protomem::UniformSampler u2(index, config);
  u2.load(state);
  CHECK(same(u1.next(), u2.next()));
}

TEST_CASE("a memory checkpoint and the sampler state share one stream", "[sampler][checkpoint]") {
  const DatasetIndex index = uniform_index(12, 3);
  protomem::IterateAndSample sampler(index, {3, 2, 8});
  protomem::PrototypeMemory<double> memory({16, 4});
  auto step = [&](protomem::PrototypeMemory<double>& m, const Batch& b) {
    std::vector<double> e, g(b.samples.size() * 4);
    for (index_t s : b.samples) {
      for (int k = 0; k < 4; ++k) e.push_back(std::cos(double(s) * (k + 1)) + 0.1 * k);
    }
    const auto B = static_cast<index_t>(b.samples.size());
    return m.step(protomem::matrix_view<const double>(e.data(), B, 4),
                  protomem::label_view(b.labels.data(), B), protomem::matrix_view(g.data(), B, 4));
  };
  for (int t = 0; t < 5; ++t) step(memory, sampler.next());
  std::stringstream stream;
  memory.save(stream);
  sampler.save(stream);
  std::vector<double> expected;
  for (int t = 0; t < 6; ++t) expected.push_back(step(memory, sampler.next()));

  protomem::PrototypeMemory<double> memory2({16, 4});
  protomem::IterateAndSample sampler2(index, {3, 2, 0});
  memory2.load(stream);
  sampler2.load(stream);
  for (int t = 0; t < 6; ++t)
    CHECK(step(memory2, sampler2.next()) == expected[static_cast<std::size_t>(t)]);
}

TEST_CASE("a bad sampler state or configuration is rejected", "[sampler]") {
  const DatasetIndex index = uniform_index(10, 3);
  protomem::IterateAndSample sampler(index, {4, 2, 3});
  draw(sampler, 3);
  std::stringstream saved;
  sampler.save(saved);
  const std::string good = saved.str();
  protomem::IterateAndSample target(index, {4, 2, 5});
  draw(target, 1);
  auto rejects = [&](auto& s, const std::string& bytes, const std::string& message) {
    std::istringstream in(bytes);
    CHECK_THROWS_WITH(s.load(in), Contains(message));
  };
  for (std::size_t n = 0; n < good.size(); ++n) {
    std::istringstream in(good.substr(0, n));
    CHECK_THROWS_AS(target.load(in), protomem::Error);
  }
  for (std::size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    std::istringstream in(bad);
    CHECK_THROWS_AS(target.load(in), protomem::Error);
  }
  CHECK(target.position() == 1);  // unchanged by every failure
  CHECK(target.seed() == 5);
  rejects(target, "PROTOMEM........", "is not a protomem sampler state");
  protomem::UniformSampler uniform(index, {4, 2, 3});
  rejects(uniform, good,
          "is the state of a 'iterate_and_sample' sampler; this sampler is 'uniform_classes'");
  protomem::IterateAndSample wide(index, {5, 2, 3});
  rejects(wide, good,
          "was saved with C = 4, K = 2, doppelganger fraction 0; this sampler has C = 5");
  protomem::IterateAndSample mined(index, {4, 2, 3, 0.25});
  rejects(mined, good,
          "doppelganger fraction 0; this sampler has C = 4, K = 2, doppelganger fraction 0.25");
  const DatasetIndex other = uniform_index(11, 3);
  protomem::IterateAndSample elsewhere(other, {4, 2, 3});
  rejects(elsewhere, good, "was saved on another data set (30 samples, 10 classes");

  CHECK_THROWS_WITH(protomem::IterateAndSample(index, {11, 2, 0}),
                    Contains("the data set has 10 classes, fewer than the 11 a batch needs"));
  CHECK_THROWS_WITH(protomem::IterateAndSample(index, {0, 2, 0}),
                    Contains("classes_per_batch = 0 must be >= 1"));
  CHECK_THROWS_WITH(protomem::UniformSampler(index, {2, 0, 0}),
                    Contains("exemplars_per_class = 0 must be >= 1"));
  CHECK_THROWS_WITH(protomem::UniformSampler(index, {2, 1, 0, 1.0}),
                    Contains("doppelganger_fraction = 1 is outside [0, 1)"));
  CHECK_THROWS_WITH(protomem::UniformSampler(index, {2, 1, 0, 0.8}),
                    Contains("leaves no class of the 2 per batch to the class order"));
}
