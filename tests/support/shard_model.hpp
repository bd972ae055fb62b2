// Test support: the single-process memory's logical bookkeeping, modelled as simply as possible -
// a list of (label, last written, slot) ordered by eviction order, oldest first, searched
// linearly - and a random stream of global batches split unevenly over W ranks. The model shares
// no code with protomem's SlotMap/SlotQueue/ShardBook; tests/test_shard_plan.cpp also checks it
// against the real PrototypeMemory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <protomem/view.hpp>
#include <random>
#include <vector>

namespace protomem::test {

struct ModelEntry {
  label_t label;
  std::uint64_t written;
  index_t slot;
  bool operator==(const ModelEntry& o) const {
    return label == o.label && written == o.written && slot == o.slot;
  }
};

class LogicalModel {
 public:
  LogicalModel(index_t capacity, bool refresh_moves_to_back)
      : capacity_(capacity), moves_to_back_(refresh_moves_to_back) {}

  /// One step with the batch's distinct classes (ascending).
  void step(const std::vector<label_t>& classes) {
    ++steps;
    auto in_batch = [&](label_t l) {
      return std::binary_search(classes.begin(), classes.end(), l);
    };
    auto stored = [&](label_t l) {
      return std::any_of(order.begin(), order.end(),
                         [&](const ModelEntry& e) { return e.label == l; });
    };
    std::vector<label_t> refreshed;
    std::vector<std::pair<label_t, index_t>> placed;  // new class, its slot
    std::vector<bool> victim(order.size(), false);
    auto next_slot = static_cast<index_t>(order.size());
    std::size_t scan = 0;  // victims: oldest first, never a class of this batch
    for (label_t l : classes) {
      if (stored(l)) {
        refreshed.push_back(l);
        ++refreshes;
        continue;
      }
      ++insertions;
      if (next_slot < capacity_) {
        placed.push_back({l, next_slot++});
        continue;
      }
      while (in_batch(order[scan].label)) ++scan;
      victim[scan] = true;
      placed.push_back({l, order[scan].slot});
      ++scan;
      ++evictions;
    }
    std::vector<ModelEntry> next;
    std::vector<ModelEntry> moved;
    for (std::size_t i = 0; i < order.size(); ++i) {
      if (victim[i]) continue;
      ModelEntry e = order[i];
      if (in_batch(e.label)) {
        e.written = steps;
        if (moves_to_back_) {
          moved.push_back(e);  // in ascending label order, since classes are
          continue;
        }
      }
      next.push_back(e);
    }
    std::sort(moved.begin(), moved.end(),
              [](const ModelEntry& a, const ModelEntry& b) { return a.label < b.label; });
    next.insert(next.end(), moved.begin(), moved.end());
    for (const auto& p : placed) next.push_back({p.first, steps, p.second});
    order = std::move(next);
  }

  std::vector<ModelEntry> order;  // eviction order, oldest first
  std::uint64_t steps = 0, refreshes = 0, insertions = 0, evictions = 0;

 private:
  index_t capacity_;
  bool moves_to_back_;
};

/// A random global batch for each step, and its split over ranks.
class BatchStream {
 public:
  BatchStream(std::uint64_t seed, index_t capacity, index_t max_batch)
      : rng_(seed), capacity_(capacity), max_batch_(max_batch) {}

  /// B_total >= 1 labels: half from a hot range that keeps being refreshed, half from a range four
  /// times the capacity (so classes keep being evicted), with repeats.
  std::vector<label_t> next_batch() {
    const index_t B = std::uniform_int_distribution<index_t>(1, max_batch_)(rng_);
    std::vector<label_t> labels(static_cast<std::size_t>(B));
    const index_t hot = std::max<index_t>(1, capacity_ / 2);
    for (label_t& l : labels) {
      l = coin(rng_) ? std::uniform_int_distribution<label_t>(0, hot - 1)(rng_)
                     : std::uniform_int_distribution<label_t>(0, 4 * capacity_ - 1)(rng_);
    }
    return labels;
  }

  /// Cuts `labels` into world_size consecutive pieces of random, uneven sizes; often one rank (or
  /// several) gets nothing.
  std::vector<std::vector<label_t>> split(const std::vector<label_t>& labels, int world_size) {
    std::vector<std::size_t> cuts{0, labels.size()};
    for (int r = 1; r < world_size; ++r) {
      cuts.push_back(std::uniform_int_distribution<std::size_t>(0, labels.size())(rng_));
    }
    std::sort(cuts.begin(), cuts.end());
    if (world_size > 1 && coin(rng_)) {  // rank r surely gets nothing
      const auto r =
          std::uniform_int_distribution<std::size_t>(0, std::size_t(world_size) - 1)(rng_);
      if (r + 1 < std::size_t(world_size)) {
        cuts[r + 1] = cuts[r];  // rank r + 1 takes rank r's share
      } else {
        cuts[r] = cuts[r + 1];  // the last rank's share goes to the one before
      }
    }
    std::vector<std::vector<label_t>> pieces(static_cast<std::size_t>(world_size));
    for (int r = 0; r < world_size; ++r) {
      pieces[std::size_t(r)].assign(labels.begin() + std::ptrdiff_t(cuts[std::size_t(r)]),
                                    labels.begin() + std::ptrdiff_t(cuts[std::size_t(r) + 1]));
    }
    return pieces;
  }

  static std::vector<label_t> classes_of(std::vector<label_t> labels) {
    std::sort(labels.begin(), labels.end());
    labels.erase(std::unique(labels.begin(), labels.end()), labels.end());
    return labels;
  }

 private:
  std::mt19937_64 rng_;
  std::bernoulli_distribution coin{0.5};
  index_t capacity_, max_batch_;
};

}  // namespace protomem::test
