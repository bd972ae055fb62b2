// protomem::detail::SlotMap — label -> slot lookup for the fixed-capacity prototype memory.
//
// The memory evicts and admits classes continuously (tens of millions of erase/insert pairs per
// training run), so the map uses open addressing with linear probing and backward-shift deletion:
// there are no tombstones, and probe lengths after any amount of churn are those of a table that
// was filled with the current labels alone.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <protomem/detail/random.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>
#include <vector>

namespace protomem::detail {

/// A hash map from a class label (label_t, >= 0) to a slot index (index_t, >= 0) with room for at
/// most `max_entries` labels.
/// Requires: labels and slots are >= 0; a label is inserted only while absent and the map is not
/// full (violations throw protomem::Error naming the label and leave the map unchanged).
/// Guarantees: the table is allocated once, in the constructor (insert, erase, find and clear never
/// allocate); the load factor stays <= 1/2; erase leaves no tombstones, so lookups cost the same
/// after any number of erase/insert pairs as right after filling with the same labels. Copies are
/// deep and independent.
class SlotMap {
 public:
  /// Probe-length statistics over the stored labels. A label's probe length is the number of
  /// table cells find() reads to reach it (1 when it sits in its home cell).
  struct ProbeStats {
    index_t max_probe_length = 0;    ///< 0 when the map is empty
    double mean_probe_length = 0.0;  ///< 0 when the map is empty
  };

  /// A map with room for `max_entries` labels; the table has the smallest power-of-two number of
  /// cells >= 2 * max_entries (at least 2), so it is at most half full.
  explicit SlotMap(std::size_t max_entries)
      : max_entries_(max_entries), table_(table_size_for(max_entries)), mask_(table_.size() - 1) {}

  /// The slot stored for `label`, or -1 when it is absent (including any negative label).
  index_t find(label_t label) const {
    // Empty cells hold {-1, -1}, so find(-1) lands on an empty cell and still returns -1; no
    // separate sign check is needed on this hot path.
    for (std::size_t i = home(label);; i = (i + 1) & mask_) {
      const Entry& e = table_[i];
      if (e.label == label || e.label == kEmpty) return e.slot;
    }
  }

  bool contains(label_t label) const { return label >= 0 && find(label) >= 0; }

  /// Stores label -> slot. Throws protomem::Error, leaving the map unchanged, when the label or
  /// slot is negative, the label is already present, or the map holds max_entries() labels.
  void insert(label_t label, index_t slot) {
    if (label < 0) fail("slot map: cannot insert label ", label, ": labels must be >= 0");
    if (slot < 0) {
      fail("slot map: cannot insert label ", label, " at slot ", slot, ": slots must be >= 0");
    }
    if (size_ >= max_entries_) {
      fail("slot map: cannot insert label ", label,
           ": the map is full (max_entries = ", max_entries_, ")");
    }
    for (std::size_t i = home(label);; i = (i + 1) & mask_) {
      Entry& e = table_[i];
      if (e.label == kEmpty) {
        e = Entry{label, slot};
        ++size_;
        return;
      }
      if (e.label == label) {
        fail("slot map: cannot insert label ", label, " at slot ", slot,
             ": the label is already present (at slot ", e.slot, ")");
      }
    }
  }

  /// Removes `label`; returns false (and changes nothing) when it is absent.
  bool erase(label_t label) {
    if (label < 0) return false;  // would otherwise match an empty cell
    std::size_t hole = home(label);
    for (;; hole = (hole + 1) & mask_) {
      const label_t l = table_[hole].label;
      if (l == label) break;
      if (l == kEmpty) return false;
    }
    // Backward-shift deletion: walk the cluster after the hole and move back every entry whose
    // home cell does not lie cyclically in (hole, j]; such an entry's probe path crosses the hole
    // and would break if the hole became empty. Stop at the first empty cell.
    for (std::size_t j = (hole + 1) & mask_;; j = (j + 1) & mask_) {
      const Entry& e = table_[j];
      if (e.label == kEmpty) break;
      const std::size_t home_j = home(e.label);
      if (((j - home_j) & mask_) >= ((j - hole) & mask_)) {
        table_[hole] = e;
        hole = j;
      }
    }
    table_[hole] = Entry{};
    --size_;
    return true;
  }

  /// Removes every label; keeps the table (no allocation).
  void clear() {
    std::fill(table_.begin(), table_.end(), Entry{});
    size_ = 0;
  }

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::size_t max_entries() const { return max_entries_; }
  /// Number of cells in the table (a power of two, >= 2 * max_entries()).
  std::size_t table_size() const { return table_.size(); }

  /// Scans the whole table: O(table_size()). Meant for tests and diagnostics, not hot paths.
  ProbeStats probe_stats() const {
    ProbeStats stats;
    if (size_ == 0) return stats;
    double total = 0.0;
    for (std::size_t i = 0; i < table_.size(); ++i) {
      if (table_[i].label == kEmpty) continue;
      const auto length = static_cast<index_t>(((i - home(table_[i].label)) & mask_) + 1);
      if (length > stats.max_probe_length) stats.max_probe_length = length;
      total += static_cast<double>(length);
    }
    stats.mean_probe_length = total / static_cast<double>(size_);
    return stats;
  }

  index_t max_probe_length() const { return probe_stats().max_probe_length; }

  /// The splitmix64 finaliser: a bijection on 64 bits whose low bits depend on every input bit,
  /// so sequential labels and labels that are multiples of the table size spread over the table.
  /// Unseeded: labels come from the user's own data, not from an adversary.
  static std::uint64_t hash(label_t label) { return mix64(static_cast<std::uint64_t>(label)); }

 private:
  static constexpr label_t kEmpty = -1;

  struct Entry {
    label_t label = kEmpty;
    index_t slot = -1;
  };

  static std::size_t table_size_for(std::size_t max_entries) {
    // Cap so that 2 * max_entries rounded up to a power of two neither overflows nor exceeds
    // what a vector can hold; anything above is a bad argument, not an allocation failure.
    const std::size_t limit = std::vector<Entry>().max_size() / 4;
    if (max_entries > limit) {
      fail("slot map: max_entries = ", max_entries, " is too large (at most ", limit, ")");
    }
    std::size_t cells = 2;
    while (cells < 2 * max_entries) cells *= 2;
    return cells;
  }

  std::size_t home(label_t label) const { return static_cast<std::size_t>(hash(label)) & mask_; }

  std::size_t max_entries_;
  std::size_t size_ = 0;
  std::vector<Entry> table_;
  std::size_t mask_;
};

}  // namespace protomem::detail
