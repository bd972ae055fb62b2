// PrototypeMemory's state and bookkeeping: what is stored after a step, the eviction order of each
// queue policy against an independent simulation, the ages bound, full-softmax parity, the mining
// seam, and the two-halves step.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <type_traits>
#include <vector>

#include <protomem/memory.hpp>

#include "support/batch.hpp"
#include "support/naive.hpp"

namespace {

using protomem::index_t;
using protomem::label_t;

// A batch of K exemplars for each label, around a per-label direction, in dimension D.
using Batch = test_support::Batch<double>;

Batch make_batch(const std::vector<label_t>& classes, int exemplars, index_t dim,
                 std::mt19937_64& rng, double spread = 0.5) {
  return test_support::make_batch<double>(classes, exemplars, dim, rng, {spread});
}

template <class Memory>
double run_step(Memory& memory, const Batch& batch, std::vector<double>* gradient = nullptr) {
  std::vector<double> local(static_cast<std::size_t>(batch.rows() * batch.dim));
  auto& g = gradient ? *gradient : local;
  g.resize(local.size());
  return memory.step(protomem::matrix_view(batch.embeddings.data(), batch.rows(), batch.dim),
                     protomem::label_view(batch.labels.data(), batch.rows()),
                     protomem::matrix_view(g.data(), batch.rows(), batch.dim));
}

template <class Memory>
std::vector<label_t> queue_order(const Memory& memory) {
  std::vector<label_t> order;
  for (auto record : memory) order.push_back(record.label);
  return order;
}

// An independent model of the queue: a list of (label, last written), oldest first.
struct ShadowQueue {
  bool refresh_moves_to_back;
  std::size_t capacity;
  std::deque<std::pair<label_t, std::uint64_t>> entries;
  std::uint64_t step = 0;

  void write(std::vector<label_t> batch) {
    std::sort(batch.begin(), batch.end());
    batch.erase(std::unique(batch.begin(), batch.end()), batch.end());
    const std::set<label_t> in_batch(batch.begin(), batch.end());
    ++step;
    std::vector<label_t> refreshed, fresh;
    for (label_t label : batch) {
      auto it = std::find_if(entries.begin(), entries.end(), [&](auto& e) { return e.first == label; });
      (it == entries.end() ? fresh : refreshed).push_back(label);
    }
    // Victims: the oldest entries that hold no class of this batch, chosen before any move.
    std::size_t room = capacity - entries.size();
    std::vector<label_t> victims;
    for (const auto& e : entries) {
      if (victims.size() + room >= fresh.size()) break;
      if (!in_batch.count(e.first)) victims.push_back(e.first);
    }
    for (label_t label : refreshed) {
      auto it = std::find_if(entries.begin(), entries.end(), [&](auto& e) { return e.first == label; });
      it->second = step;
      if (refresh_moves_to_back) {
        entries.erase(it);
        entries.push_back({label, step});
      }
    }
    for (label_t victim : victims) {
      entries.erase(std::find_if(entries.begin(), entries.end(),
                                 [&](auto& e) { return e.first == victim; }));
    }
    for (label_t label : fresh) entries.push_back({label, step});
  }
};

template <class Queue>
void check_against_shadow(std::uint64_t seed) {
  const index_t capacity = 24, dim = 3;
  protomem::PrototypeMemory<double> memory({capacity, dim}, Queue{});
  // The shadow's own statement of each order: least recently written moves a refreshed class to
  // the back, first in first out leaves it.
  const bool moves_to_back = std::is_same_v<Queue, protomem::LeastRecentlyWritten>;
  ShadowQueue shadow{moves_to_back, static_cast<std::size_t>(capacity), {}, 0};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<label_t> label(0, 60);
  std::uniform_int_distribution<int> classes(1, 10), exemplars(1, 3);
  std::uint64_t evictions = 0;
  for (int t = 0; t < 3000; ++t) {
    std::vector<label_t> batch_classes;
    const int c = classes(rng);
    while (static_cast<int>(batch_classes.size()) < c) {
      const label_t l = label(rng);
      if (std::find(batch_classes.begin(), batch_classes.end(), l) == batch_classes.end()) {
        batch_classes.push_back(l);
      }
    }
    run_step(memory, make_batch(batch_classes, exemplars(rng), dim, rng));
    shadow.write(batch_classes);

    std::vector<label_t> expected;
    for (const auto& e : shadow.entries) expected.push_back(e.first);
    REQUIRE(queue_order(memory) == expected);
    REQUIRE(memory.size() == static_cast<index_t>(expected.size()));
    for (const auto& [l, written] : shadow.entries) {
      REQUIRE(memory.contains(l));
      REQUIRE(memory.last_written(l) == written);
    }
    // One slot per label: iteration yields each label once.
    std::set<label_t> unique(expected.begin(), expected.end());
    REQUIRE(unique.size() == expected.size());
    evictions = memory.stats().evictions;
  }
  CHECK(evictions > 1000);
  CHECK(memory.stats().steps == 3000);
  CHECK(memory.stats().insertions == memory.stats().evictions + static_cast<std::uint64_t>(capacity));
}

}  // namespace

