// Queue policies: the order in which a full memory gives up slots. A slot is never evicted in
// favour of a class of the same batch.
//
// Requires, of a Queue policy P (PrototypeMemory checks each member at compile time and names the
// one that is missing: detail::check_queue_policy at the end of this header):
//   static constexpr const char* name;           stored in checkpoints
//   void on_insert(detail::SlotQueue& order, index_t slot) const noexcept;
//       a class has entered `slot` (an empty one, or one just evicted and unlinked): link it
//   void on_refresh(detail::SlotQueue& order, index_t slot) const noexcept;
//       the class in `slot` was written again: move it, or leave it where it is
//   void save(detail::ByteWriter&) const;        its parameters, for checkpoints
//   void load(detail::ByteReader&);              the same; bad values throw protomem::Error
//   copy-constructible and move-assignable       load() checks a copy, then moves it in
// `order` is the eviction order the memory's bookkeeping keeps (detail/bookkeeping.hpp): a queue
// through the occupied slots whose front is the next victim; the bookkeeping evicts from the front
// (skipping slots of the step's own classes) and unlinks an evicted slot before re-inserting it.
// on_insert / on_refresh are noexcept because they run after the prototypes are written.
// Guarantees: the rules below, whatever the backend (the bookkeeping runs on the host).
//
// Alternatives, side by side:
//   LeastRecentlyWritten  evict the slot written longest ago; a refresh counts as a write
//                         (default). Under a class-iterating sampler with C classes per batch, no
//                         slot of a full memory of M slots is older than ceil(M / C) steps.
//   FirstInFirstOut       evict the class inserted longest ago; refreshes do not change the order,
//                         so a step that refreshes evicts fewer slots and the ceil(M / C) bound
//                         does not hold (tests/test_memory.cpp measures 13 steps against 12).
//
// Within one step, the refreshed classes (least recently written) move to the back before the new
// ones are appended, each group in ascending label order; the victims are chosen first, oldest
// first, skipping slots that hold a class of the batch.
#pragma once

#include <utility>

#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/detail/slot_queue.hpp>

namespace protomem {

/// Evict the least recently written slot (the default).
struct LeastRecentlyWritten {
  static constexpr const char* name = "least_recently_written";
  void on_insert(detail::SlotQueue& order, index_t slot) const noexcept { order.push_back(slot); }
  void on_refresh(detail::SlotQueue& order, index_t slot) const noexcept {
    order.move_to_back(slot);
  }
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Evict in insertion order; a refresh leaves a class where it is in the queue.
struct FirstInFirstOut {
  static constexpr const char* name = "first_in_first_out";
  void on_insert(detail::SlotQueue& order, index_t slot) const noexcept { order.push_back(slot); }
  void on_refresh(detail::SlotQueue&, index_t) const noexcept {}
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

namespace detail {

template <class P>
using queue_on_insert_t = decltype(std::declval<const P&>().on_insert(std::declval<SlotQueue&>(),
                                                                      std::declval<index_t>()));
template <class P>
using queue_on_refresh_t = decltype(std::declval<const P&>().on_refresh(std::declval<SlotQueue&>(),
                                                                        std::declval<index_t>()));
template <class P>
using queue_on_insert_noexcept_t = std::enable_if_t<noexcept(
    std::declval<const P&>().on_insert(std::declval<SlotQueue&>(), std::declval<index_t>()))>;
template <class P>
using queue_on_refresh_noexcept_t = std::enable_if_t<noexcept(
    std::declval<const P&>().on_refresh(std::declval<SlotQueue&>(), std::declval<index_t>()))>;

/// The requirements of a Queue policy (this header's comment), one static_assert per member so
/// that the compiler names the missing one. True when they all hold.
template <class P>
constexpr bool check_queue_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: a Queue policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(is_detected<queue_on_insert_t, P>,
                "protomem: a Queue policy needs `void on_insert(protomem::detail::SlotQueue& "
                "order, index_t slot) const noexcept` (link a class that entered `slot`)");
  static_assert(is_detected<queue_on_refresh_t, P>,
                "protomem: a Queue policy needs `void on_refresh(protomem::detail::SlotQueue& "
                "order, index_t slot) const noexcept` (place a refreshed class)");
  static_assert(!is_detected<queue_on_insert_t, P> || is_detected<queue_on_insert_noexcept_t, P>,
                "protomem: a Queue policy's `on_insert(...)` must be noexcept (commit() calls it "
                "after the prototypes are written)");
  static_assert(!is_detected<queue_on_refresh_t, P> || is_detected<queue_on_refresh_noexcept_t, P>,
                "protomem: a Queue policy's `on_refresh(...)` must be noexcept (commit() calls it "
                "after the prototypes are written)");
  static_assert(is_detected<policy_save_t, P>,
                "protomem: a Queue policy needs `void save(protomem::detail::ByteWriter&) const`");
  static_assert(is_detected<policy_load_t, P>,
                "protomem: a Queue policy needs `void load(protomem::detail::ByteReader&)`");
  static_assert(policy_is_copyable<P>,
                "protomem: a Queue policy must be copy-constructible and move-assignable");
  return true;
}

}  // namespace detail

}  // namespace protomem
