// Slot tables on the host: which class each slot holds (slot map) and an order through the
// occupied slots (SlotTable: the doppelganger table of policies/mining.hpp); the record list a
// checkpoint is read into and written from (Book: records in eviction order, their last-written
// steps and the counters); and SlotWrite, what a commit writes for one batch class.
//
// The memory's own bookkeeping, for one process or many, is detail/shard_plan.hpp (ShardBook,
// plan_shard_writes, apply_shard_writes).
//
// Requires: occupied slots are [0, used). Guarantees: SlotTable::claim_least_recent cannot throw.
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

/// A checkpoint's records: a slot table in eviction order, plus when each slot was last written
/// and the counters.
struct Book : SlotTable {
  explicit Book(index_t capacity)
      : SlotTable(capacity), written(static_cast<std::size_t>(capacity), 0) {}
  std::vector<std::uint64_t> written;  // per slot: the step that last wrote it
  Stats stats;

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

}  // namespace detail
}  // namespace protomem