TEST_CASE("a step stores each batch class's normalised exemplar mean", "[memory]") {
  std::mt19937_64 rng(1);
  protomem::PrototypeMemory<double> memory({8, 4});
  CHECK(memory.size() == 0);
  CHECK(memory.capacity() == 8);
  CHECK(memory.dim() == 4);
  const Batch batch = make_batch({5, 2, 9}, 3, 4, rng);
  run_step(memory, batch);
  CHECK(memory.size() == 3);
  const auto expected = naive::batch_prototypes(batch.embeddings.data(), 4, batch.labels, 4);
  for (const auto& [label, p] : expected) {
    REQUIRE(memory.contains(label));
    const auto stored = memory.prototype(label);
    REQUIRE(stored.size == 4);
    for (index_t k = 0; k < 4; ++k) CHECK(stored[k] == Approx(p[k]).margin(1e-15));
    CHECK(memory.last_written(label) == 1);
  }
  CHECK_FALSE(memory.contains(3));
  CHECK_FALSE(memory.contains(-1));
  CHECK_THROWS_AS(memory.prototype(3), protomem::Error);
  CHECK_THROWS_AS(memory.last_written(3), protomem::Error);
  CHECK(memory.stats().insertions == 3);
  CHECK(memory.stats().refreshes == 0);

  run_step(memory, make_batch({2, 4}, 2, 4, rng));
  CHECK(memory.stats().refreshes == 1);
  CHECK(memory.stats().insertions == 4);
  CHECK(memory.last_written(2) == 2);
  CHECK(memory.last_written(5) == 1);
  CHECK(memory.step_count() == 2);

  memory.clear();
  CHECK(memory.size() == 0);
  CHECK(memory.step_count() == 0);
  CHECK(memory.begin() == memory.end());
  CHECK_FALSE(memory.contains(2));
}

TEST_CASE("momentum refresh blends the stored prototype with the fresh one", "[memory][policies]") {
  std::mt19937_64 rng(2);
  protomem::PrototypeMemory<double> memory({4, 3}, protomem::CosFace(), protomem::ExemplarMean(),
                                           protomem::Momentum(0.8));
  const Batch first = make_batch({1}, 2, 3, rng, 1.0), second = make_batch({1}, 2, 3, rng, 1.0);
  run_step(memory, first);
  const auto old_p = naive::batch_prototypes(first.embeddings.data(), 3, first.labels, 3)[1];
  const auto new_p = naive::batch_prototypes(second.embeddings.data(), 3, second.labels, 3)[1];
  run_step(memory, second);
  std::vector<double> blend(3);
  for (int k = 0; k < 3; ++k) blend[k] = 0.8 * old_p[k] + 0.2 * new_p[k];
  blend = naive::normalized(blend);
  for (int k = 0; k < 3; ++k) CHECK(memory.prototype(1)[k] == Approx(blend[k]).margin(1e-15));
}

