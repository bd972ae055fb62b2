// The memory's bookkeeping of slots, on the host: which class each slot holds (slot map), the
// eviction order (a queue through the slots, ordered by the Queue policy), when each slot was last
// written, the counters; and the two halves of a commit that touch it: plan_writes() (may throw,
// changes nothing) and apply_writes() (noexcept, after the backend has stored the prototypes).
//
// Requires: occupied slots are [0, used); a plan is applied to the Book it was planned on.
// Guarantees: plan_writes() is O(C) beyond the slot-map lookups and allocates O(C), never O(M);
// apply_writes() cannot throw or allocate, so that a commit is all-or-nothing. A Book is built
// aside and swapped in by load() and assign() (add_record() for each record).
#pragma once

#include <algorithm>
#include <cstdint>
#include <protomem/detail/slot_map.hpp>
#include <protomem/detail/slot_queue.hpp>
#include <protomem/types.hpp>
#include <protomem/view.hpp>
#include <vector>

namespace protomem {

namespace detail {

/// What a commit writes for one batch class: its slot and whether the slot held the same class
/// (a refresh, which blends through the Refresh policy) or is taken over (a plain write). The
/// bookkeeping plans these; the backend stores the prototypes they name (backend/seam.hpp).
struct SlotWrite {
  index_t batch_class;
  index_t slot;
  bool refresh;
};

/// Classes in a fixed number of slots: which class each slot holds, the slot of each class, and
/// an order through the occupied slots (least recent at the front). Occupied slots are [0, used):
/// slots are taken in order and a freed slot is reused at once. The memory's Book and the
/// doppelganger table (policies/mining.hpp) are both one.
struct SlotTable {
  explicit SlotTable(index_t capacity)
      : label(static_cast<std::size_t>(capacity), -1),
        map(static_cast<std::size_t>(capacity)),
        queue(capacity),
        capacity_(capacity) {}
  std::vector<label_t> label;  // per slot (-1: never used)
  SlotMap map;                 // label -> slot
  SlotQueue queue;             // the order, least recent at the front
  index_t used = 0;

  index_t find(label_t label_value) const { return map.find(label_value); }
  index_t capacity() const { return capacity_; }

  /// The slot of `label_value`, made the most recent: its own, an unused one, or the least recent
  /// one's (whose class leaves). Cannot throw: the label is >= 0 and a full map frees an entry
  /// first.
  index_t claim_least_recent(label_t label_value) noexcept {
    index_t slot = map.find(label_value);
    if (slot >= 0) {
      queue.move_to_back(slot);
      return slot;
    }
    if (used < capacity_) {
      slot = used++;
    } else {
      slot = queue.front();
      queue.unlink(slot);
      map.erase(label[static_cast<std::size_t>(slot)]);
    }
    label[static_cast<std::size_t>(slot)] = label_value;
    map.insert(label_value, slot);
    queue.push_back(slot);
    return slot;
  }

  /// Forgets every class (the slots' labels stay until overwritten; used = 0 makes them free).
  void clear() noexcept {
    map.clear();
    queue.clear();
    used = 0;
  }

 private:
  index_t capacity_;
};

/// The memory's bookkeeping: its slot table in eviction order (the Queue policy's), plus when each
/// slot was last written and the counters.
struct Book : SlotTable {
  explicit Book(index_t capacity)
      : SlotTable(capacity), written(static_cast<std::size_t>(capacity), 0) {}
  std::vector<std::uint64_t> written;  // per slot: the step that last wrote it
  Stats stats;

  /// The slots of those `labels` that are stored, ascending.
  std::vector<index_t> slots_of(const std::vector<label_t>& labels) const {
    std::vector<index_t> slots;
    for (label_t label_value : labels) {
      const index_t slot = map.find(label_value);
      if (slot >= 0) slots.push_back(slot);
    }
    std::sort(slots.begin(), slots.end());
    return slots;
  }
  bool slot_taken(index_t slot) const { return label[static_cast<std::size_t>(slot)] >= 0; }

  /// A record of a checkpoint or of assign(), appended at the back of the eviction order. The
  /// caller has checked the label (>= 0, not yet present) and the slot (free, < capacity).
  void add_record(label_t label_value, index_t slot, std::uint64_t last_written) {
    label[static_cast<std::size_t>(slot)] = label_value;
    written[static_cast<std::size_t>(slot)] = last_written;
    map.insert(label_value, slot);
    queue.push_back(slot);
  }
};

/// Decides the slot of each batch class without changing anything: refresh where stored, else an
/// empty slot, else the oldest slot in eviction order that holds no class of this batch.
inline std::vector<SlotWrite> plan_writes(const Book& book, const std::vector<label_t>& classes,
                                          index_t capacity) {
  std::vector<SlotWrite> writes;
  writes.reserve(classes.size());
  std::vector<index_t> fresh_classes;
  // Slots refreshed by this batch (at most C, sorted): eviction skips them. A sorted list, not a
  // flag per slot, so that a step allocates O(C), not O(M) (docs/performance.md, peak memory).
  std::vector<index_t> refreshed;
  for (index_t c = 0; c < static_cast<index_t>(classes.size()); ++c) {
    const index_t slot = book.map.find(classes[static_cast<std::size_t>(c)]);
    if (slot >= 0) {
      writes.push_back({c, slot, true});
      refreshed.push_back(slot);
    } else {
      fresh_classes.push_back(c);
    }
  }
  std::sort(refreshed.begin(), refreshed.end());
  index_t next_empty = book.used;
  index_t victim = book.queue.front();
  for (index_t c : fresh_classes) {
    if (next_empty < capacity) {
      writes.push_back({c, next_empty++, false});
      continue;
    }
    while (std::binary_search(refreshed.begin(), refreshed.end(), victim)) {
      victim = book.queue.next(victim);
    }
    writes.push_back({c, victim, false});
    victim = book.queue.next(victim);
  }
  return writes;
}

/// Applies a plan to the bookkeeping (the backend has written the prototypes): `classes` are the
/// batch's labels the plan was made for; the Queue policy places refreshed and inserted slots in
/// the eviction order. Cannot throw (the Queue policy's members are noexcept, checked at compile
/// time).
template <class Queue>
void apply_writes(Book& book, const Queue& queue, const std::vector<SlotWrite>& writes,
                  const std::vector<label_t>& classes) noexcept {
  const std::uint64_t step = ++book.stats.steps;
  for (const SlotWrite& w : writes) {
    const label_t label = classes[static_cast<std::size_t>(w.batch_class)];
    const auto slot = static_cast<std::size_t>(w.slot);
    if (w.refresh) {
      ++book.stats.refreshes;
      queue.on_refresh(book.queue, w.slot);
    } else {
      if (w.slot < book.used) {
        ++book.stats.evictions;
        book.map.erase(book.label[slot]);
        book.queue.unlink(w.slot);
      } else {
        book.used = w.slot + 1;
      }
      ++book.stats.insertions;
      book.label[slot] = label;
      book.map.insert(label, w.slot);
      queue.on_insert(book.queue, w.slot);
    }
    book.written[slot] = step;
  }
}

}  // namespace detail
}  // namespace protomem
