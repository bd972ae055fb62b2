// Queue policies: the order in which a full memory gives up slots. A slot is never evicted in
// favour of a class of the same batch.
//
// The eviction order is one rule for one process or many: every class holds a place in a single
// order, and a write that renews a class's place moves it to the back. A new class always takes
// the back; the one thing a Queue decides is whether a refresh (a class of the batch already
// stored) renews its place. That is the form a sharded memory can plan without moving the order
// between processes (detail/shard_plan.hpp: a place is a "ticket", a counter every rank keeps).
//
// Requires, of a Queue policy P (PrototypeMemory checks each member at compile time and names the
// one that is missing: detail::check_queue_policy at the end of this header):
//   static constexpr const char* name;           stored in checkpoints
//   bool refresh_renews() const noexcept;        whether a refreshed class moves to the back
//   void save(detail::ByteWriter&) const;        its parameters, for checkpoints
//   void load(detail::ByteReader&);              the same; bad values throw protomem::Error
//   copy-constructible and move-assignable       load() checks a copy, then moves it in
// refresh_renews is asked when a forward plans the step's writes, and must not throw (a query of
// the policy's parameters). Guarantees: the rules below, whatever the backend and the number of
// processes (the bookkeeping runs on the host).
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

#include <type_traits>
#include <utility>

#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>

namespace protomem {

/// Evict the least recently written slot (the default).
struct LeastRecentlyWritten {
  static constexpr const char* name = "least_recently_written";
  bool refresh_renews() const noexcept { return true; }
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Evict in insertion order; a refresh leaves a class where it is in the queue.
struct FirstInFirstOut {
  static constexpr const char* name = "first_in_first_out";
  bool refresh_renews() const noexcept { return false; }
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

namespace detail {

template <class P>
using queue_refresh_renews_t =
    std::enable_if_t<std::is_convertible_v<decltype(std::declval<const P&>().refresh_renews()),
                                           bool>>;
template <class P>
using queue_refresh_renews_noexcept_t =
    std::enable_if_t<noexcept(std::declval<const P&>().refresh_renews())>;

/// The requirements of a Queue policy (this header's comment), one static_assert per member so
/// that the compiler names the missing one. True when they all hold.
template <class P>
constexpr bool check_queue_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: a Queue policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(is_detected<queue_refresh_renews_t, P>,
                "protomem: a Queue policy needs `bool refresh_renews() const noexcept` (whether a "
                "refreshed class moves to the back of the eviction order)");
  static_assert(!is_detected<queue_refresh_renews_t, P> ||
                    is_detected<queue_refresh_renews_noexcept_t, P>,
                "protomem: a Queue policy's `refresh_renews()` must be noexcept (commit() asks it "
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