TEST_CASE("eviction order follows the queue policy", "[memory][queue]") {
  std::mt19937_64 rng(3);
  // Capacity 3: store 1, 2, 3; refresh 1; then a new class evicts the oldest.
  protomem::PrototypeMemory<double> lrw({3, 2});
  protomem::PrototypeMemory<double> fifo({3, 2}, protomem::FirstInFirstOut{});
  auto feed = [&](auto& memory) {
    run_step(memory, make_batch({1, 2, 3}, 1, 2, rng));
    run_step(memory, make_batch({1}, 2, 2, rng));
    run_step(memory, make_batch({4}, 2, 2, rng));
  };
  feed(lrw);
  feed(fifo);
  CHECK(queue_order(lrw) == std::vector<label_t>{3, 1, 4});   // 1 was refreshed: 2 is oldest
  CHECK(queue_order(fifo) == std::vector<label_t>{2, 3, 4});  // 1 was inserted first
  // A class of the batch is never evicted for another class of the same batch, even when it
  // is at the front of the queue (FIFO keeps refreshed classes in place).
  run_step(fifo, make_batch({2, 5}, 2, 2, rng));
  CHECK(queue_order(fifo) == std::vector<label_t>{2, 4, 5});
  CHECK(fifo.stats().evictions == 2);
}

TEST_CASE("randomised runs agree with an independent model of each queue", "[memory][queue]") {
  check_against_shadow<protomem::LeastRecentlyWritten>(11);
  check_against_shadow<protomem::FirstInFirstOut>(12);
}

TEST_CASE("under a class-iterating feed no slot is older than ceil(M / C) steps", "[memory][queue]") {
  const index_t capacity = 96, dim = 2;
  const int per_batch = 8, num_classes = 500;
  const std::uint64_t bound = (capacity + per_batch - 1) / per_batch;
  auto run = [&](auto& memory) {
    std::mt19937_64 rng(5);
    std::vector<label_t> order(num_classes);
    std::iota(order.begin(), order.end(), 0);
    std::uint64_t worst = 0;
    for (int epoch = 0; epoch < 4; ++epoch) {
      std::shuffle(order.begin(), order.end(), rng);
      for (int b = 0; b + per_batch <= num_classes; b += per_batch) {
        run_step(memory, make_batch({order.begin() + b, order.begin() + b + per_batch}, 2, dim, rng));
        if (memory.size() < capacity) continue;
        for (auto record : memory) worst = std::max(worst, memory.step_count() - record.last_written);
      }
    }
    return worst;
  };
  protomem::PrototypeMemory<double> lrw({capacity, dim});
  protomem::PrototypeMemory<double> fifo({capacity, dim}, protomem::FirstInFirstOut{});
  const auto worst_lrw = run(lrw), worst_fifo = run(fifo);
  INFO("worst age: least recently written " << worst_lrw << ", FIFO " << worst_fifo << ", bound "
                                            << bound);
  CHECK(worst_lrw <= bound);
  // FIFO gives no such guarantee: a refresh (a class seen again across an epoch boundary) leaves
  // the queue where it is, so that step evicts fewer slots and the oldest survives longer.
  CHECK(worst_fifo <= 2 * bound);
  CHECK(worst_lrw >= bound - 1);  // the bound is tight: the memory really is used in full
}

