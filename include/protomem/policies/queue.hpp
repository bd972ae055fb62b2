// Queue policies: the order in which a full memory gives up slots. A slot is never evicted in
// favour of a class of the same batch.
//
// Requires, of a Queue policy P (PrototypeMemory checks each member at compile time and names the
// one that is missing: detail::check_queue_policy at the end of this header):
//   static constexpr const char* name;           stored in checkpoints
//   static constexpr bool refresh_moves_to_back; a refreshed class becomes the newest
//   void save(detail::ByteWriter&) const;        its parameters, for checkpoints
//   void load(detail::ByteReader&);              the same; bad values throw protomem::Error
//   copy-constructible and move-assignable       load() checks a copy, then moves it in
// The order itself is kept by the memory's bookkeeping (a queue through the slots) from this one
// trait; an order the trait cannot express needs a change there today (docs/architecture.md,
// "Adding a policy").
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

#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>

namespace protomem {

/// Evict the least recently written slot (the default).
struct LeastRecentlyWritten {
  static constexpr const char* name = "least_recently_written";
  static constexpr bool refresh_moves_to_back = true;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Evict in insertion order; a refresh leaves a class where it is in the queue.
struct FirstInFirstOut {
  static constexpr const char* name = "first_in_first_out";
  static constexpr bool refresh_moves_to_back = false;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

namespace detail {

template <class P>
using queue_refresh_moves_to_back_t = std::integral_constant<bool, P::refresh_moves_to_back>;

/// The requirements of a Queue policy (this header's comment), one static_assert per member so
/// that the compiler names the missing one. True when they all hold.
template <class P>
constexpr bool check_queue_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: a Queue policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(
      is_detected<queue_refresh_moves_to_back_t, P>,
      "protomem: a Queue policy needs `static constexpr bool refresh_moves_to_back` (does "
      "a refreshed class become the newest)");
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