TEST_CASE("with capacity >= number of classes the loss is the full softmax", "[memory]") {
  std::mt19937_64 rng(6);
  const index_t dim = 6;
  const int num_classes = 20;
  // The full softmax below counts every column fully: no aging.
  protomem::PrototypeMemory<double> memory({32, dim}, protomem::ArcFace(16.0, 0.4),
                                           protomem::NoAging{});
  for (int c = 0; c < num_classes; c += 4) run_step(memory, make_batch({c, c + 1, c + 2, c + 3}, 3, dim, rng));
  REQUIRE(memory.size() == num_classes);

  const Batch batch = make_batch({3, 7, 11, 12, 19}, 3, dim, rng);
  std::vector<double> gradient(static_cast<std::size_t>(batch.rows() * dim));
  const double loss = memory
                          .forward(protomem::matrix_view(batch.embeddings.data(), batch.rows(), dim),
                                   protomem::label_view(batch.labels.data(), batch.rows()),
                                   protomem::matrix_view(gradient.data(), batch.rows(), dim))
                          .loss;
  // Full softmax: a classifier with one row per class, the stored prototype, except that the
  // batch's classes use their fresh prototypes.
  auto classifier = std::vector<std::vector<double>>(num_classes);
  for (auto record : memory) classifier[record.label] = {record.prototype.begin(), record.prototype.end()};
  for (const auto& [label, p] : naive::batch_prototypes(batch.embeddings.data(), dim, batch.labels, dim)) {
    classifier[label] = p;
  }
  double total = 0;
  for (index_t i = 0; i < batch.rows(); ++i) {
    const auto x = naive::normalized({batch.embeddings.begin() + i * dim, batch.embeddings.begin() + (i + 1) * dim});
    std::vector<double> z(num_classes);
    for (int c = 0; c < num_classes; ++c) {
      const double cos = naive::dot(x, classifier[c]);
      z[c] = 16.0 * (c == batch.labels[i] ? memory.margin().target(cos) : cos);
    }
    double sum = 0;
    for (double v : z) sum += std::exp(v);
    total += std::log(sum) - z[batch.labels[i]];
  }
  CHECK(loss == Approx(total / batch.rows()).epsilon(1e-12));
  memory.commit();
}

TEST_CASE("the mining seam reports the most similar stored classes", "[memory][mining]") {
  std::mt19937_64 rng(7);
  const index_t dim = 5;
  protomem::Config config{64, dim};
  config.similar_k = 4;
  config.workspace_bytes = 6 * sizeof(double) * 5;  // several tiles
  protomem::PrototypeMemory<double> memory(config);
  for (int c = 0; c < 30; c += 5) run_step(memory, make_batch({c, c + 1, c + 2, c + 3, c + 4}, 2, dim, rng));
  const auto stored = naive::stored_classes(memory);

  const Batch batch = make_batch({2, 40, 41}, 2, dim, rng);
  std::vector<double> gradient(static_cast<std::size_t>(batch.rows() * dim));
  const auto result = memory.forward(protomem::matrix_view(batch.embeddings.data(), batch.rows(), dim),
                                     protomem::label_view(batch.labels.data(), batch.rows()),
                                     protomem::matrix_view(gradient.data(), batch.rows(), dim));
  REQUIRE(result.classes == std::vector<label_t>{2, 40, 41});
  REQUIRE(result.similar_k == 4);
  const auto fresh = naive::batch_prototypes(batch.embeddings.data(), dim, batch.labels, dim);
  for (std::size_t c = 0; c < 3; ++c) {
    std::vector<std::pair<double, label_t>> ranked;
    for (const auto& s : stored) {
      if (s.label == 2) continue;  // a batch class's own stale copy is not a candidate
      ranked.push_back({naive::dot(fresh.at(result.classes[c]), s.prototype), s.label});
    }
    std::sort(ranked.rbegin(), ranked.rend());
    for (int r = 0; r < 4; ++r) {
      CHECK(result.similar[c * 4 + r] == ranked[r].second);
      CHECK(result.similar_cosines[c * 4 + r] == Approx(ranked[r].first).margin(1e-12));
    }
  }
  memory.discard();
}

TEST_CASE("forward and commit are the step in two halves", "[memory]") {
  std::mt19937_64 rng(8);
  protomem::PrototypeMemory<double> halves({16, 4}), whole({16, 4});
  for (int t = 0; t < 6; ++t) {
    const Batch batch = make_batch({t, t + 1, t + 5}, 2, 4, rng);
    std::vector<double> g1(batch.embeddings.size()), g2(batch.embeddings.size());
    const index_t size_before = halves.size();
    const double l1 = run_step(whole, batch, &g1);
    const double l2 = halves
                          .forward(protomem::matrix_view(batch.embeddings.data(), batch.rows(), 4),
                                   protomem::label_view(batch.labels.data(), batch.rows()),
                                   protomem::matrix_view(g2.data(), batch.rows(), 4))
                          .loss;
    CHECK(halves.pending());
    CHECK(halves.size() == size_before);  // nothing is stored before commit()
    halves.commit();
    CHECK_FALSE(halves.pending());
    CHECK(l1 == l2);
    CHECK(g1 == g2);
    CHECK(queue_order(halves) == queue_order(whole));
  }
  CHECK_THROWS_WITH(halves.commit(), Catch::Contains("commit() without a pending forward()"));
  CHECK_THROWS_AS(halves.discard(), protomem::Error);
}

TEST_CASE("the gradient may overwrite the embeddings in place", "[memory]") {
  std::mt19937_64 rng(9);
  protomem::PrototypeMemory<double> a({16, 4}), b({16, 4});
  const Batch warm_up = make_batch({1, 2}, 2, 4, rng);
  run_step(a, warm_up);
  run_step(b, warm_up);
  Batch batch = make_batch({1, 3, 4}, 2, 4, rng);
  std::vector<double> separate;
  const double loss = run_step(a, batch, &separate);
  const double in_place = b.step(protomem::matrix_view<const double>(batch.embeddings.data(), batch.rows(), 4),
                                 protomem::label_view(batch.labels.data(), batch.rows()),
                                 protomem::matrix_view(batch.embeddings.data(), batch.rows(), 4));
  CHECK(loss == in_place);
  CHECK(batch.embeddings == separate);
}

TEST_CASE("float and double memories agree", "[memory]") {
  std::mt19937_64 rng(10);
  protomem::PrototypeMemory<double> d({32, 8});
  protomem::PrototypeMemory<float> f({32, 8});
  for (int t = 0; t < 12; ++t) {
    const Batch batch = make_batch({3 * t, 3 * t + 1, t}, 3, 8, rng);
    std::vector<double> gd;
    const double ld = run_step(d, batch, &gd);
    std::vector<float> ef(batch.embeddings.begin(), batch.embeddings.end()), gf(ef.size());
    const float lf = f.step(protomem::matrix_view<const float>(ef.data(), batch.rows(), 8),
                            protomem::label_view(batch.labels.data(), batch.rows()),
                            protomem::matrix_view(gf.data(), batch.rows(), 8));
    CHECK(lf == Approx(ld).epsilon(1e-4).margin(1e-4));
    double diff = 0, norm = 0;
    for (std::size_t k = 0; k < gd.size(); ++k) {
      diff += (gf[k] - gd[k]) * (gf[k] - gd[k]);
      norm += gd[k] * gd[k];
    }
    CHECK(std::sqrt(diff) <= 1e-4 * std::sqrt(norm) + 1e-7);
  }
}

TEST_CASE("a long run of evictions keeps the memory consistent", "[memory][slow]") {
  // 200,000 evictions through a small memory; the label -> slot map must stay exact.
  protomem::PrototypeMemory<float> memory({64, 2});
  std::vector<float> e = {1.0f, 0.5f}, g(2);
  label_t next = 0;
  for (int t = 0; t < 200064; ++t) {
    const label_t label = next++;
    memory.step(protomem::matrix_view<const float>(e.data(), 1, 2), protomem::label_view(&label, 1),
                protomem::matrix_view(g.data(), 1, 2));
  }
  CHECK(memory.stats().evictions == 200000);
  CHECK(memory.size() == 64);
  label_t expected = next - 64;
  for (auto record : memory) CHECK(record.label == expected++);
  CHECK_FALSE(memory.contains(next - 65));
}
